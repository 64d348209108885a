"""Issue 15 item 2: the messages a person reads first -- what happened and what to do, the
gRPC status only with ``--verbose``; a ``--passport`` that is neither a file nor a token; how
the daemon's socket is found, and the error naming every place tried; and item 4's progress
output for scripts and logs (the cadence of plain lines, the ``--json`` objects)."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import grpc
import pytest

from gateway import DEFAULT_SOCKET
from gateway.cli import EXIT_FAILURE, EXIT_USAGE, local_socket, main
from gateway.cli.common import error_line, read_token
from gateway.cli.local_socket import find_socket, rpc_error
from gateway.cli.progress import Progress, mode_for, size_text
from gateway.errors import DaemonUnavailableError, PartnerError, UsageError

TOKEN = "eyJhbGciOiJFUzI1NiJ9.eyJqdGkiOiJ0In0.c2lnbmF0dXJl"
NOT_A_TOKEN = "(three dot-separated base64url parts)"


class _Failed(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


# --- --passport ------------------------------------------------------------------------------


def test_a_mistyped_passport_path_is_named_as_neither_file_nor_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A relative name: the message shortens a value over 80 characters, and the temporary
    # directory's length is pytest's to choose.
    monkeypatch.chdir(tmp_path)
    missing = "pasport.jwt"
    with pytest.raises(UsageError) as raised:
        read_token(missing, "--passport")
    assert (
        str(raised.value)
        == f"--passport {missing}: no such file, and not a passport token {NOT_A_TOKEN}"
    )


def test_a_token_and_a_file_holding_one_are_both_taken(tmp_path: Path) -> None:
    assert read_token(f" {TOKEN}\n", "--passport") == TOKEN
    held = tmp_path / "a.b.c"  # a file wins even when its name is token-shaped
    held.write_text("d.e.f\n", encoding="ascii")
    assert read_token(str(held), "--passport") == "d.e.f"


def test_a_directory_is_not_taken_for_a_passport(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"not a regular file; name the file holding the token"):
        read_token(str(tmp_path), "--passport")


def test_xbgw_send_says_so_before_it_looks_for_a_daemon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data.bin"
    data.write_bytes(b"x")
    code = main(["send", str(data), "--to", "frankfurt", "--passport", "passport.jwt"])
    assert code == EXIT_USAGE
    assert capsys.readouterr().err == (
        f"xbgw: --passport passport.jwt: no such file, and not a passport token {NOT_A_TOKEN}\n"
    )


# --- the status only with --verbose -------------------------------------------------------------


def test_a_daemon_refusal_reads_without_jargon_and_keeps_its_status() -> None:
    details = "the data is 2048 bytes; passport lingang_t allows 1024"
    error = rpc_error(_Failed(grpc.StatusCode.RESOURCE_EXHAUSTED, details), DEFAULT_SOCKET)
    assert isinstance(error, PartnerError)
    assert str(error) == details
    assert error_line(error, verbose=False) == f"xbgw: {details}"
    assert error_line(error, verbose=True) == (
        f"xbgw: {details} [RESOURCE_EXHAUSTED]\nxbgw:   gRPC status RESOURCE_EXHAUSTED: {details}"
    )


@pytest.mark.parametrize(
    ("code", "details", "says"),
    [
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", "did not answer in time"),
        (grpc.StatusCode.UNIMPLEMENTED, "Method not found!", "runs an older xbgw"),
    ],
)
def test_grpcs_own_statuses_become_what_to_do(
    code: grpc.StatusCode, details: str, says: str
) -> None:
    error = rpc_error(_Failed(code, details), DEFAULT_SOCKET)
    assert says in str(error) and details not in str(error) and code.name not in str(error)
    assert error.grpc_status == code.name
    assert error_line(error, verbose=True).endswith(f"gRPC status {code.name}: {details}")


def test_a_daemon_deadline_message_passes_through() -> None:
    details = "partner frankfurt did not answer the offer within 30s"
    error = rpc_error(_Failed(grpc.StatusCode.DEADLINE_EXCEEDED, details), DEFAULT_SOCKET)
    assert str(error) == details


def test_main_adds_the_status_only_with_verbose(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.sock"
    plain = f"xbgw: no gateway socket at {missing} (from --socket): is the daemon running?"
    assert main(["status", "--socket", str(missing)]) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert err.startswith(plain) and "[" not in err, err
    assert main(["--verbose", "status", "--socket", str(missing)]) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert err.startswith(plain) and err.endswith(" [UNAVAILABLE]\n"), err


# --- finding the socket -------------------------------------------------------------------------


def _args(**given: str) -> argparse.Namespace:
    return argparse.Namespace(socket=given.get("socket"), config=given.get("config"))


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the test puts the installed config (absent until a test writes it)."""
    path = tmp_path / "etc" / "gateway.yaml"
    monkeypatch.setattr(local_socket, "DEFAULT_CONFIG", str(path))
    monkeypatch.delenv("XBGW_SOCKET", raising=False)
    return path


