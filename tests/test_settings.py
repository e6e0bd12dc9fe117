"""The settings' own parsing of what the environment gives them."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from typegpt_gateway.settings import Settings, default_workers


def test_cors_origins_must_be_origins(monkeypatch) -> None:
    for bad in ("app.example.com", "https://app.example.com/path", "*", "https://a b"):
        monkeypatch.setenv("GATEWAY_CORS_ORIGINS", bad)
        with pytest.raises(ValueError, match="not an origin"):
            Settings()
    monkeypatch.setenv("GATEWAY_CORS_ORIGINS", "https://a.example/, http://[::1]:8080")
    assert Settings().cors_origins == ("https://a.example", "http://[::1]:8080")


@pytest.mark.parametrize(
    ("cores", "cpu_max", "workers"),
    [
        (32, None, 8),  # no cgroup v2 file: the cores, capped
        (4, "max 100000\n", 4),  # no quota
        (16, "150000 100000\n", 2),  # 1.5 CPUs: rounded up
        (2, "800000 100000\n", 2),  # a quota above the affinity
        (1, "50000 100000\n", 1),
    ],
)
def test_default_workers_are_the_usable_cores_capped(
    tmp_path, monkeypatch, cores, cpu_max, workers
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    path = tmp_path / "cpu.max"
    if cpu_max is not None:
        path.write_text(cpu_max)
    assert default_workers(path) == workers


def test_workers_setting_is_at_least_one(monkeypatch) -> None:
    monkeypatch.setenv("GATEWAY_WORKERS", "3")
    assert Settings().workers == 3
    monkeypatch.setenv("GATEWAY_WORKERS", "0")
    with pytest.raises(ValidationError):
        Settings()
