"""gateway.files: a named file is read only if it is a regular file within its cap, and a
FIFO, device, socket or directory is refused at once -- never blocking, never read unbounded.

The FIFO cases run the read in a thread with a deadline: a reader that opened the FIFO
without ``O_NONBLOCK`` would block until a writer came, and that must fail the test rather
than hang it (the cleanup opens the write end, which releases such a reader).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import files, tls
from gateway.compliance import RuleTableError, load_tables
from gateway.errors import ConfigError, PinSourceError
from gateway.secrets import PinSource

DEADLINE = 5.0


def within_deadline(call: Callable[[], object]) -> BaseException | object:
    """``call()``'s result or exception; fails the test if it does not return in time."""
    outcome: list[BaseException | object] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # handed back to the test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(DEADLINE)
    assert not thread.is_alive(), f"still blocked after {DEADLINE}s"
    return outcome[0]


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    yield path
    # Release a reader blocked in open() (there is none when the code is right).
    with contextlib.suppress(OSError):  # ENXIO: nobody has it open for reading, as it should be
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


@pytest.fixture
def unix_socket(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        yield path


def test_reads_a_regular_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "ca.pem"
    path.write_bytes(b"x" * 1000)
    assert files.read_bounded(path, 1000) == b"x" * 1000
    assert files.check_regular(path, 1000).st_size == 1000


def test_a_symbolic_link_to_a_regular_file_is_followed(tmp_path: Path) -> None:
    (tmp_path / "real").write_bytes(b"pem")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert files.read_bounded(tmp_path / "link", 10) == b"pem"


def test_a_fifo_is_refused_without_blocking(fifo: Path) -> None:
    got = within_deadline(lambda: files.read_bounded(fifo, files.PEM_MAX))
    assert isinstance(got, files.NotRegularFileError), got
    assert str(got) == f"{fifo} is a FIFO, expected a regular file"
    assert got.kind == "a FIFO" and got.path == fifo


def test_a_symbolic_link_to_a_fifo_is_refused(fifo: Path, tmp_path: Path) -> None:
    (tmp_path / "ca.pem").symlink_to(fifo)
    got = within_deadline(lambda: files.read_bounded(tmp_path / "ca.pem", files.PEM_MAX))
    assert isinstance(got, files.NotRegularFileError) and got.kind == "a FIFO", got


def test_a_path_replaced_by_a_fifo_after_stat_is_refused_on_the_descriptor(
    fifo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check that counts is fstat of what was opened: the path may change after stat."""
    regular = os.stat(tmp_path)  # any stat result; made to look like a small regular file
    fake = os.stat_result((0o100644, *regular[1:6], 10, *regular[7:]))
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: fake if Path(p) == fifo else real_stat(p))
    got = within_deadline(lambda: files.read_bounded(fifo, files.PEM_MAX))
    assert isinstance(got, files.NotRegularFileError) and got.kind == "a FIFO", got


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        pytest.param(lambda tmp: tmp, "a directory", id="directory"),
        pytest.param(lambda _tmp: Path("/dev/zero"), "a character device", id="dev-zero"),
        pytest.param(lambda _tmp: Path("/dev/null"), "a character device", id="dev-null"),
    ],
)
def test_directories_and_devices_are_refused(
    tmp_path: Path, make: Callable[[Path], Path], kind: str
) -> None:
    path = make(tmp_path)
    with pytest.raises(files.NotRegularFileError) as info:
        files.read_bounded(path, files.PEM_MAX)
    assert str(info.value) == f"{path} is {kind}, expected a regular file"
    with pytest.raises(files.NotRegularFileError):
        files.check_regular(path)


def test_a_socket_is_refused(unix_socket: Path) -> None:
    with pytest.raises(files.NotRegularFileError, match="is a socket, expected a regular file"):
        files.read_bounded(unix_socket, files.PEM_MAX)


def test_the_cap_is_inclusive_and_a_larger_file_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(b"a" * 4096)
    assert len(files.read_bounded(path, 4096)) == 4096
    with pytest.raises(files.FileTooLargeError) as info:
        files.read_bounded(path, 4095)
    assert "larger than 4095 bytes" in str(info.value)
    sparse = tmp_path / "sparse"
    with sparse.open("wb") as out:
        out.truncate(files.YAML_MAX + 1)  # 4 MiB + 1 without writing them
    with pytest.raises(files.FileTooLargeError, match=r"sparse is larger than 4 MiB"):
        files.read_bounded(sparse, files.YAML_MAX)
    with pytest.raises(files.FileTooLargeError):
        files.check_regular(sparse, files.YAML_MAX)
    assert files.check_regular(sparse).st_size == files.YAML_MAX + 1  # no cap: a library


def test_a_file_that_grows_after_fstat_is_still_cut_at_the_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "growing"
    path.write_bytes(b"a" * 100)
    real_fstat = os.fstat

    def small(fd: int) -> Any:
        st = real_fstat(fd)
        return os.stat_result((*st[:6], 10, *st[7:]))  # reports 10 bytes

    monkeypatch.setattr(os, "fstat", small)
    with pytest.raises(files.FileTooLargeError):
        files.read_bounded(path, 50)


def test_missing_and_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(files.FileMissingError) as missing:
        files.read_bounded(tmp_path / "gone", 10)
    assert str(missing.value) == f"file {tmp_path / 'gone'} does not exist"
    path = tmp_path / "secret"
    path.write_bytes(b"1234")
    real_open = os.open

    def deny(p: Any, flags: int, *args: Any) -> int:
        if Path(p) == path:
            raise PermissionError(13, "Permission denied", str(p))
        return real_open(p, flags, *args)

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(files.FileDeniedError) as denied:
        files.read_bounded(path, 10)
    assert str(denied.value) == f"cannot read {path}: permission denied"


def test_a_file_error_is_a_config_error(tmp_path: Path) -> None:
    """So that ``xbgw serve`` exits 78 and a reload is refused, whoever forgot to wrap it."""
    with pytest.raises(ConfigError):
        files.read_bounded(tmp_path, 10)


# --- the readers that use it ----------------------------------------------------------------


def test_a_pin_file_that_is_a_fifo_is_refused_without_blocking(fifo: Path) -> None:
    got = within_deadline(lambda: PinSource("file", str(fifo)).read())
    assert isinstance(got, PinSourceError), got
    assert str(got) == f"HSM PIN: {fifo}: a FIFO, expected a regular file"


def test_a_pin_file_that_is_huge_or_a_device_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "pin"
    big.write_bytes(b"1" * (files.SECRET_MAX + 1))
    with pytest.raises(PinSourceError, match="larger than 4 KiB"):
        PinSource("file", str(big)).read()
    with pytest.raises(PinSourceError, match="a character device"):
        PinSource("file", "/dev/zero").read()


def test_a_credential_that_is_a_directory_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "hsm-pin").mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    with pytest.raises(PinSourceError, match="hsm-pin: a directory, expected a regular file"):
        PinSource("credential", "hsm-pin").read()


def test_a_rule_table_that_is_a_fifo_is_a_table_problem(fifo: Path, tmp_path: Path) -> None:
    table = tmp_path / "rules.yaml"
    table.symlink_to(fifo)
    got = within_deadline(lambda: load_tables([table]))
    assert isinstance(got, RuleTableError), got
    assert got.problems == [f"{table}: cannot read the rule table: a FIFO, expected a regular file"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "table: xbgw-rules\nname: \x01\n",
            "invalid YAML: control character U+0001 at offset 24",
            id="control-character",
        ),
        pytest.param(
            "rules: " + "[" * 5000 + "]" * 5000 + "\n",
            "invalid YAML: nested too deeply",
            id="deep",
        ),
    ],
)
def test_a_rule_table_that_is_not_yaml_is_a_table_problem(
    tmp_path: Path, text: str, expected: str
) -> None:
    table = tmp_path / "rules.yaml"
    table.write_text(text, encoding="utf-8")
    with pytest.raises(RuleTableError) as info:
        load_tables([table])
    assert info.value.problems == [f"{table}: {expected}"]


def test_the_tls_certificate_is_read_bounded_for_credentials(fifo: Path) -> None:
    class Tls:
        certificate = fifo

    class Config:
        path = Path("gateway.yaml")
        tls = Tls()

    got = within_deadline(lambda: tls._certificate_chain(Config()))  # type: ignore[arg-type]
    assert isinstance(got, ConfigError), got
    assert str(got) == f"gateway.yaml: tls.certificate: {fifo} is a FIFO, expected a regular file"
