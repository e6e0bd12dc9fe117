"""The models clients may ask for, and which of them a key may use."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import GatewayError
from ..keystore.records import KeyRecord


@dataclass(frozen=True, slots=True)
class Model:
    id: str
    created: int
    owned_by: str


class Catalog:
    def __init__(self, model_ids: tuple[str, ...], *, owned_by: str, created: int) -> None:
        self._models = {model_id: Model(model_id, created, owned_by) for model_id in model_ids}

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._models

    def visible_to(self, key: KeyRecord) -> list[Model]:
        return [model for model in self._models.values() if key.allows_model(model.id)]

    def resolve(self, model_id: str, key: KeyRecord) -> Model:
        """The model a request may use, or the 404/403 the client gets, before any upstream call."""
        model = self._models.get(model_id)
        if model is None:
            raise GatewayError(
                404,
                f"The model '{model_id}' does not exist or you do not have access to it.",
                param="model",
            )
        if not key.allows_model(model_id):
            raise GatewayError(
                403,
                f"This API key is not allowed to use the model '{model_id}'.",
                "permission_error",
                param="model",
            )
        return model
