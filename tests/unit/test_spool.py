"""The spool: safe file names, partial files cut back to the durable point, atomic commit."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from gateway.errors import PartialLostError, StorageError
from gateway.spool import Spool, check_transfer_id

HEADER = b"XBGW-header-bytes"


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- transfer ids -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "transfer_id",
    ["a", "0", "t-1", "T_2.part", "a..b", "x" * 64, "9f3c2a1e-7b4d-4e0a-8c55-1d2e3f405162"],
)
def test_safe_transfer_ids_are_accepted(transfer_id: str) -> None:
    assert check_transfer_id(transfer_id) == transfer_id


@pytest.mark.parametrize(
    "transfer_id",
    [
        ".",
        "..",
        "/x",
        "a/b",
        "../etc",
        "x" * 65,
        "",
        "-rf",
        "_a",
        ".hidden",
        "a b",
        "a\\b",
        "a\nb",
        "abc\n",
        "a\x00b",
        "é",
    ],
)
def test_unsafe_transfer_ids_are_refused(spool: Spool, transfer_id: str) -> None:
    with pytest.raises(ValueError, match=r"must be 1-64 characters .* starting with a letter"):
        check_transfer_id(transfer_id)
    with pytest.raises(ValueError, match="must be 1-64 characters"):
        spool.partial_path(transfer_id)
    with pytest.raises(ValueError, match="must be 1-64 characters"):
        spool.committed_path(transfer_id)


def test_paths_stay_inside_the_spool(spool: Spool) -> None:
    assert spool.partial_path("t-1") == spool.incoming / "t-1.part"
    assert spool.committed_path("t-1") == spool.inbox / "t-1.xbgw"


# --- layout and modes -------------------------------------------------------------------------


def test_directories_are_private(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    spool = Spool(root)
    assert spool.incoming == root / "incoming"
    assert spool.inbox == root / "inbox"
    for directory in (root, spool.incoming, spool.inbox):
        assert directory.is_dir()
        assert _mode(directory) == 0o700
    Spool(root)  # opening again is fine


# --- partial files ----------------------------------------------------------------------------


def test_new_partial_file_starts_with_the_header(spool: Spool) -> None:
    partial = spool.open_partial("t-1", HEADER, len(HEADER))
    assert partial.path == spool.incoming / "t-1.part"
    assert _mode(partial.path) == 0o600
    partial.append(b"seg0")
    partial.append(b"seg1")
    partial.sync()  # the header is made durable with the first segments
    assert partial.path.read_bytes() == HEADER + b"seg0seg1"
    partial.close()
    with spool.read_held("t-1") as handle:
        assert handle.read() == HEADER + b"seg0seg1"


def test_offered_transfer_holds_just_the_header(spool: Spool) -> None:
    spool.open_partial("t-1", HEADER, len(HEADER)).close()  # what an accepted offer does
    assert spool.partial_path("t-1").read_bytes() == HEADER


def test_resume_cuts_torn_bytes_past_the_durable_length(spool: Spool) -> None:
    spool.open_partial("t-1", HEADER, len(HEADER)).close()
    path = spool.partial_path("t-1")
    path.write_bytes(HEADER + b"AAAA" + b"torn-bytes-after-crash")
    durable = len(HEADER) + 4
    partial = spool.open_partial("t-1", HEADER, durable)
    assert path.read_bytes() == HEADER + b"AAAA"  # cut at once, not at the next write
    partial.append(b"BBBB")
    partial.close()
    assert path.read_bytes() == HEADER + b"AAAABBBB"


def test_resume_at_exactly_the_file_length_appends(spool: Spool) -> None:
    spool.open_partial("t-1", HEADER, len(HEADER)).close()
    path = spool.partial_path("t-1")
    path.write_bytes(HEADER + b"AAAA")
    partial = spool.open_partial("t-1", HEADER, len(HEADER) + 4)
    partial.append(b"x")
    partial.close()
    assert path.read_bytes() == HEADER + b"AAAAx"


def test_nothing_durable_rewrites_a_torn_header(spool: Spool) -> None:
    spool.open_partial("t-1", HEADER, len(HEADER)).close()
    path = spool.partial_path("t-1")
    path.write_bytes(HEADER[:5] + b"\x00garbage-from-a-crash-and-more")
    partial = spool.open_partial("t-1", HEADER, len(HEADER))
    partial.append(b"seg0")
    partial.close()
    assert path.read_bytes() == HEADER + b"seg0"


def test_durable_length_beyond_the_file_is_lost_data(spool: Spool) -> None:
    spool.open_partial("t-1", HEADER, len(HEADER)).close()
    path = spool.partial_path("t-1")
    path.write_bytes(HEADER + b"AAAA")
    with pytest.raises(
        PartialLostError,
        match=rf"holds {len(HEADER) + 4} bytes, fewer than the {len(HEADER) + 5} recorded",
    ) as caught:
        spool.open_partial("t-1", HEADER, len(HEADER) + 5)
    assert caught.value.grpc_status == "FAILED_PRECONDITION"
    # Started again from the header: the ledger goes back to segment 0.
    assert path.read_bytes() == HEADER
    partial = spool.open_partial("t-1", HEADER, len(HEADER))
    partial.append(b"seg0")
    partial.close()
    assert path.read_bytes() == HEADER + b"seg0"


def test_missing_file_with_earlier_segments_is_lost_data(spool: Spool) -> None:
    with pytest.raises(PartialLostError, match="partial data of transfer t-9 was lost"):
        spool.open_partial("t-9", HEADER, len(HEADER) + 80)
    partial = spool.open_partial("t-9", HEADER, len(HEADER))  # the restart from segment 0
    partial.append(b"seg0")
    partial.close()
    assert spool.partial_path("t-9").read_bytes() == HEADER + b"seg0"


def test_durable_length_shorter_than_the_header_is_refused(spool: Spool) -> None:
    with pytest.raises(ValueError, match="shorter than the header"):
        spool.open_partial("t-1", HEADER, len(HEADER) - 1)
    assert not spool.partial_path("t-1").exists()


def test_open_partial_refuses_an_unsafe_id(spool: Spool) -> None:
    with pytest.raises(ValueError, match="must be 1-64 characters"):
        spool.open_partial("../escape", HEADER, len(HEADER))
    assert not (spool.incoming.parent / "escape.part").exists()


# --- commit and discard -----------------------------------------------------------------------


def test_commit_moves_the_file_into_the_inbox(spool: Spool) -> None:
    partial = spool.open_partial("t-1", HEADER, len(HEADER))
    partial.append(b"ciphertext")
    partial.close()
    target = spool.commit("t-1")
    assert target == spool.inbox / "t-1.xbgw"
    assert target.read_bytes() == HEADER + b"ciphertext"
    assert not spool.partial_path("t-1").exists()
    assert list(spool.incoming.iterdir()) == []
    assert list(spool.inbox.iterdir()) == [target]
    assert _mode(target) == 0o600
    with spool.open_committed("t-1") as handle:
        assert handle.read() == HEADER + b"ciphertext"


def test_commit_without_a_partial_file_fails(spool: Spool) -> None:
    with pytest.raises(StorageError, match="spool file of transfer t-1 is missing") as caught:
        spool.commit("t-1")
    assert caught.value.grpc_status == "DATA_LOSS"
    assert list(spool.inbox.iterdir()) == []


def test_discard_removes_the_partial_file(spool: Spool) -> None:
    spool.open_partial("t-1", HEADER, len(HEADER)).close()
    spool.open_partial("t-2", HEADER, len(HEADER)).close()
    spool.discard("t-1")
    assert not spool.partial_path("t-1").exists()
    assert spool.partial_path("t-2").exists()
    spool.discard("t-1")  # already gone: not an error
    spool.discard("never-existed")


def test_commit_after_the_rename_is_done_already_succeeds(spool: Spool) -> None:
    """A crash between the rename into the inbox and the ledger commit: a retried commit
    finds the committed file in place and the partial gone, which is success."""
    spool.open_partial("t-1", HEADER, len(HEADER)).close()
    first = spool.commit("t-1")
    assert spool.commit("t-1") == first
    assert first.read_bytes() == HEADER


def test_a_full_disk_is_a_storage_error_that_says_so(spool: Spool) -> None:
    partial = spool.open_partial("t-1", HEADER, len(HEADER))
    with open("/dev/full", "wb") as full:
        partial._handle = full
        with pytest.raises(StorageError, match="No space left on device") as caught:
            partial.append(b"x" * 8192)
            partial.sync()
        assert caught.value.grpc_status == "RESOURCE_EXHAUSTED"
