"""``make install`` ships the man page and the local API's .proto files, and says where.

Runs ``scripts/install`` into a ``DESTDIR`` (without the venv, as tests/system/
test_systemd_units.py does, for speed: the page is then written with the development venv).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTOS = sorted((ROOT / "proto" / "xbgw" / "v1").glob("*.proto"))


def _install(dest: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(ROOT / "scripts" / "install"), "--no-venv"],
        capture_output=True,
        text=True,
        env={**os.environ, "DESTDIR": str(dest), **env},
        timeout=120,
        check=False,
    )


def _groff_warnings(page: Path) -> str:
    return subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-z", str(page)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stderr


def test_install_ships_the_man_page_and_the_protos_and_says_where(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    done = _install(dest)
    assert done.returncode == 0, done.stderr
    page = dest / "usr/share/man/man1/xbgw.1"
    assert page.read_text(encoding="utf-8").startswith(".TH XBGW 1 ")
    assert oct(page.stat().st_mode & 0o777) == "0o644"
    assert _groff_warnings(page) == ""
    assert f"installing the manual page as {page}" in done.stdout
    protodir = dest / "usr/share/xbgw/proto"
    assert PROTOS, "no .proto files in the source tree"
    for source in PROTOS:
        shipped = protodir / "xbgw" / "v1" / source.name
        assert shipped.read_bytes() == source.read_bytes(), source.name
    assert f"installing the .proto files into {protodir}" in done.stdout
    # The closing summary names the installed (not the staging) paths.
    assert "man xbgw (/usr/share/man/man1/xbgw.1)" in done.stdout
    assert "/usr/share/xbgw/proto/xbgw/v1/local.proto" in done.stdout


def test_another_prefix_moves_both_and_the_page_names_it(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    done = _install(dest, PREFIX="/opt/xbgw")
    assert done.returncode == 0, done.stderr
    page = dest / "opt/xbgw/share/man/man1/xbgw.1"
    assert "/opt/xbgw/share/xbgw/proto" in page.read_text(encoding="utf-8").replace("\\-", "-")
    assert (dest / "opt/xbgw/share/xbgw/proto/xbgw/v1/local.proto").is_file()
    assert "/opt/xbgw/share/xbgw/proto/xbgw/v1/local.proto" in done.stdout


def test_install_says_why_when_no_interpreter_can_write_the_page(tmp_path: Path) -> None:
    """Without a venv, a development venv or a PYTHON with the dependencies: one clear line."""
    source = tmp_path / "src"
    source.mkdir()
    for part in ("scripts", "systemd", "proto", "hsm", "gateway", "devtools"):
        os.symlink(ROOT / part, source / part)
    for name in ("pyproject.toml", "README.md"):
        os.symlink(ROOT / name, source / name)
    done = subprocess.run(
        ["sh", str(source / "scripts" / "install"), "--no-venv"],
        capture_output=True,
        text=True,
        env={**os.environ, "DESTDIR": str(tmp_path / "dest"), "PYTHON": "/bin/false"},
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert "no interpreter can import the xbgw package to write the man page" in done.stderr
