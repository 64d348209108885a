"""Received data at rest: ciphertext only, committed atomically.

Layout under ``<state_dir>/spool``::

    incoming/<transfer_id>.part   header (re-wrapped to our storage key) || segments so far
    inbox/<transfer_id>.xbgw      the same file, renamed once the manifest checked out

A partial file is never visible in the inbox: commit is fsync + rename + fsync of the
directory. The durable length of a partial file is whatever the ledger's resume point says;
on resume the file is cut back to it, so bytes written after the last durable point (and
perhaps torn by a crash) are never trusted.

Durable bytes leave the page cache: each ``PartialFile.sync`` advises the kernel to drop the
pages it has just made durable (``POSIX_FADV_DONTNEED``). The spool is written once and read
again only by a fetch, usually much later (or by the re-hash after a restart): left cached,
every GiB received grew the page cache by a GiB of newly allocated pages, and writing into
pages the kernel had not used for a while cost the receiving daemon 1-2.5 CPU-s per GiB in
the kernel's copy on the 2-core VMs (most likely because their free memory goes back to the
host -- virtio-balloon free page reporting -- and touching it again costs a fault there).
With the drop the next appends reuse the pages just freed: ~0.35 CPU-s per GiB for the whole
write path, fdatasync included. Only pages already made durable are dropped, after the
fdatasync: nothing about durability changes. The readers of held and committed files
(``Spool.read_held``, ``Spool.open_committed``: the re-hash, the fetch) read a file front to
back once and drop what they have read behind them the same way: a fetch of data no longer
cached cost 3.0 CPU-s per GiB filling new pages, 1.0 with the drop (as from a warm cache).

File-system failures (disk full, I/O error, permissions) leave this module as
:class:`~gateway.errors.StorageError`; the servicers map it to a status once.
"""

from __future__ import annotations

import io
import mmap
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from gateway.errors import PartialLostError, StorageError

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_transfer_id(transfer_id: str) -> str:
    """Transfer ids become file names: refuse anything that could escape the spool."""
    if not _SAFE_ID.fullmatch(transfer_id):
        raise ValueError(
            f"transfer id {transfer_id!r} must be 1-64 characters of A-Z a-z 0-9 . _ - "
            "starting with a letter or digit"
        )
    return transfer_id


@contextmanager
def _storing(where: Path) -> Iterator[None]:
    """An OSError while writing the spool: the transfer's durable data stays; resume later.
    ``where`` (the spool directory) is named if its file system is full."""
    try:
        yield
    except OSError as exc:
        raise StorageError.from_exception(exc, where) from None


@contextmanager
def _reading(transfer_id: str) -> Iterator[None]:
    try:
        yield
    except FileNotFoundError:
        raise StorageError(
            f"the spool file of transfer {transfer_id} is missing: the state directory was "
            "changed outside xbgw (restore it from a backup)",
            "DATA_LOSS",
        ) from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise StorageError(
            f"cannot read the spool file of transfer {transfer_id} ({reason})"
        ) from None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PartialFile:
    """Append-only writer for one incoming transfer."""

    def __init__(self, path: Path, handle: BinaryIO, length: int) -> None:
        self.path = path
        self._handle = handle  # BinaryIO: "wb" or "r+b", positioned at ``length``
        self._spool = path.parent.parent
        #: The file's length up to the end of the last append that succeeded: those bytes
        #: are in the file, none in a buffer (each append is flushed).
        self.length = length
        self._synced = length
        #: Bytes before this offset were advised out of the page cache (see the module
        #: docstring); the next advice starts at its page, which may have been partial.
        self._dropped = 0

    def append(self, data: bytes | memoryview) -> None:
        with _storing(self._spool):
            self._handle.write(data)
            self._handle.flush()
        self.length += len(data)

    def sync(self) -> None:
        """Make everything appended so far durable (before the ledger moves the resume point).

        When the disk is full, the last append's bytes may still sit in the buffer (or be
        torn in the file): if every earlier append reached the file, those are made durable
        all the same -- what verified before the disk filled is kept (the torn tail is cut
        off on the next upload, at the resume point)."""
        length = self.length
        try:
            with _storing(self._spool):
                self._handle.flush()
                os.fdatasync(self._handle.fileno())
        except StorageError:
            if not self._written(length):
                raise
            with _storing(self._spool):
                os.fdatasync(self._handle.fileno())
        self._synced = length
        self._drop_cached(length)

    def _drop_cached(self, length: int) -> None:
        """Advise the kernel to drop the durable pages before ``length`` (module docstring).

        Only advice, given after the fdatasync: the pages are clean, so dropping them loses
        nothing; the kernel keeps the last page if it is partial (the next append fills
        it), so the next call starts at that page. A file system that refuses is ignored."""
        if length > self._dropped and _drop_pages(self._handle.fileno(), self._dropped, length):
            self._dropped = length

    def _written(self, length: int) -> bool:
        """Whether the file holds ``length`` bytes at least (written past the buffer)."""
        try:
            return os.fstat(self._handle.fileno()).st_size >= length
        except (OSError, ValueError):
            return False

    def close(self) -> None:
        """Close (the descriptor is released even if the last buffered write fails). A
        full disk is not an error here once every good append is durable: the bytes that
        could not be written were never counted."""
        try:
            with _storing(self._spool):
                self._handle.close()
        except StorageError:
            if self._synced < self.length:
                raise


#: How much a :class:`ReadOnce` reads between two drops of what it has read.
DROP_BEHIND_BYTES = 32 << 20


