from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ApiKey(_message.Message):
    __slots__ = ("name", "key", "prefix", "status", "models", "rpm", "tpm", "max_concurrent", "budget_tokens", "budget_period", "created_at", "expires_at", "revoked_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    RPM_FIELD_NUMBER: _ClassVar[int]
    TPM_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_FIELD_NUMBER: _ClassVar[int]
    BUDGET_TOKENS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_PERIOD_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    key: str
    prefix: str
    status: str
    models: _struct_pb2.Value
    rpm: int
    tpm: int
    max_concurrent: int
    budget_tokens: float
    budget_period: str
    created_at: int
    expires_at: int
    revoked_at: int
    def __init__(self, name: _Optional[str] = ..., key: _Optional[str] = ..., prefix: _Optional[str] = ..., status: _Optional[str] = ..., models: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., rpm: _Optional[int] = ..., tpm: _Optional[int] = ..., max_concurrent: _Optional[int] = ..., budget_tokens: _Optional[float] = ..., budget_period: _Optional[str] = ..., created_at: _Optional[int] = ..., expires_at: _Optional[int] = ..., revoked_at: _Optional[int] = ...) -> None: ...

class CreateKeyRequest(_message.Message):
    __slots__ = ("name", "models", "rpm", "tpm", "max_concurrent", "budget_tokens", "budget_period", "expires_in")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    RPM_FIELD_NUMBER: _ClassVar[int]
    TPM_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_FIELD_NUMBER: _ClassVar[int]
    BUDGET_TOKENS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_PERIOD_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_FIELD_NUMBER: _ClassVar[int]
    name: str
    models: _containers.RepeatedScalarFieldContainer[str]
    rpm: int
    tpm: int
    max_concurrent: int
    budget_tokens: float
    budget_period: str
    expires_in: _struct_pb2.Value
    def __init__(self, name: _Optional[str] = ..., models: _Optional[_Iterable[str]] = ..., rpm: _Optional[int] = ..., tpm: _Optional[int] = ..., max_concurrent: _Optional[int] = ..., budget_tokens: _Optional[float] = ..., budget_period: _Optional[str] = ..., expires_in: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ...) -> None: ...

class ListKeysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListKeysResponse(_message.Message):
    __slots__ = ("object", "data")
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    object: str
    data: _containers.RepeatedCompositeFieldContainer[ApiKey]
    def __init__(self, object: _Optional[str] = ..., data: _Optional[_Iterable[_Union[ApiKey, _Mapping]]] = ...) -> None: ...

class GetKeyRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class UpdateKeyRequest(_message.Message):
    __slots__ = ("name", "models", "rpm", "tpm", "max_concurrent", "budget_tokens", "budget_period", "expires_in")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    RPM_FIELD_NUMBER: _ClassVar[int]
    TPM_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_FIELD_NUMBER: _ClassVar[int]
    BUDGET_TOKENS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_PERIOD_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_FIELD_NUMBER: _ClassVar[int]
    name: str
    models: _struct_pb2.Value
    rpm: _struct_pb2.Value
    tpm: _struct_pb2.Value
    max_concurrent: _struct_pb2.Value
    budget_tokens: _struct_pb2.Value
    budget_period: _struct_pb2.Value
    expires_in: _struct_pb2.Value
    def __init__(self, name: _Optional[str] = ..., models: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., rpm: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., tpm: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., max_concurrent: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., budget_tokens: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., budget_period: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., expires_in: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ...) -> None: ...

class RevokeKeyRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetKeyUsageRequest(_message.Message):
    __slots__ = ("name", "since")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    since: str
    def __init__(self, name: _Optional[str] = ..., since: _Optional[str] = ...) -> None: ...

class GetKeyUsageResponse(_message.Message):
    __slots__ = ("object", "name", "data")
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    object: str
    name: str
    data: _containers.RepeatedCompositeFieldContainer[KeyUsage]
    def __init__(self, object: _Optional[str] = ..., name: _Optional[str] = ..., data: _Optional[_Iterable[_Union[KeyUsage, _Mapping]]] = ...) -> None: ...

class KeyUsage(_message.Message):
    __slots__ = ("day", "model", "requests", "prompt_tokens", "completion_tokens", "errors")
    DAY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    day: str
    model: str
    requests: int
    prompt_tokens: float
    completion_tokens: float
    errors: int
    def __init__(self, day: _Optional[str] = ..., model: _Optional[str] = ..., requests: _Optional[int] = ..., prompt_tokens: _Optional[float] = ..., completion_tokens: _Optional[float] = ..., errors: _Optional[int] = ...) -> None: ...
