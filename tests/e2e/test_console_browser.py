"""The admin console in a real browser (Debian's chromium, driven by playwright-core through
tests/js/console_check.mjs) against a live gateway (real Envoy and backend) and the fake
upstream. Each scenario fails on a page error, a console error or a CSP violation; when one
fails, its pages' screenshots are in test-artifacts/console/."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_process import ADMIN_KEY, Gateway
from servers import missing

from typegpt_gateway.keystore.sqlite import KeyStore
from typegpt_gateway.keystore.store import UsageRow

REPO = Path(__file__).resolve().parents[2]
JS_DIR = REPO / "tests" / "js"
CONSOLE_CHECK = JS_DIR / "console_check.mjs"
ARTIFACTS = REPO / "test-artifacts" / "console"
# Where the journey writes its screenshot of the usage page; CONSOLE_SCREENSHOT=docs/console-usage.png
# refreshes the README's (README "The admin console").
SCREENSHOT = Path(os.environ.get("CONSOLE_SCREENSHOT", ARTIFACTS / "console-usage.png"))
MODEL = "gpt-4o"
# Markup in a model name of the operator's catalog (key names cannot hold it): it reaches the
# page through the key's record and the usage data. An inline handler would also break the CSP.
HOSTILE_MODEL = '<img src=x onerror="window.__xss=1">'
# Markup the admin API quotes back in its error message.
HOSTILE_UNKNOWN = "<script>window.__xss=2</script>"
# A scenario's bound: far above what it needs, so that only a hang fails it on time.
SCENARIO_TIMEOUT = 240


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        missing("chromium")
    assert path is not None
    if not (JS_DIR / "node_modules" / "playwright-core").is_dir():
        pytest.skip("playwright-core not installed: run `npm ci --prefix tests/js`")
    return path


def run_scenario(scenario: str, gateway: Gateway, **options: Any) -> dict[str, Any]:
    config = {
        "url": gateway.url,
        "adminKey": ADMIN_KEY,
        "chromium": chromium(),
        "artifacts": str(ARTIFACTS),
        "model": MODEL,
        "keyName": f"console-{uuid.uuid4().hex[:8]}",
        **options,
    }
    result = subprocess.run(
        ["node", str(CONSOLE_CHECK), scenario, json.dumps(config)],
        cwd=JS_DIR,
        env={**os.environ, "NO_PROXY": "127.0.0.1,localhost"},
        capture_output=True,
        text=True,
        timeout=SCENARIO_TIMEOUT,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n(screenshots in {ARTIFACTS})"
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def console_gateway(upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    models = f"{MODEL},gpt-5-mini,{HOSTILE_MODEL}"
    gateway = Gateway(
        tmp_path_factory.mktemp("console"),
        upstream.base_url,
        extra_env={"GATEWAY_MODELS": models, "GATEWAY_USAGE_FLUSH_INTERVAL": "0.2"},
    ).start()
    yield gateway
    gateway.stop()


def seed_history(gateway: Gateway, days: int = 21) -> None:
    """Made-up ledger rows of other keys on past days, so that the usage page (and the README's
    screenshot of it) shows stacked days; the journey's own key starts with none."""
    rng = random.Random(15)
    today = dt.datetime.now(dt.UTC).date()
    # Micro-dollars per token (USD per 1M tokens), input and output.
    prices = {MODEL: (2.5, 10.0), "gpt-5-mini": (0.25, 2.0)}
    entries = []
    for age in range(1, days + 1):
        for key, scale in (("team-web", 3), ("batch-jobs", 5), ("ci-bot", 1)):
            for model, (price_in, price_out) in prices.items():
                requests = rng.randint(0, 40 * scale)
                prompt, completion = (
                    requests * rng.randint(300, 900),
                    requests * rng.randint(80, 400),
                )
                cost = round(prompt * price_in + completion * price_out)
                day = today - dt.timedelta(days=age)
                row = UsageRow(day, model, requests, prompt, completion, cost_micro_usd=cost)
                entries.append((key, row))
    store = KeyStore(gateway.db)
    try:
        store.add_usage(entries)
    finally:
        store.close()


def test_journey_sign_in_create_use_see_usage_update_revoke(console_gateway):
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    seed_history(console_gateway)
    seen = run_scenario("journey", console_gateway, screenshot=str(SCREENSHOT))
    assert seen["refused"] == 403
    assert seen["tokens"] > 0 and seen["cost_usd"] > 0
    assert SCREENSHOT.stat().st_size > 10_000


def test_wrong_and_rotated_admin_key_return_to_sign_in_with_the_api_message(console_gateway):
    seen = run_scenario("wrong-key", console_gateway)
    assert seen["refusal"] == "Invalid admin key"
    assert seen["expired"] == "Invalid admin key"


def test_admin_api_off_says_so(make_gateway):
    gateway = make_gateway(admin_key=None).start()
    seen = run_scenario("admin-off", gateway)
    assert seen["before"].startswith("The admin API is off")
    assert seen["after"] == seen["before"]


def test_hostile_text_from_the_api_shows_as_text_and_never_runs(console_gateway):
    seen = run_scenario(
        "xss", console_gateway, hostileModel=HOSTILE_MODEL, hostileUnknown=HOSTILE_UNKNOWN
    )
    assert HOSTILE_UNKNOWN in seen["error"]
    assert seen["ran"] == {"flag": None, "injected": 0}
