"""Regenerate gateway/_proto from proto/ (run: make proto).

The stubs are committed so that installing xbgw needs no code generator; a test runs this
into a temporary directory and fails if the committed files differ.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"


def generate(out: Path) -> None:
    sources = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    with tempfile.TemporaryDirectory() as raw:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={raw}",
            f"--pyi_out={raw}",
            f"--grpc_python_out={raw}",
            # Typed stubs for the service classes too, so mypy --strict checks our servicers.
            f"--plugin=protoc-gen-mypy_grpc={Path(sys.executable).parent / 'protoc-gen-mypy_grpc'}",
            f"--mypy_grpc_out={raw}",
            *sources,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        for path in Path(raw).rglob("*.py*"):
            text = path.read_text(encoding="utf-8")
            # Generated modules import each other as top-level 'xbgw.v1'; make it our package.
            text = re.sub(r"^from xbgw\.v1 import", "from gateway._proto.xbgw.v1 import", text,
                          flags=re.MULTILINE)
            target = out / path.relative_to(raw)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
    for directory in [out, *[d for d in out.rglob("*") if d.is_dir()]]:
        (directory / "__init__.py").touch()


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "gateway" / "_proto"
    if out.exists() and len(sys.argv) == 1:
        shutil.rmtree(out)
    generate(out)


if __name__ == "__main__":
    main()
