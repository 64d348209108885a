"""``xbgw send`` declares the file's SHA-256 when (and only when) the passport names its data
set: the daemon then refuses the wrong file before the offer (tests/system/test_dataset_bound)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from pathlib import Path

from gateway.cli.daemon import _declared_digest


def _token(claims: dict[str, object]) -> str:
    """A passport's shape; the CLI reads ``sub`` unverified, only to decide to hash."""
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"eyJhbGciOiJFUzI1NiJ9.{payload}.c2ln"


def test_a_passport_naming_a_digest_gets_the_files_digest_and_the_file_is_read_again(
    tmp_path: Path,
) -> None:
    data = os.urandom(3 << 20)  # several read chunks
    source = tmp_path / "data.bin"
    source.write_bytes(data)
    with source.open("rb") as src:
        declared = _declared_digest(_token({"jti": "t", "sub": "ab" * 32}), src)
        assert declared == hashlib.sha256(data).digest()
        assert src.read() == data  # the send streams it from the start


def test_no_digest_without_sub_or_when_the_file_cannot_be_read_twice(tmp_path: Path) -> None:
    source = tmp_path / "data.bin"
    source.write_bytes(b"x" * 100)
    with source.open("rb") as src:
        assert _declared_digest(_token({"jti": "t"}), src) == b""
        assert _declared_digest("not a passport", src) == b""
        assert _declared_digest("a.%%%.b", src) == b""
        assert src.tell() == 0  # not read at all
    read, write = os.pipe()
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        assert _declared_digest(_token({"sub": "ab" * 32}), pipe) == b""
    assert _declared_digest(_token({"sub": "ab" * 32}), io.BytesIO(b"y")) == (
        hashlib.sha256(b"y").digest()
    )
