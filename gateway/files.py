"""The one way xbgw reads a file that its configuration names: bounded, never blocking.

A path in ``gateway.yaml`` is whatever the operator typed. A FIFO would block ``open()`` for
ever (``xbgw serve`` hung; after a SIGHUP the daemon no longer stopped on SIGTERM), a
device such as ``/dev/zero`` never ends (MemoryError), a directory or socket cannot be read,
and a multi-gigabyte file is surely the wrong one. So every such file is checked before it is
read: its type by ``stat`` (a device is never even opened: opening some has side effects),
then opened with ``O_NONBLOCK`` and checked again on the open descriptor (the path may have
been replaced in between), and read only up to a cap per kind of file.

The caps are far above any real file of that kind, and far below what hurts a daemon:

* ``YAML_MAX`` 4 MiB: ``gateway.yaml`` and compliance rule tables;
* ``PEM_MAX`` 1 MiB: certificates, CA bundles, public keys (a full public CA bundle is ~220 KiB);
* ``SECRET_MAX`` 4 KiB: a PIN or passphrase file (one line);
* ``NAMED_MAX`` 1 MiB: files named only for another library to read (``hsm.softhsm_conf``);
  ``hsm.module`` is only checked to be a regular file (the dynamic loader maps it, any size);
* the TLS private key keeps its own 64 KiB cap (:data:`gateway.tlskey.MAX_KEY_FILE_LEN`).

Errors are :class:`FileError` (a :class:`~gateway.errors.ConfigError`: exit 78 at start, a
refused reload) whose message names the path; ``.why`` is the reason alone.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final

from gateway.errors import ConfigError

KIB, MIB = 1024, 1024 * 1024
YAML_MAX: Final = 4 * MIB
PEM_MAX: Final = MIB
SECRET_MAX: Final = 4 * KIB
NAMED_MAX: Final = MIB

_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


class FileError(ConfigError):
    """A named file cannot be used: ``str()`` is a sentence with the path; ``why`` is the
    reason alone (``"a FIFO, expected a regular file"``, ``"Permission denied"``)
    for callers that name the file their own way."""

    def __init__(self, path: Path, why: str, sentence: str | None = None) -> None:
        self.path, self.why = path, why
        super().__init__(sentence or f"{path}: {why}")


class FileMissingError(FileError):
    """Nothing exists at the path."""


class FileDeniedError(FileError):
    """This user may not read it (it may still be readable by the daemon's user)."""


class FileRefusedError(FileError):
    """Not a regular file, larger than its cap, or unreadable for another reason."""


class NotRegularFileError(FileRefusedError):
    """A directory, FIFO, socket or device: ``kind`` says which."""

    def __init__(self, path: Path, kind: str) -> None:
        self.kind = kind
        why = f"{kind}, expected a regular file"
        super().__init__(path, why, f"{path} is {why}")


class FileTooLargeError(FileRefusedError):
    """Larger than the cap for its kind of file (``limit`` bytes)."""

    def __init__(self, path: Path, limit: int) -> None:
        self.limit = limit
        why = f"larger than {_size(limit)}, the most such a file may hold (is it the right file?)"
        super().__init__(path, why, f"{path} is {why}")


def read_bounded(path: Path, limit: int) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them, or a ``FileError``."""
    check_regular(path, limit)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise _os_error(path, exc) from None
    try:
        _check(path, os.fstat(fd), limit)  # what we opened, not what the path named before
        chunks, size = list[bytes](), 0
        while size <= limit and (chunk := os.read(fd, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise _os_error(path, exc) from None
    finally:
        os.close(fd)
    if size > limit:  # it grew since fstat
        raise FileTooLargeError(path, limit)
    return b"".join(chunks)


def check_regular(path: Path, limit: int | None = None) -> os.stat_result:
    """Refuse ``path`` unless it is a regular file (symbolic links followed) within ``limit``
    bytes; also for files another library reads (a PKCS#11 module, SoftHSM's conf)."""
    try:
        status = os.stat(path)
    except OSError as exc:
        raise _os_error(path, exc) from None
    _check(path, status, limit)
    return status


def _check(path: Path, status: os.stat_result, limit: int | None) -> None:
    if not stat.S_ISREG(status.st_mode):
        kind = next((name for test, name in _KINDS if test(status.st_mode)), "not a file")
        raise NotRegularFileError(path, kind)
    if limit is not None and status.st_size > limit:
        raise FileTooLargeError(path, limit)


def _size(limit: int) -> str:
    if limit % MIB == 0:
        return f"{limit // MIB} MiB"
    return f"{limit // KIB} KiB" if limit % KIB == 0 else f"{limit} bytes"


def _os_error(path: Path, exc: OSError) -> FileError:
    why = exc.strerror or type(exc).__name__
    if isinstance(exc, FileNotFoundError):
        return FileMissingError(path, why, f"file {path} does not exist")
    if isinstance(exc, PermissionError):
        return FileDeniedError(path, why, f"cannot read {path}: permission denied")
    return FileRefusedError(path, why, f"cannot read {path}: {why}")
