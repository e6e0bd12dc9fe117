from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ApiKey(_message.Message):
    __slots__ = ("name", "key", "prefix", "status", "models", "rpm", "tpm", "max_concurrent", "budget_tokens", "budget_period", "created_at", "expires_at", "revoked_at", "budget_usd", "tokens_used", "spent_usd", "last_used_day")
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
    BUDGET_USD_FIELD_NUMBER: _ClassVar[int]
    TOKENS_USED_FIELD_NUMBER: _ClassVar[int]
    SPENT_USD_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_DAY_FIELD_NUMBER: _ClassVar[int]
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
    budget_usd: float
    tokens_used: float
    spent_usd: float
    last_used_day: str
    def __init__(self, name: _Optional[str] = ..., key: _Optional[str] = ..., prefix: _Optional[str] = ..., status: _Optional[str] = ..., models: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., rpm: _Optional[int] = ..., tpm: _Optional[int] = ..., max_concurrent: _Optional[int] = ..., budget_tokens: _Optional[float] = ..., budget_period: _Optional[str] = ..., created_at: _Optional[int] = ..., expires_at: _Optional[int] = ..., revoked_at: _Optional[int] = ..., budget_usd: _Optional[float] = ..., tokens_used: _Optional[float] = ..., spent_usd: _Optional[float] = ..., last_used_day: _Optional[str] = ...) -> None: ...

class CreateKeyRequest(_message.Message):
    __slots__ = ("name", "models", "rpm", "tpm", "max_concurrent", "budget_tokens", "budget_period", "expires_in", "budget_usd")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    RPM_FIELD_NUMBER: _ClassVar[int]
    TPM_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_FIELD_NUMBER: _ClassVar[int]
    BUDGET_TOKENS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_PERIOD_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_FIELD_NUMBER: _ClassVar[int]
    BUDGET_USD_FIELD_NUMBER: _ClassVar[int]
    name: str
    models: _containers.RepeatedScalarFieldContainer[str]
    rpm: int
    tpm: int
    max_concurrent: int
    budget_tokens: float
    budget_period: str
    expires_in: _struct_pb2.Value
    budget_usd: float
    def __init__(self, name: _Optional[str] = ..., models: _Optional[_Iterable[str]] = ..., rpm: _Optional[int] = ..., tpm: _Optional[int] = ..., max_concurrent: _Optional[int] = ..., budget_tokens: _Optional[float] = ..., budget_period: _Optional[str] = ..., expires_in: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., budget_usd: _Optional[float] = ...) -> None: ...

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
    __slots__ = ("name", "models", "rpm", "tpm", "max_concurrent", "budget_tokens", "budget_period", "expires_in", "budget_usd")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    RPM_FIELD_NUMBER: _ClassVar[int]
    TPM_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_FIELD_NUMBER: _ClassVar[int]
    BUDGET_TOKENS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_PERIOD_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_FIELD_NUMBER: _ClassVar[int]
    BUDGET_USD_FIELD_NUMBER: _ClassVar[int]
    name: str
    models: _struct_pb2.Value
    rpm: _struct_pb2.Value
    tpm: _struct_pb2.Value
    max_concurrent: _struct_pb2.Value
    budget_tokens: _struct_pb2.Value
    budget_period: _struct_pb2.Value
    expires_in: _struct_pb2.Value
    budget_usd: _struct_pb2.Value
    def __init__(self, name: _Optional[str] = ..., models: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., rpm: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., tpm: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., max_concurrent: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., budget_tokens: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., budget_period: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., expires_in: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., budget_usd: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ...) -> None: ...

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
    __slots__ = ("day", "model", "requests", "prompt_tokens", "completion_tokens", "errors", "cost_usd", "unpriced_requests", "estimated_requests")
    DAY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    UNPRICED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    day: str
    model: str
    requests: int
    prompt_tokens: float
    completion_tokens: float
    errors: int
    cost_usd: float
    unpriced_requests: int
    estimated_requests: int
    def __init__(self, day: _Optional[str] = ..., model: _Optional[str] = ..., requests: _Optional[int] = ..., prompt_tokens: _Optional[float] = ..., completion_tokens: _Optional[float] = ..., errors: _Optional[int] = ..., cost_usd: _Optional[float] = ..., unpriced_requests: _Optional[int] = ..., estimated_requests: _Optional[int] = ...) -> None: ...

class GetUsageRequest(_message.Message):
    __slots__ = ("since", "until", "group_by", "key")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    since: str
    until: str
    group_by: str
    key: str
    def __init__(self, since: _Optional[str] = ..., until: _Optional[str] = ..., group_by: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...

class GetUsageResponse(_message.Message):
    __slots__ = ("object", "group_by", "data")
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    object: str
    group_by: _containers.RepeatedScalarFieldContainer[str]
    data: _containers.RepeatedCompositeFieldContainer[UsageTotal]
    def __init__(self, object: _Optional[str] = ..., group_by: _Optional[_Iterable[str]] = ..., data: _Optional[_Iterable[_Union[UsageTotal, _Mapping]]] = ...) -> None: ...

class UsageTotal(_message.Message):
    __slots__ = ("key", "model", "day", "requests", "prompt_tokens", "completion_tokens", "errors", "cost_usd", "unpriced_requests", "estimated_requests")
    KEY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DAY_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    UNPRICED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    key: str
    model: str
    day: str
    requests: int
    prompt_tokens: float
    completion_tokens: float
    errors: int
    cost_usd: float
    unpriced_requests: int
    estimated_requests: int
    def __init__(self, key: _Optional[str] = ..., model: _Optional[str] = ..., day: _Optional[str] = ..., requests: _Optional[int] = ..., prompt_tokens: _Optional[float] = ..., completion_tokens: _Optional[float] = ..., errors: _Optional[int] = ..., cost_usd: _Optional[float] = ..., unpriced_requests: _Optional[int] = ..., estimated_requests: _Optional[int] = ...) -> None: ...
