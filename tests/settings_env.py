"""The environment variable names of the settings, as pydantic-settings reads them: a field's
validation aliases, else GATEWAY_ and its name."""

from __future__ import annotations

from typegpt_gateway.settings import Settings


def env_names(field: str) -> tuple[str, ...]:
    """Every name that sets `field`, the documented one first."""
    alias = Settings.model_fields[field].validation_alias
    choices = getattr(alias, "choices", None)
    if choices:
        return tuple(str(choice) for choice in choices)
    return (f"{Settings.model_config['env_prefix']}{field}".upper(),)


def setting_by_env_name() -> dict[str, str]:
    """The field each environment variable name sets."""
    return {name: field for field in Settings.model_fields for name in env_names(field)}