class ReadOnce(io.BufferedReader):
    """A spool file read front to back once (a fetch, a re-hash): every ``DROP_BEHIND_BYTES``
    read, and at the end of the file, the kernel is advised to drop the pages before the
    position reached from the page cache (see the module docstring). Only ``read`` drops;
    what it returns is unchanged, and a page read again comes from the disk. A refused
    advice is ignored (and given again at the next step)."""

    _dropped = 0  # pages before this offset were advised out

    def read(self, size: int | None = -1, /) -> bytes:
        data = super().read(size)
        at = self.tell()
        short = size is None or size < 0 or len(data) < size  # the end of the file
        if (
            at > self._dropped
            and (short or at - self._dropped >= DROP_BEHIND_BYTES)
            and _drop_pages(self.fileno(), self._dropped, at)
        ):
            self._dropped = at
        return data


def _drop_pages(fd: int, dropped: int, end: int) -> bool:
    """Advise the kernel to drop ``fd``'s cached pages from the page holding ``dropped`` (the
    end of the last advice, perhaps mid-page) up to ``end``; False if the advice is refused
    (a file system without it): the caller gives it again next time."""
    start = dropped - dropped % mmap.PAGESIZE
    try:
        os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_DONTNEED)
    except OSError:
        return False
    return True


class Spool:
    """The spool directory of one gateway."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.incoming = root / "incoming"
        self.inbox = root / "inbox"
        with _storing(root):
            for directory in (root, self.incoming, self.inbox):
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def partial_path(self, transfer_id: str) -> Path:
        return self.incoming / f"{check_transfer_id(transfer_id)}.part"

    def committed_path(self, transfer_id: str) -> Path:
        return self.inbox / f"{check_transfer_id(transfer_id)}.xbgw"

    def open_partial(self, transfer_id: str, header: bytes, durable_length: int) -> PartialFile:
        """Open for appending at ``durable_length`` (the header's length for a new transfer)."""
        with _storing(self.root):
            return self._open_partial(transfer_id, header, durable_length)

    def _open_partial(self, transfer_id: str, header: bytes, durable_length: int) -> PartialFile:
        path = self.partial_path(transfer_id)
        if durable_length < len(header):
            raise ValueError("durable length is shorter than the header")
        if not path.exists():
            # Not fsyncing the directory here is deliberate: if a crash loses the new name,
            # the next upload finds it missing and the transfer restarts from segment 0.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            created: BinaryIO = os.fdopen(fd, "wb")
            created.write(header)
            if durable_length != len(header):
                created.close()
                raise PartialLostError(
                    f"the partial data of transfer {transfer_id} was lost (crash?); "
                    "offer it again to restart from segment 0"
                )
            return PartialFile(path, created, durable_length)
        handle: BinaryIO = path.open("r+b")
        size = os.fstat(handle.fileno()).st_size
        if durable_length == len(header) or size < durable_length:
            # Nothing durable yet (a crash may have torn the header), or fewer bytes than the
            # ledger says are durable: start the file again from its header.
            handle.truncate(0)
            handle.write(header)
            if durable_length == len(header):
                return PartialFile(path, handle, durable_length)
            handle.close()
            raise PartialLostError(
                f"the partial data of transfer {transfer_id} holds {size} bytes, fewer than "
                f"the {durable_length} recorded; offer it again to restart from segment 0"
            )
        handle.truncate(durable_length)
        handle.seek(durable_length)
        return PartialFile(path, handle, durable_length)

    def holds(self, transfer_id: str) -> bool:
        """Whether anything is held of a transfer being finished (see :meth:`read_held`)."""
        with _storing(self.root):
            return (
                self.partial_path(transfer_id).exists() or self.committed_path(transfer_id).exists()
            )

    def fingerprint(self, transfer_id: str) -> tuple[int, int, int] | None:
        """(inode, size, mtime) of the partial file, None if it is gone: a running hash kept
        in memory stands for the held bytes only while this is unchanged."""
        try:
            st = self.partial_path(transfer_id).stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError.from_exception(exc, self.root) from None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def read_held(self, transfer_id: str) -> BinaryIO:
        """What is held of a transfer still being finished: its partial file -- or, after a
        crash between the rename into the inbox and the ledger commit, the committed one."""
        partial = self.partial_path(transfer_id)
        committed = self.committed_path(transfer_id)
        source = partial if partial.exists() or not committed.exists() else committed
        with _reading(transfer_id):
            return ReadOnce(io.FileIO(source, "rb"))

    def commit(self, transfer_id: str) -> Path:
        """Atomically move a complete partial file into the inbox.

        Idempotent: after a crash between the rename and the ledger commit, the partial file
        is gone and the committed one is there, which is success.
        """
        source = self.partial_path(transfer_id)
        target = self.committed_path(transfer_id)
        with _storing(self.root):
            if not source.exists() and target.exists():
                return target
        with _reading(transfer_id), source.open("rb") as handle:
            os.fsync(handle.fileno())
        with _storing(self.root):
            os.replace(source, target)
            _fsync_dir(self.inbox)  # the new name is durable; the old one may linger, harmlessly
        return target

    def discard(self, transfer_id: str) -> None:
        """Remove a refused transfer's partial data."""
        with _storing(self.root):
            self.partial_path(transfer_id).unlink(missing_ok=True)

    def open_committed(self, transfer_id: str) -> BinaryIO:
        """The committed file, for reading front to back once (:class:`ReadOnce`)."""
        with _reading(transfer_id):
            return ReadOnce(io.FileIO(self.committed_path(transfer_id), "rb"))
