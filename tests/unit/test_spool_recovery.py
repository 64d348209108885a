"""The spool after a crash: what the ledger calls durable but the disk lost restarts at zero."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import PartialLostError
from gateway.spool import Spool

HEADER = b"H" * 40


def test_missing_partial_with_a_resume_point_restarts_from_the_header(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    with pytest.raises(PartialLostError, match="offer it again to restart from segment 0"):
        spool.open_partial("t1", HEADER, len(HEADER) + 100)
    assert spool.partial_path("t1").read_bytes() == HEADER
    reopened = spool.open_partial("t1", HEADER, len(HEADER))
    reopened.append(b"segment")
    reopened.close()
    assert spool.partial_path("t1").read_bytes() == HEADER + b"segment"


def test_short_partial_is_reset_to_its_header(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.partial_path("t2").write_bytes(HEADER + b"x" * 10)
    with pytest.raises(PartialLostError, match="holds 50 bytes, fewer than the 140 recorded"):
        spool.open_partial("t2", HEADER, len(HEADER) + 100)
    assert spool.partial_path("t2").read_bytes() == HEADER


def test_torn_header_is_rewritten_when_nothing_was_durable(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.partial_path("t3").write_bytes(b"HH")
    spool.open_partial("t3", HEADER, len(HEADER)).close()
    assert spool.partial_path("t3").read_bytes() == HEADER


def test_bytes_past_the_durable_point_are_cut(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.partial_path("t4").write_bytes(HEADER + b"good" + b"torn")
    spool.open_partial("t4", HEADER, len(HEADER) + 4).close()
    assert spool.partial_path("t4").read_bytes() == HEADER + b"good"
