"""Issue 13 item 4 with real daemons: ``xbgw send`` of the wrong file under a passport that
names its data set (``sub``) is refused before anything crosses -- the receiving gateway never
hears of the transfer -- and the same passport then sends the right file."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.harness import Pair, running_pair
from tests.system.lifecycle_helpers import ledger_row


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    with running_pair(tmp_path_factory.mktemp("pair")) as running:
        yield running


def test_the_wrong_file_is_refused_before_the_offer_and_the_passport_then_sends_the_right_one(
    pair: Pair, tmp_path: Path
) -> None:
    right, wrong = tmp_path / "right.bin", tmp_path / "wrong.bin"
    right.write_bytes(os.urandom(300_000))
    wrong.write_bytes(os.urandom(300_000))
    digest = hashlib.sha256(right.read_bytes()).hexdigest()
    token = pair.passport(byte_limit=1_000_000, jti="dpo_bound-1", extra=["--sub", digest])

    refused = pair.lingang.cli("send", str(wrong), "--to", "frankfurt", "--passport", token)
    assert refused.returncode != 0
    assert "is not the data set passport dpo_bound-1 names" in refused.stderr, refused.stderr
    assert "nothing was sent, the passport is still usable" in refused.stderr
    assert "delivered" not in refused.stdout
    # Nothing crossed: frankfurt has no record of the transfer, nor a line about it.
    assert ledger_row(pair.frankfurt.paths.state_dir, "dpo_bound-1") is None
    assert "dpo_bound-1" not in pair.frankfurt.log_text()

    sent = pair.lingang.cli("send", str(right), "--to", "frankfurt", "--passport", token)
    assert sent.returncode == 0, sent.stderr + pair.lingang.log_text()
    assert digest in sent.stdout
    row = ledger_row(pair.frankfurt.paths.state_dir, "dpo_bound-1")
    assert row is not None and row[0] == "committed"
