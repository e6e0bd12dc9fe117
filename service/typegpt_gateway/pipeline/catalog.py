"""The models clients may ask for, and which of them a key may use."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import GatewayError
from ..keystore.records import KeyRecord
from ..upstream.upstreams_file import ConfigError
from .routes import ROUTES, OpenAIRoute


@dataclass(frozen=True, slots=True)
class Model:
    id: str
    created: int
    owned_by: str


class Catalog:
    def __init__(
        self,
        model_ids: tuple[str, ...],
        *,
        owned_by: str,
        created: int,
        routes: Mapping[str, frozenset[str]] | None = None,
    ) -> None:
        """`routes`: the names of the routes some models are limited to (the config file's
        `model_routes`); a model it does not name is offered on every route."""
        self._models = {model_id: Model(model_id, created, owned_by) for model_id in model_ids}
        known = {route.name for route in ROUTES}
        for model_id, names in (routes or {}).items():
            unknown = sorted(set(names) - known)
            if unknown:
                raise ConfigError(
                    f"model_routes.{model_id}: unknown route {', '.join(map(repr, unknown))}; "
                    f"the routes are {', '.join(sorted(known))}"
                )
        self._routes = dict(routes or {})

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._models

    def visible_to(self, key: KeyRecord) -> list[Model]:
        return [model for model in self._models.values() if key.allows_model(model.id)]

    def resolve(self, model_id: str, key: KeyRecord, route: OpenAIRoute | None = None) -> Model:
        """The model a request on `route` may use, or the 404/403/400 the client gets, before
        any upstream call."""
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
        offered = self._routes.get(model_id)
        if route is not None and offered is not None and route.name not in offered:
            paths = [known.path for known in ROUTES if known.name in offered]
            raise GatewayError(
                400,
                f"The model '{model_id}' is not offered on {route.path}"
                + (f"; use it on {', '.join(paths)}." if paths else "."),
                param="model",
            )
        return model
