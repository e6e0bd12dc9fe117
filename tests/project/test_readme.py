"""The README's configuration table names every setting, so that none is undocumented."""

from __future__ import annotations

from pathlib import Path

from settings_env import env_names

from typegpt_gateway.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def env_name(field: str) -> str:
    return env_names(field)[0]


def test_every_setting_is_in_the_configuration_table():
    rows = [line for line in README.read_text().splitlines() if line.startswith("| `")]
    documented = {row.split("`")[1] for row in rows}
    missing = [
        env_name(field) for field in Settings.model_fields if env_name(field) not in documented
    ]
    assert not missing, f"add to the README's Configuration table: {missing}"
