"""The committed stubs in gateway/_proto are exactly what proto/ generates."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_committed_stubs_match_the_proto_files(tmp_path: Path) -> None:
    out = tmp_path / "_proto"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_proto.py"), str(out)], check=True)
    committed = ROOT / "gateway" / "_proto"
    generated = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    existing = sorted(
        p.relative_to(committed)
        for p in committed.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    assert generated == existing, "run 'make proto' and commit gateway/_proto"
    different = [
        str(p) for p in generated if not filecmp.cmp(out / p, committed / p, shallow=False)
    ]
    assert different == [], f"stale stubs (run 'make proto'): {different}"
