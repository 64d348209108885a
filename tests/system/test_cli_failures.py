"""The daemon verbs fail with one clear line and a non-zero exit: no daemon, no partner."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.harness import Pair, running_pair


def _xbgw(*args: str, sock: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "XBGW_SOCKET": str(sock), "GRPC_VERBOSITY": "ERROR"},
    )


def _one_line_failure(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("verb", [["status"], ["inbox"], ["fetch", "t-1", "-o", "out.bin"]])
def test_no_socket_says_the_daemon_is_not_running(tmp_path: Path, verb: list[str]) -> None:
    done = _xbgw(*verb, sock=tmp_path / "missing.sock")
    _one_line_failure(done, "no gateway socket at", "is the daemon running?")


def test_a_stale_socket_says_the_daemon_does_not_answer(tmp_path: Path) -> None:
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(stale))  # bound, never listening: connections are refused
    done = _xbgw("status", sock=stale)
    _one_line_failure(done, "does not answer", "is it running?")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    with running_pair(tmp_path_factory.mktemp("pair")) as running:
        yield running


def test_send_to_a_partner_that_is_down_names_the_partner(pair: Pair, tmp_path: Path) -> None:
    source = tmp_path / "data.bin"
    source.write_bytes(os.urandom(10_000))
    token = pair.passport(byte_limit=10_000)
    assert pair.frankfurt.stop() == 0
    try:
        done = pair.lingang.cli(
            "send", str(source), "--to", "frankfurt", "--passport", token, "-q", "--wait", "0"
        )
    finally:
        pair.frankfurt.start()
    _one_line_failure(done, "partner frankfurt is unreachable")


def test_send_to_an_unknown_partner_names_the_configured_ones(pair: Pair, tmp_path: Path) -> None:
    source = tmp_path / "data.bin"
    source.write_bytes(b"x" * 100)
    done = pair.lingang.cli(
        "send", str(source), "--to", "paris", "--passport", pair.passport(byte_limit=100), "-q"
    )
    _one_line_failure(done, "no partner 'paris'", "frankfurt")


def test_fetch_of_an_unknown_transfer_writes_nothing(pair: Pair, tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    done = pair.frankfurt.cli("fetch", "no-such-transfer", "-o", str(target))
    _one_line_failure(done, "no committed transfer 'no-such-transfer'")
    assert list(tmp_path.iterdir()) == []  # neither the file nor its partial


def test_send_with_a_tampered_passport_is_refused_by_the_sender(pair: Pair, tmp_path: Path) -> None:
    source = tmp_path / "data.bin"
    source.write_bytes(b"y" * 100)
    header, payload, signature = pair.passport(byte_limit=100).split(".")
    forged = ".".join(
        [header, payload, signature[:-2] + ("AA" if signature[-2:] != "AA" else "BA")]
    )
    done = pair.lingang.cli("send", str(source), "--to", "frankfurt", "--passport", forged, "-q")
    _one_line_failure(done, "passport signature does not verify")
    assert "signature" in done.stderr


def test_data_larger_than_the_passport_allows_is_refused_before_the_offer(
    pair: Pair, tmp_path: Path
) -> None:
    source = tmp_path / "data.bin"
    source.write_bytes(b"z" * 2_000)
    token = pair.passport(byte_limit=1_000)
    done = pair.lingang.cli("send", str(source), "--to", "frankfurt", "--passport", token, "-q")
    _one_line_failure(done, "the data is 2000 bytes", "allows 1000")
    # Nothing reached the partner, so the passport is not spent: a right-sized send works.
    source.write_bytes(b"z" * 1_000)
    again = pair.lingang.cli("send", str(source), "--to", "frankfurt", "--passport", token, "-q")
    assert again.returncode == 0, again.stderr


def test_an_empty_file_is_a_transfer_too(pair: Pair, tmp_path: Path) -> None:
    source = tmp_path / "empty.bin"
    source.write_bytes(b"")
    done = pair.lingang.cli(
        "send", str(source), "--to", "frankfurt", "--passport", pair.passport(byte_limit=1), "-q"
    )
    assert done.returncode == 0, done.stderr
    empty_sha256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert empty_sha256 in done.stdout
    transfer_id = done.stdout.split()[1]
    target = tmp_path / "fetched.bin"
    fetched = pair.frankfurt.cli("fetch", transfer_id, "-o", str(target))
    assert fetched.returncode == 0, fetched.stderr
    assert target.read_bytes() == b""


def test_two_sends_of_one_passport_at_once_deliver_once(pair: Pair, tmp_path: Path) -> None:
    source = tmp_path / "data.bin"
    source.write_bytes(os.urandom(16 << 20))
    token = pair.passport(byte_limit=16 << 20)
    sends = [
        pair.lingang.cli_background(
            "send", str(source), "--to", "frankfurt", "--passport", token, "-q"
        )
        for _ in range(2)
    ]
    try:
        results = [(send.wait(timeout=120), *send.communicate()) for send in sends]
    finally:
        for send in sends:
            if send.poll() is None:
                send.kill()
                send.wait()
    codes = sorted(code for code, _out, _err in results)
    assert codes == [0, 1], results
    failed = next(err for code, _out, err in results if code == 1)
    assert "already being sent" in failed or "already delivered" in failed, failed
    assert "Traceback" not in failed and "INTERNAL" not in failed
    inbox = pair.frankfurt.cli("inbox").stdout
    delivered = next(out for code, out, _err in results if code == 0).split()[1]
    assert inbox.count(delivered) == 1


def test_unreadable_source_and_target_are_one_line(pair: Pair, tmp_path: Path) -> None:
    token = pair.passport(byte_limit=100)
    missing = pair.lingang.cli(
        "send", str(tmp_path / "nope.bin"), "--to", "frankfurt", "--passport", token)  # fmt: skip
    assert missing.returncode == 2, missing
    assert missing.stderr.strip().splitlines() == [
        f"xbgw: cannot read {tmp_path / 'nope.bin'}: No such file or directory"
    ]
    target = tmp_path / "no-such-dir" / "out.bin"
    fetch = pair.frankfurt.cli("fetch", "anything", "-o", str(target))
    _one_line_failure(fetch, "No such file or directory")


def test_a_passport_file_that_is_not_text_and_a_directory_target(
    pair: Pair, tmp_path: Path
) -> None:
    source = tmp_path / "data.bin"
    source.write_bytes(b"x")
    binary = tmp_path / "passport.bin"
    binary.write_bytes(b"\xff\xfe\x00not a token")
    done = pair.lingang.cli(
        "send", str(source), "--to", "frankfurt", "--passport", str(binary))  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr, done
    assert "cannot read a passport" in done.stderr
    fetch = pair.frankfurt.cli("fetch", "t", "-o", str(tmp_path))
    assert fetch.returncode == 2 and "is a directory" in fetch.stderr, fetch
