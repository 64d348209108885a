"""The spool: safe file names, partial files cut back to the durable point, atomic commit."""

from __future__ import annotations

import errno
import mmap
import os
import stat
from pathlib import Path
from typing import BinaryIO

import pytest

from gateway import spool as spool_module
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


# --- the page cache ---------------------------------------------------------------------------


def _advice_log(monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, ...]]:
    """Every fdatasync and posix_fadvise from now on, in order (both still done)."""
    events: list[tuple[object, ...]] = []
    real_sync, real_advise = os.fdatasync, os.posix_fadvise

    def fdatasync(fd: int) -> None:
        events.append(("fdatasync",))
        real_sync(fd)

    def posix_fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        events.append(("drop", offset, length, advice))
        real_advise(fd, offset, length, advice)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(os, "posix_fadvise", posix_fadvise)
    return events


def test_sync_drops_from_the_page_cache_only_what_it_made_durable(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After each fdatasync -- never before -- the kernel is advised to drop the bytes just
    made durable, none past them; the next advice starts at the page where the last one
    ended (the kernel keeps a partial last page). A sync with nothing new advises nothing."""
    events = _advice_log(monkeypatch)
    page = mmap.PAGESIZE
    partial = spool.open_partial("t-1", HEADER, len(HEADER))
    partial.append(b"a" * (page + 100))
    first_end = partial.length
    partial.sync()
    partial.append(b"b" * (2 * page))
    second_end = partial.length
    partial.sync()
    partial.sync()
    dontneed = os.POSIX_FADV_DONTNEED
    second_start = first_end - first_end % page
    assert events == [
        ("fdatasync",),
        ("drop", 0, first_end, dontneed),
        ("fdatasync",),
        ("drop", second_start, second_end - second_start, dontneed),
        ("fdatasync",),
    ]
    partial.close()
    assert partial.path.read_bytes() == HEADER + b"a" * (page + 100) + b"b" * (2 * page)


def test_a_refused_advice_is_no_error_and_is_given_again(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The advice is only advice: a file system that refuses it fails nothing, and the next
    sync advises again from where the last accepted advice ended."""
    advised: list[tuple[int, int]] = []

    def refuse(fd: int, offset: int, length: int, advice: int) -> None:
        advised.append((offset, length))
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    monkeypatch.setattr(os, "posix_fadvise", refuse)
    partial = spool.open_partial("t-1", HEADER, len(HEADER))
    partial.append(b"seg0")
    partial.sync()
    partial.append(b"seg1")
    partial.sync()
    assert advised == [(0, len(HEADER) + 4), (0, len(HEADER) + 8)]
    partial.close()
    assert partial.path.read_bytes() == HEADER + b"seg0seg1"


def _drops(events: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
    return [(e[1], e[2]) for e in events if e[0] == "drop"]


def _read_by_pages(source: BinaryIO) -> bytes:
    got = b""
    while chunk := source.read(mmap.PAGESIZE):
        got += chunk
    return got


def test_a_reader_drops_from_the_page_cache_only_what_it_has_read(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fetch reads the committed file front to back once: every DROP_BEHIND_BYTES, and at
    the end of the file, the kernel is advised to drop what was read so far -- never a byte
    past it -- and the bytes read are the file's."""
    page = mmap.PAGESIZE
    monkeypatch.setattr(spool_module, "DROP_BEHIND_BYTES", 2 * page)
    data = os.urandom(5 * page + 100)
    partial = spool.open_partial("t-1", HEADER, len(HEADER))
    partial.append(data)
    partial.close()
    spool.commit("t-1")
    events = _advice_log(monkeypatch)
    with spool.open_committed("t-1") as src:
        assert _read_by_pages(src) == HEADER + data
    end = len(HEADER) + len(data)
    assert _drops(events) == [(0, 2 * page), (2 * page, 2 * page), (4 * page, end - 4 * page)]


def test_a_held_file_is_read_once_the_same_way(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The re-hash reads held data (``read_held``) as a fetch does; a refused advice fails
    no read, and is given again at the next step."""
    page = mmap.PAGESIZE
    monkeypatch.setattr(spool_module, "DROP_BEHIND_BYTES", 2 * page)
    data = os.urandom(3 * page)
    partial = spool.open_partial("t-1", HEADER, len(HEADER))
    partial.append(data)
    partial.close()
    advised: list[tuple[int, int]] = []

    def refuse(fd: int, offset: int, length: int, advice: int) -> None:
        advised.append((offset, length))
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    monkeypatch.setattr(os, "posix_fadvise", refuse)
    with spool.read_held("t-1") as src:
        src.seek(len(HEADER))
        assert src.read(len(data)) == data
        assert src.read(1) == b""
    end = len(HEADER) + len(data)
    assert advised == [(0, end), (0, end)]