def test_nothing_found_lists_every_place_tried_in_order(installed: Path) -> None:
    choice = find_socket(_args())
    assert (choice.path, choice.source) == (DEFAULT_SOCKET, None)
    with pytest.raises(DaemonUnavailableError) as raised:
        local_socket.stub(_args())
    assert str(raised.value) == (
        f"no gateway socket: tried -c (not given), $XBGW_SOCKET (unset), {installed} (absent), "
        f"{DEFAULT_SOCKET} (no such file): is the daemon running? (systemctl status xbgw) "
        "for another gateway, give -c CONFIG or set XBGW_SOCKET"
    )


def test_the_installed_configs_socket_is_used_relative_to_it(installed: Path) -> None:
    installed.parent.mkdir()
    installed.write_text("listen:\n  local_socket: run/local.sock\n", encoding="utf-8")
    (installed.parent / "run").mkdir()
    (installed.parent / "run" / "local.sock").touch()
    assert find_socket(_args()).path == str(installed.parent / "run" / "local.sock")


def test_an_installed_config_without_its_socket_falls_through_to_the_default(
    installed: Path,
) -> None:
    installed.parent.mkdir()
    installed.write_text("listen:\n  local_socket: /nowhere/local.sock\n", encoding="utf-8")
    choice = find_socket(_args())
    assert choice.path == DEFAULT_SOCKET
    assert choice.tried[2] == f"{installed}: /nowhere/local.sock (no such file)"
    installed.write_text("listen: [\n", encoding="utf-8")
    assert f"{installed} (not valid YAML: xbgw check -c {installed})" in find_socket(_args()).tried


