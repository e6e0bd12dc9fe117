"""The console's files as shipped: nothing inline for the CSP to refuse, no HTML built from
strings, and the vendored Chart.js byte for byte what npm installs at the pinned version."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONSOLE = REPO / "service" / "typegpt_gateway" / "console"
VENDORED = CONSOLE / "vendor" / "chart.umd.min.js"
JS_DIR = REPO / "tests" / "js"
NPM_CHART = JS_DIR / "node_modules" / "chart.js"
OUR_SCRIPTS = sorted(path for path in CONSOLE.glob("*.js"))


class InlineFinder(HTMLParser):
    """Collects what a strict CSP (no 'unsafe-inline') would refuse, and every element."""

    def __init__(self) -> None:
        super().__init__()
        self.refused: list[str] = []
        self.in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        for name, value in attrs:
            if name.startswith("on") or name == "style":
                self.refused.append(f"<{tag} {name}=...>")
            if (
                name in ("href", "src", "action")
                and value
                and value.lower().startswith("javascript:")
            ):
                self.refused.append(f"<{tag} {name}=javascript:>")
            if name in ("href", "src") and value and re.match(r"^(https?:)?//", value):
                self.refused.append(f"<{tag} {name}={value}> (another origin)")
        if tag == "style":
            self.refused.append("<style>")
        if tag == "script":
            if "src" not in names:
                self.refused.append("<script> without src")
            self.in_script = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self.in_script = False

    def handle_data(self, data: str) -> None:
        if self.in_script and data.strip():
            self.refused.append("inline script text")


def test_the_page_has_no_inline_script_or_style_and_nothing_from_elsewhere():
    finder = InlineFinder()
    finder.feed((CONSOLE / "index.html").read_text())
    assert finder.refused == []


def test_the_finder_finds_what_it_looks_for():
    finder = InlineFinder()
    finder.feed('<script>x()</script><p style="a" onclick="b"><a href="javascript:c">')
    assert len(finder.refused) == 5


@pytest.mark.parametrize("script", OUR_SCRIPTS, ids=lambda path: path.name)
def test_our_scripts_never_turn_text_into_html_or_code(script):
    # Data goes in with textContent and text nodes (dom.js): none of these appears at all.
    source = script.read_text()
    for sink in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        "localStorage",
        "document.cookie",
    ):
        assert sink not in source, f"{script.name} uses {sink}"


def test_chart_js_is_pinned_exactly_and_vendored_byte_for_byte():
    package = json.loads((JS_DIR / "package.json").read_text())
    version = package["dependencies"]["chart.js"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"chart.js must be pinned exactly: {version}"
    header = VENDORED.read_text()[:200]
    assert f"Chart.js v{version}" in header
    lock = json.loads((JS_DIR / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/chart.js"]["version"] == version
    if not NPM_CHART.is_dir():
        pytest.skip("npm packages not installed: run `npm ci --prefix tests/js`")
    installed = json.loads((NPM_CHART / "package.json").read_text())["version"]
    assert installed == version, "node_modules is not what package.json pins: run `npm ci`"
    assert VENDORED.read_bytes() == (NPM_CHART / "dist" / "chart.umd.min.js").read_bytes(), (
        "the vendored Chart.js differs from npm's: copy "
        "tests/js/node_modules/chart.js/dist/chart.umd.min.js over it"
    )


def test_playwright_core_is_pinned_exactly():
    package = json.loads((JS_DIR / "package.json").read_text())
    assert re.fullmatch(r"\d+\.\d+\.\d+", package["dependencies"]["playwright-core"])
