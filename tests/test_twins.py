"""The committed `_sync/` package is exactly what `tools/gen_sync.py` generates.

Edit `_async/` and run `python tools/gen_sync.py`; this test fails on any drift.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SYNC = ROOT / "lib" / "tenantstore" / "_sync"


def load_generator() -> object:
    spec = importlib.util.spec_from_file_location(
        "gen_sync", ROOT / "tools" / "gen_sync.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_sync"] = module
    spec.loader.exec_module(module)
    return module


def test_sync_twins_are_generated_from_async(tmp_path: Path) -> None:
    generator = load_generator()
    written = generator.generate(tmp_path / "_sync")  # type: ignore[attr-defined]
    generated = {p.name: p.read_text() for p in written}
    committed = {p.name: p.read_text() for p in SYNC.glob("*.py")}
    assert sorted(generated) == sorted(committed)
    for name, text in generated.items():
        assert committed[name] == text, f"_sync/{name} differs: run tools/gen_sync.py"


def test_generated_code_has_no_async_left() -> None:
    for path in SYNC.glob("*.py"):
        text = path.read_text()
        assert "await " not in text, path
        assert "async " not in text, path