def test_xbgw_socket_beats_the_installed_config_and_the_flag_beats_both(
    installed: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    installed.parent.mkdir()
    installed.write_text("listen:\n  local_socket: /x/local.sock\n", encoding="utf-8")
    monkeypatch.setenv("XBGW_SOCKET", str(tmp_path / "env.sock"))
    choice = find_socket(_args())
    assert (choice.path, choice.source) == (str(tmp_path / "env.sock"), "$XBGW_SOCKET")
    with pytest.raises(DaemonUnavailableError, match=r"\(from \$XBGW_SOCKET\): is the daemon"):
        local_socket.stub(_args())
    assert find_socket(_args(socket="/flag.sock")).path == "/flag.sock"


def test_the_choice_is_kept_so_the_error_after_a_call_names_the_same_path(
    installed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = _args()
    monkeypatch.setenv("XBGW_SOCKET", "/first.sock")
    assert local_socket.socket_path(args) == "/first.sock"
    monkeypatch.setenv("XBGW_SOCKET", "/second.sock")
    assert local_socket.socket_path(args) == "/first.sock"


# --- progress for logs and scripts ----------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_come_every_10_percent_or_10_seconds_whichever_is_later() -> None:
    err, out, clock = io.StringIO(), io.StringIO(), _Clock()
    progress = Progress("lines", "sent", 1000, out=out, err=err, clock=clock)
    progress.accepted("lingang_t", 0)
    for step in range(1, 101):  # 1% a second: a line each 10 s (10% each time)
        clock.now += 1
        progress.update(step * 10)
    lines = err.getvalue().splitlines()
    assert len(lines) == 10, lines
    assert lines[0] == "sent 10%: 100 B of 1.0 kB, 10 B/s, 90s left"
    err.truncate(0), err.seek(0)

    fast = Progress("lines", "sent", 1000, out=out, err=err, clock=clock)
    fast.accepted("lingang_u", 400)  # resumed: the partner held 400 bytes
    for step in range(1, 61):  # 60% in 6 s: no line before 10 s have passed
        clock.now += 0.1
        fast.update(400 + step * 10)
    assert err.getvalue() == "resuming lingang_u: partner holds 400 bytes\n"
    fast.finish("delivered", {}, ["delivered  lingang_u"], size=1000)
    assert err.getvalue().splitlines()[-1] == "sent 600 B in 6.0s, 100 B/s, resumed from 400 B"
    assert "\r" not in err.getvalue() and "\x1b" not in err.getvalue()
    assert out.getvalue().endswith("delivered  lingang_u\n")


def test_quiet_prints_only_the_result() -> None:
    err, out = io.StringIO(), io.StringIO()
    with Progress("quiet", "sent", 10, out=out, err=err) as progress:
        progress.note("queued", {"position": 1, "running": 4}, "queued: position 1")
        progress.accepted("t", 5)
        progress.update(10)
        progress.finish("delivered", {}, ["delivered  t"], size=10)
    assert (err.getvalue(), out.getvalue()) == ("", "delivered  t\n")


def test_json_is_one_object_per_event_then_the_result_or_the_error() -> None:
    out, err, clock = io.StringIO(), io.StringIO(), _Clock()
    with Progress("json", "sent", 100, out=out, err=err, clock=clock) as progress:
        progress.note("queued", {"position": 2, "running": 4}, "queued: ...")
        progress.accepted("t", 0)
        progress.update(10)
        progress.update(20)  # within the second: not shown
        clock.now += 1
        progress.update(50)
        progress.finish("delivered", {"transfer_id": "t", "size": 100}, ["not shown"], 100)
    objects = [json.loads(line) for line in out.getvalue().splitlines()]
    assert objects == [
        {"event": "queued", "position": 2, "running": 4},
        {"event": "accepted", "transfer_id": "t", "resume_from": 0},
        {"event": "progress", "bytes_done": 10, "bytes_total": 100},
        {"event": "progress", "bytes_done": 50, "bytes_total": 100},
        {"event": "progress", "bytes_done": 100, "bytes_total": 100},
        {"event": "delivered", "transfer_id": "t", "size": 100},
    ]
    assert err.getvalue() == ""

    out = io.StringIO()
    with pytest.raises(PartnerError), Progress("json", "fetched", None, out=out) as failing:
        failing.update(7)
        raise PartnerError("no committed transfer 't' in the inbox", "NOT_FOUND")
    assert [json.loads(line) for line in out.getvalue().splitlines()][-1] == {
        "event": "error",
        "message": "no committed transfer 't' in the inbox",
        "status": "NOT_FOUND",
    }


def test_the_mode_follows_the_flags_then_the_terminal() -> None:
    pipe = io.StringIO()
    assert mode_for(quiet=False, as_json=False, err=pipe) == "lines"
    assert mode_for(quiet=True, as_json=False, err=pipe) == "quiet"
    assert mode_for(quiet=False, as_json=True, err=pipe) == "json"
    assert [size_text(n) for n in (999, 1000, 1_234_567, 5 * 10**12)] == [
        "999 B",
        "1.0 kB",
        "1.2 MB",
        "5.0 TB",
    ]
