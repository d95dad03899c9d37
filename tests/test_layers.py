"""The house's floors: no import runs back up (shared/ARCHITECTURE.md's layout table)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "device" / "kioskvoice"

# Module (or package prefix) -> the kioskvoice modules it may never import.
FORBIDDEN = {
    "kiosk": ("app", "audio", "dsp", "realtime", "system", "panel", "sim", "broker", "config"),
    "events": ("app", "audio", "dsp", "realtime", "system", "panel", "sim", "broker", "config"),
    "dsp": ("app", "audio", "realtime", "panel", "sim", "broker", "executor", "config"),
    "audio": ("app", "realtime", "panel", "sim", "broker", "executor"),
    "realtime": ("app", "audio", "dsp", "panel", "sim", "broker", "executor", "feedback"),
    "broker": ("app", "audio", "dsp", "realtime", "panel", "sim", "config", "kiosk"),
    "sim": ("app", "audio", "dsp", "realtime", "panel", "broker", "kiosk", "config", "events"),
    "system": ("app", "audio", "dsp", "realtime", "panel", "sim", "broker"),
    "wavio": ("app", "audio", "dsp", "realtime", "panel", "sim", "broker"),
}


def imports_of(path: Path) -> set[str]:
    """The kioskvoice modules ``path`` imports, as dotted names below ``kioskvoice``."""
    module = path.relative_to(PACKAGE).with_suffix("")
    parts = list(module.parts)
    if parts[-1] == "__init__":
        parts.pop()
    package = parts if path.name == "__init__.py" else parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = [*base, *(node.module.split(".") if node.module else [])]
                names = [target] if node.module else [[*base, a.name] for a in node.names]
            elif node.module and node.module.startswith("kioskvoice"):
                names = [node.module.split(".")[1:]]
            else:
                continue
            found.update(".".join(n) for n in names if n)
        elif isinstance(node, ast.Import):
            found.update(
                a.name.split(".", 1)[1] for a in node.names if a.name.startswith("kioskvoice.")
            )
    return found


@pytest.mark.parametrize("floor", sorted(FORBIDDEN))
def test_no_import_runs_back_up(floor: str) -> None:
    files = sorted((PACKAGE / floor).rglob("*.py")) or [PACKAGE / f"{floor}.py"]
    bad = []
    for path in files:
        for name in imports_of(path):
            if name.split(".")[0] in FORBIDDEN[floor]:
                bad.append(f"{path.relative_to(PACKAGE)} imports kioskvoice.{name}")
    assert bad == []


def test_the_checker_sees_relative_and_absolute_imports(tmp_path: Path) -> None:
    # The check can fail: these are imports it must see.
    assert "wavio" in imports_of(PACKAGE / "dsp" / "tool.py")  # from ..wavio import ...
    assert "sim.voice" in imports_of(PACKAGE / "sim" / "streaming.py")  # absolute
    assert "config" in imports_of(PACKAGE / "app.py")  # from .config import ...
