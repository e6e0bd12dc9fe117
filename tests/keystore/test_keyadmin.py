"""The key admin core's rules (pure) and the store operations behind them, on a real SQLite
file and a real PostgreSQL."""

from __future__ import annotations

import time

import pytest

from typegpt_gateway.errors import GatewayError
from typegpt_gateway.keystore.admin import KeyAdmin, check_limits, check_name, parse_day

CATALOG = ("gpt-4o", "o3", "gpt-5")
NOW = 1_700_000_000.0


def param_of(excinfo: pytest.ExceptionInfo[GatewayError]) -> str | None:
    assert excinfo.value.status == 400
    return excinfo.value.param


def test_check_limits_translates_and_normalises():
    fields = check_limits(
        {"models": ["o3", "gpt-4o", "o3"], "rpm": 60.0, "budget_period": "day", "expires_in": "2h"},
        CATALOG,
        NOW,
    )
    assert fields == {
        "models": ("gpt-4o", "o3"),
        "rpm": 60,
        "budget_period": "day",
        "expires_at": NOW + 7200,
    }
    assert isinstance(fields["rpm"], int)


def test_check_limits_none_removes_each_limit():
    fields = check_limits(
        {"models": None, "tpm": None, "expires_in": None, "budget_usd": None}, CATALOG, NOW
    )
    assert fields == {"models": None, "tpm": None, "expires_at": None, "budget_usd_micro": None}


def test_a_dollar_budget_is_given_in_dollars_and_kept_in_micro_dollars():
    assert check_limits({"budget_usd": 0.01}, CATALOG, NOW) == {"budget_usd_micro": 10_000}


@pytest.mark.parametrize(
    ("limits", "param"),
    [
        ({"rpm": True}, "rpm"),
        ({"rpm": 0}, "rpm"),
        ({"rpm": 2**32}, "rpm"),
        ({"budget_tokens": 2**53 + 2}, "budget_tokens"),
        ({"rpm": float("inf")}, "rpm"),
        ({"rpm": float("nan")}, "rpm"),
        ({"tpm": 2.5}, "tpm"),
        ({"budget_tokens": "10"}, "budget_tokens"),
        ({"budget_period": "fortnight"}, "budget_period"),
        ({"budget_period": "week"}, "budget_period"),
        ({"budget_usd": 0}, "budget_usd"),
        ({"budget_usd": "25"}, "budget_usd"),
        ({"budget_usd": 0.0000001}, "budget_usd"),
        ({"budget_usd_micro": 10}, "budget_usd_micro"),  # the store's field, not a param
        ({"models": [" "]}, "models"),
        ({"models": [1]}, "models"),
        ({"expires_in": 0}, "expires_in"),
        ({"expires_in": ["1d"]}, "expires_in"),
        # Past what the admin API's uint32 times carry: it would poison every later answer.
        ({"expires_in": 2**32}, "expires_in"),
        ({"expires_in": "9999999999w"}, "expires_in"),
        ({"expires_in": float("inf")}, "expires_in"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_check_limits_refuses(limits, param):
    with pytest.raises(GatewayError) as excinfo:
        check_limits(limits, CATALOG, NOW)
    assert param_of(excinfo) == param


@pytest.mark.parametrize("name", ["a", "svc-1", "team.bot_2", "me@example.com", "x" * 64])
def test_names_that_fit_a_url_segment_are_accepted(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "-lead", "a b", "a/b", "é", "x" * 65, "a?b"])
def test_other_names_are_refused(name):
    with pytest.raises(GatewayError) as excinfo:
        check_name(name)
    assert param_of(excinfo) == "name"


@pytest.mark.parametrize("name", ["admin", "Admin", "unknown", "UNKNOWN"])
def test_names_the_logs_and_metrics_use_are_reserved(name):
    with pytest.raises(GatewayError) as excinfo:
        check_name(name)
    assert excinfo.value.status == 400
    assert param_of(excinfo) == "name"
    assert "reserved" in excinfo.value.message


@pytest.mark.parametrize("name", ["admins", "admin-bot", "unknown.client"])
def test_names_near_a_reserved_one_are_accepted(name):
    assert check_name(name) == name


def test_a_stored_key_under_a_reserved_name_can_still_be_managed(store_factory):
    """One made before the names were reserved: usable, editable, revocable."""
    store = store_factory()
    store.create("admin")
    admin = KeyAdmin(store, CATALOG)
    assert admin.update("admin", {"rpm": 5}).rpm == 5
    assert admin.revoke("admin").revoked_at is not None
    with pytest.raises(GatewayError) as excinfo:
        admin.create("admin", {})
    assert excinfo.value.status == 400


def test_parse_day():
    assert parse_day("2025-02-03").isoformat() == "2025-02-03"
    with pytest.raises(GatewayError):
        parse_day("03/02/2025")


def test_admin_create_get_update_revoke(store_factory):
    admin = KeyAdmin(store_factory(), CATALOG)
    record, key = admin.create("svc", {"models": ["o3"], "tpm": 100, "expires_in": 60})
    assert key.startswith("sk-") and record.tpm == 100 and record.models == ("o3",)
    assert record.expires_at == pytest.approx(time.time() + 60, abs=5)
    assert admin.get("svc") == record
    updated = admin.update("svc", {"tpm": None, "max_concurrent": 3, "models": None})
    assert (updated.tpm, updated.max_concurrent, updated.models) == (None, 3, None)
    assert admin.revoke("svc").revoked_at is not None
    # The revoked record is still there to read; its limits can no longer change.
    assert admin.get("svc").revoked_at is not None
    with pytest.raises(GatewayError) as excinfo:
        admin.update("svc", {"rpm": 1})
    assert excinfo.value.status == 404
    with pytest.raises(GatewayError) as excinfo:
        admin.usage("never-existed")
    assert excinfo.value.status == 404
    # A budget without a period is monthly (the store's rule); the periods are day and month.
    admin.create("svc", {"budget_tokens": 1000})
    assert admin.get("svc").budget_period == "month"
    assert admin.update("svc", {"budget_period": "day"}).budget_period == "day"
    # So is a dollar budget; both share the period.
    admin.create("usd", {"budget_usd": 25})
    assert (admin.get("usd").budget_usd_micro, admin.get("usd").budget_period) == (
        25_000_000,
        "month",
    )
    both = admin.update("usd", {"budget_tokens": 1000, "budget_usd": 0.5})
    assert (both.budget_tokens, both.budget_usd_micro, both.budget_period) == (
        1000,
        500_000,
        "month",
    )
    assert admin.update("usd", {"budget_usd": None}).budget_usd_micro is None
    assert [record.revoked_at is None for record in admin.list()] == [False, True, True]
