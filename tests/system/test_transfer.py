"""A real transfer between two daemons over mutual TLS, fetched byte-identical."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.harness import Pair, running_pair


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    with running_pair(tmp_path_factory.mktemp("pair")) as running:
        yield running


def _dataset(path: Path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def test_send_fetch_round_trip(pair: Pair, tmp_path: Path) -> None:
    source = tmp_path / "data.bin"
    digest = _dataset(source, 1_000_003)
    token = pair.passport(byte_limit=2_000_000)
    sent = pair.lingang.cli("send", str(source), "--to", "frankfurt", "--passport", token)
    assert sent.returncode == 0, sent.stderr + pair.lingang.log_text() + pair.frankfurt.log_text()
    assert digest in sent.stdout
    inbox = pair.frankfurt.cli("inbox")
    assert inbox.returncode == 0, inbox.stderr
    transfer_id = next(line.split()[0] for line in inbox.stdout.splitlines() if digest[:16] in line)
    target = tmp_path / "fetched.bin"
    fetched = pair.frankfurt.cli("fetch", transfer_id, "-o", str(target))
    assert fetched.returncode == 0, fetched.stderr
    assert hashlib.sha256(target.read_bytes()).hexdigest() == digest
    assert stat.S_IMODE(target.stat().st_mode) == 0o600  # decrypted data: owner only
