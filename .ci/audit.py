"""CI's dependency audit: pip-audit over every pinned package of both locks, requirements.lock
(what runs the gateway) and requirements-dev.lock (the same pins and the test tools).

Exit 1 when a package has a known vulnerability with a fixed version (upgrade it: see the
README's "Dependencies" section). A vulnerability without a fix yet is printed, not fatal.

pip-audit asks PyPI's per-version JSON API (or OSV) about each package. Where neither can be
reached, e.g. behind a proxy that only serves package downloads, nothing can be audited: this
says so loudly and exits 0, or 2 with AUDIT_REQUIRED=1, rather than calling the lock clean.

    python .ci/audit.py [--service pypi|osv] [--osv-url URL] [--lock FILE]...
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCKS = (ROOT / "requirements.lock", ROOT / "requirements-dev.lock")
# pip-audit's words for a service that could not be reached.
UNREACHABLE_MARKERS = ("ConnectionError", "Max retries exceeded", "Could not connect")


def run_pip_audit(
    locks: list[Path], service: str, osv_url: str | None, cache: Path
) -> tuple[dict, str]:
    """pip-audit's JSON report (empty when it failed) and its stderr. A package pinned in
    several locks is asked about once (pip-audit refuses two different pins of one package)."""
    report = cache / f"report-{service}.json"
    command = [
        sys.executable, "-m", "pip_audit",
        *(arg for lock in locks for arg in ("--requirement", str(lock))),
        "--disable-pip", "--no-deps",  # the locks are complete and hashed: no resolution
        "--vulnerability-service", service,
        "--format", "json", "--output", str(report),
        "--progress-spinner", "off",
        "--cache-dir", str(cache / "http"),
        "--timeout", "20",
    ]  # fmt: skip
    if osv_url:
        command += ["--osv-url", osv_url]
    result = subprocess.run(  # noqa: S603 - our own fixed command line
        command, capture_output=True, text=True, timeout=900, check=False
    )
    text = report.read_text() if report.exists() else ""
    return (json.loads(text) if text.strip() else {}), result.stderr


def _why_nothing(report: dict, stderr: str) -> str:
    skipped = [dep["skip_reason"] for dep in report.get("dependencies", []) if "skip_reason" in dep]
    if skipped:
        return f"{len(skipped)} packages skipped, e.g. {skipped[0]!r}"
    lines = [line for line in stderr.splitlines() if any(m in line for m in UNREACHABLE_MARKERS)]
    return lines[-1] if lines else stderr.strip()[-300:]


def audited(report: dict) -> list[dict]:
    return [dep for dep in report.get("dependencies", []) if "skip_reason" not in dep]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lock", type=Path, action="append", help="default: both locks")
    parser.add_argument("--service", choices=("pypi", "osv"), action="append")
    parser.add_argument("--osv-url")
    args = parser.parse_args()
    services = args.service or ["pypi", "osv"]
    locks = args.lock or list(LOCKS)

    with tempfile.TemporaryDirectory(prefix="audit-") as tmp:
        for service in services:
            report, stderr = run_pip_audit(locks, service, args.osv_url, Path(tmp))
            checked = audited(report)
            if checked:
                break
            reason = _why_nothing(report, stderr)
            print(
                f"audit: the {service} vulnerability service answered nothing usable: {reason}",
                file=sys.stderr,
            )
        else:
            print(
                "audit: NOT AUDITED - no vulnerability service could be reached from this "
                f"machine ({', '.join(services)}). The locks were not checked for known "
                "vulnerabilities; run `python .ci/audit.py` where PyPI's JSON API or OSV "
                "answers.",
                file=sys.stderr,
            )
            return 2 if os.environ.get("AUDIT_REQUIRED") == "1" else 0

    fixable, unfixed = [], []
    for dep in checked:
        for vuln in dep.get("vulns", []):
            line = f"{dep['name']}=={dep['version']}: {vuln['id']}"
            if vuln.get("fix_versions"):
                fixable.append(f"{line} (fixed in {', '.join(vuln['fix_versions'])})")
            else:
                unfixed.append(f"{line} (no fix released yet)")
    skipped = len(report.get("dependencies", [])) - len(checked)
    print(
        f"audit: {len(checked)} pinned packages of {', '.join(lock.name for lock in locks)} "
        f"checked with {service}" + (f", {skipped} skipped" if skipped else "")
    )
    for line in unfixed:
        print(f"audit: warning: {line}")
    for line in fixable:
        print(f"audit: VULNERABLE: {line}")
    return 1 if fixable else 0


if __name__ == "__main__":
    sys.exit(main())
