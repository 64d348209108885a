"""Issue 15 items 2 and 4 with real daemons: what ``xbgw`` prints to a person and to a
script -- a mistyped ``--passport``, a refusal without gRPC jargon (and with it under
``--verbose``), the socket found from ``-c`` before ``$XBGW_SOCKET`` and the error naming
every place tried, a reader that closes the pipe early, ``--json`` for send and fetch, plain
lines when stderr is not a terminal, and the live bar on a pseudo-terminal.

One running pair serves the module (lingang -> frankfurt, 64 KiB segments).
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.system.harness import Pair, running_pair

SIZE = 3_000_017  # 46 segments of 64 KiB and a short one
TIMEOUT = 120


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    with running_pair(tmp_path_factory.mktemp("pair")) as running:
        yield running


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "data.bin"
    path.write_bytes(os.urandom(SIZE))
    return path


def xbgw(
    pair: Pair, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        pair.lingang.cli_command(*args),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        env=env if env is not None else pair.lingang.cli_env(),
    )


def send_args(pair: Pair, data: Path, *more: str) -> list[str]:
    token = pair.passport(byte_limit=SIZE)
    return ["send", str(data), "--to", "frankfurt", "--passport", token, *more]


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


# --- messages ------------------------------------------------------------------------------------


def test_a_mistyped_passport_path_says_it_is_neither_file_nor_token(pair: Pair, data: Path) -> None:
    done = xbgw(pair, "send", str(data), "--to", "frankfurt", "--passport", "pasport.jwt")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        "xbgw: --passport pasport.jwt: no such file, and not a passport token "
        "(three dot-separated base64url parts)\n"
    )


def test_a_refusal_reads_plainly_and_verbose_adds_the_status(pair: Pair, tmp_path: Path) -> None:
    out = str(tmp_path / "out.bin")
    plain = xbgw(pair, "fetch", "lingang_nothing", "-o", out)
    assert plain.returncode == 1
    assert plain.stderr == "xbgw: no committed transfer 'lingang_nothing' in the inbox\n"
    verbose = xbgw(pair, "--verbose", "fetch", "lingang_nothing", "-o", out)
    assert verbose.returncode == 1
    assert verbose.stderr.splitlines() == [
        "xbgw: no committed transfer 'lingang_nothing' in the inbox [NOT_FOUND]",
        "xbgw:   gRPC status NOT_FOUND: no committed transfer 'lingang_nothing' in the inbox",
    ]


def test_the_socket_comes_from_c_before_xbgw_socket(pair: Pair, tmp_path: Path) -> None:
    elsewhere = str(tmp_path / "elsewhere.sock")
    env = {**pair.lingang.cli_env(), "XBGW_SOCKET": elsewhere}
    from_config = xbgw(pair, "status", "-c", str(pair.lingang.paths.config), env=env)
    assert from_config.returncode == 0, from_config.stderr
    assert from_config.stdout.startswith("gateway   lingang ")
    from_variable = xbgw(pair, "status", env=env)
    assert from_variable.returncode == 1
    assert from_variable.stderr == (
        f"xbgw: no gateway socket at {elsewhere} (from $XBGW_SOCKET): is the daemon running? "
        "(systemctl status xbgw, or check the path)\n"
    )


def test_with_nothing_named_the_error_lists_what_was_tried(pair: Pair) -> None:
    env = {k: v for k, v in pair.lingang.cli_env().items() if k != "XBGW_SOCKET"}
    done = xbgw(pair, "inbox", env=env)
    assert done.returncode == 1
    assert re.fullmatch(
        r"xbgw: no gateway socket: tried -c \(not given\), \$XBGW_SOCKET \(unset\), "
        r"/etc/xbgw/gateway\.yaml \(.+\), /run/xbgw/local\.sock \(no such file\): is the "
        r"daemon running\? \(systemctl status xbgw\) for another gateway, give -c CONFIG or "
        r"set XBGW_SOCKET\n",
        done.stderr,
    ), done.stderr


@pytest.mark.parametrize(
    ("verb", "code"),
    [(["status"], 141), (["inbox"], 141), (["status", "--json"], 141), (["--help"], 0)],
)
def test_a_reader_that_went_away_ends_the_command_quietly(
    pair: Pair, verb: list[str], code: int
) -> None:
    """``xbgw status | head -1``, made certain: the pipe's read end is closed before xbgw
    writes, so its first write meets EPIPE. Exit 141 as a shell reports a writer killed by
    SIGPIPE; ``--help`` exits 0, as argparse ignores a failed write of the help text."""
    read, write = os.pipe()
    os.close(read)
    try:
        process = subprocess.run(
            pair.lingang.cli_command(*verb),
            stdout=write,
            stderr=subprocess.PIPE,
            timeout=TIMEOUT,
            check=False,
            env=pair.lingang.cli_env(),
        )
    finally:
        os.close(write)
    assert (process.returncode, process.stderr) == (code, b"")


# --- progress ------------------------------------------------------------------------------------


def test_json_send_and_fetch_are_one_object_per_line(
    pair: Pair, data: Path, tmp_path: Path
) -> None:
    sent = xbgw(pair, *send_args(pair, data, "--json"))
    assert (sent.returncode, sent.stderr) == (0, "")
    events = json_lines(sent.stdout)
    accepted, *progress, delivered = events
    assert accepted["event"] == "accepted" and accepted["resume_from"] == 0
    assert progress and all(p["event"] == "progress" for p in progress)
    assert progress[-1] == {"event": "progress", "bytes_done": SIZE, "bytes_total": SIZE}
    assert delivered["event"] == "delivered"
    assert delivered["transfer_id"] == accepted["transfer_id"]
    assert (delivered["partner"], delivered["size"]) == ("frankfurt", SIZE)
    assert set(delivered) == {
        "event",
        "transfer_id",
        "partner",
        "size",
        "sha256",
        "signed_by",
        "committed_at",
    }

    target = tmp_path / "out.bin"
    fetched = subprocess.run(
        pair.frankfurt.cli_command("fetch", delivered["transfer_id"], "-o", str(target), "--json"),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        env=pair.frankfurt.cli_env(),
    )
    assert (fetched.returncode, fetched.stderr) == (0, "")
    *_, last = json_lines(fetched.stdout)
    assert last == {
        "event": "fetched",
        "transfer_id": delivered["transfer_id"],
        "size": SIZE,
        "path": str(target),
    }
    assert target.read_bytes() == data.read_bytes()

    refused = xbgw(pair, "--verbose", *send_args(pair, data, "--json", "--to", "paris"))
    assert refused.returncode == 1
    error = json_lines(refused.stdout)[-1]
    assert error["event"] == "error" and "paris" in error["message"]
    assert error["status"] in refused.stderr  # the same status, in --verbose's line


def test_plain_lines_when_stderr_is_not_a_terminal(pair: Pair, data: Path) -> None:
    done = xbgw(pair, *send_args(pair, data))
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and "\x1b" not in done.stderr
    assert re.fullmatch(r"sent 3\.0 MB in \d+\.\ds, [\d.]+ [kMG]?B/s\n", done.stderr), done.stderr
    assert done.stdout.startswith("delivered  ")
    quiet = xbgw(pair, *send_args(pair, data, "--quiet"))
    assert (quiet.returncode, quiet.stderr) == (0, "")
    assert quiet.stdout.startswith("delivered  ")


def test_a_terminal_gets_a_live_bar_with_the_rate(pair: Pair, data: Path) -> None:
    """stderr is a pseudo-terminal: the bar is redrawn in place (carriage returns), with
    the bytes, 100% at the end and a rate; stdout (a pipe) has the result."""
    master, slave = os.openpty()
    process = subprocess.Popen(
        pair.lingang.cli_command(*send_args(pair, data)),
        stdout=subprocess.PIPE,
        stderr=slave,
        env=pair.lingang.cli_env(),
    )
    os.close(slave)
    screen = b""
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not chunk:
                break
            screen += chunk
        out = process.stdout.read() if process.stdout is not None else b""
        assert process.wait(timeout=TIMEOUT) == 0, screen
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
    text = screen.decode("utf-8", errors="replace")
    assert text.count("\r") >= 2, text  # drawn, then redrawn in place
    final = text.replace("\r\n", "\n").split("\r")[-1]
    assert "100%" in final and "3.00M/3.00M" in final, final
    assert re.search(r"\d+(\.\d+)?[kMG]?B/s", final), final
    assert out.decode().startswith("delivered  ")
