"""The conftest's guard: a secret a test used never reaches any test's output (issue 17)."""

from __future__ import annotations

from pathlib import Path

pytest_plugins = ["pytester"]

PROBE = """
import logging
from conftest import TEST_KEY, register_secret

MINTED = "ek_minted-at-run-time-0123456789"

def test_prints_the_key():
    print("oops", TEST_KEY)

def test_logs_a_secret_minted_at_run_time():
    logging.getLogger("x").warning("secret %s", register_secret(MINTED[::-1]))

def test_clean():
    print("nothing to see")

def test_a_failing_diff_masks_the_key():
    assert TEST_KEY == "other"
"""


def test_the_guard_fails_leaks_and_masks_every_report(pytester) -> None:
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makepyfile(test_probe=PROBE)
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "-o", "asyncio_default_fixture_loop_scope=function"
    )  # fmt: skip
    result.assert_outcomes(passed=1, failed=3)
    out = result.stdout.str()
    assert "a secret the test used appeared in: Captured stdout call" in out
    assert "a secret the test used appeared in: Captured log call" in out
    assert "sk-test-" not in out and "SECRET" not in out
    assert "9876543210-emit-ta-detnim_ke"[:12] not in out
