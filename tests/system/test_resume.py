"""Resume against real daemons: breaks, crashes and replays lose nothing and duplicate nothing.

Two real gateways (SoftHSM, mutual TLS on loopback). Lingang's partner endpoint for
Frankfurt points at a :class:`~tests.system.faults.FaultProxy`, so a test can cut the partner
connection after a given number of bytes, or hold it mid-stream while a daemon is killed.
TLS still verifies end to end: the proxy only forwards bytes, and the sender checks the
certificate name against the partner id, not the address.

A transfer that may end at all must end with the plaintext fetched on Frankfurt
byte-identical to what was sent and listed once in the inbox; after a break, the second
``xbgw send`` with the same passport must continue from the receiver's durable resume point,
shown three ways: the ``resuming ...: partner holds N bytes`` line of the CLI, the
receiver's ledger, and the bytes the proxy forwarded for the second attempt.

What needs no process -- resume at every segment boundary, a break after the final segment,
changed or shrinking data, spent passports -- runs in process in
``tests/unit/test_loopback_resume.py``; what stays here needs real processes: a real TCP
reset under gRPC, SIGKILL of either daemon and of the local client.

Nothing here waits on time: faults fire on byte counts, and the tests wait (with deadlines)
on the ledger, the spool, and each daemon's ``xbgw_active_streams`` gauge -- an upload is
over when the gauge says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devtools.pair import edit_config, provision_pair
from gateway.envelope import TAG_LEN
from gateway.receiver.intake import SYNC_EVERY_SEGMENTS
from tests.system.faults import FaultProxy
from tests.system.harness import Gateway, Pair, wait_until

SEGMENT = 4096  # small segments: many of them, so faults land mid-stream
SIZE = 4 << 20  # 1024 segments
DEADLINE = 30.0
XBGW = [sys.executable, "-m", "gateway.cli"]
RESUMING = re.compile(r"resuming (\S+): partner holds (\d+) bytes")


# -- the rig ---------------------------------------------------------------------------------


@dataclass
class Rig:
    pair: Pair
    proxy: FaultProxy
    metrics: dict[str, str]  # gateway id -> URL of its Prometheus endpoint

    @property
    def lingang(self) -> Gateway:
        return self.pair.lingang

    @property
    def frankfurt(self) -> Gateway:
        return self.pair.frankfurt

    def logs(self) -> str:
        return (
            f"\n--- lingang log ---\n{self.lingang.log_text()[-4000:]}"
            f"\n--- frankfurt log ---\n{self.frankfurt.log_text()[-4000:]}"
        )


def _set_partner(config: Path, partner_id: str, **changes: str) -> None:
    edit_config(
        config, lambda d: next(p for p in d["partners"] if p["id"] == partner_id).update(changes)
    )


@pytest.fixture(scope="module")
def module_rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    # provision() writes max_message_bytes = 1 MiB for small segments; `xbgw send` writes
    # 1 MiB blocks plus framing to the local socket, which must not be bound by it.
    # Each gateway gets a Prometheus endpoint (metrics=True).
    pair = provision_pair(tmp_path_factory.mktemp("resume"), segment_size=SEGMENT, metrics=True)
    metrics = {gateway.id: gateway.metrics_url for gateway in pair.gateways}
    with FaultProxy(("127.0.0.1", pair.port("frankfurt"))) as proxy:
        _set_partner(pair.lingang.paths.config, "frankfurt", endpoint=proxy.endpoint)
        with pair.running():
            yield Rig(pair, proxy, metrics)


@pytest.fixture
def rig(module_rig: Rig) -> Iterator[Rig]:
    """The module's pair, both daemons running (a test that killed one may have failed)."""
    module_rig.proxy.release()
    for gateway in (module_rig.frankfurt, module_rig.lingang):
        if gateway.process is None or gateway.process.poll() is not None:
            gateway.start()
    yield module_rig
    module_rig.proxy.release()


# -- observing the gateways ------------------------------------------------------------------


@dataclass(frozen=True)
class InboundRow:
    state: str
    next_segment: int
    received_bytes: int
    final_received: bool
    header_len: int


def _ledger(gateway: Gateway) -> contextlib.closing[sqlite3.Connection]:
    """The gateway's ledger, read-only (never checkpoints or repairs the daemon's WAL)."""
    path = gateway.paths.state_dir / "ledger.sqlite3"
    return contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5))


def inbound(gateway: Gateway, transfer_id: str) -> InboundRow | None:
    with _ledger(gateway) as db:
        row = db.execute(
            "SELECT state, next_segment, received_bytes, final_received, length(stored_header) "
            "FROM inbound WHERE transfer_id = ?",
            (transfer_id,),
        ).fetchone()
    return None if row is None else InboundRow(row[0], row[1], row[2], bool(row[3]), row[4])


def encrypted_segments(gateway: Gateway, transfer_id: str) -> set[int]:
    """Indices of the segments the sender has encrypted (and recorded a guard for)."""
    with _ledger(gateway) as db:
        rows = db.execute(
            "SELECT idx FROM outbound_segments WHERE transfer_id = ?", (transfer_id,)
        ).fetchall()
    return {int(idx) for (idx,) in rows}


def partial_file(gateway: Gateway, transfer_id: str) -> Path:
    return gateway.paths.state_dir / "spool" / "incoming" / f"{transfer_id}.part"


def active_streams(rig: Rig, gateway: Gateway, direction: str) -> int | None:
    """The daemon's ``xbgw_active_streams{direction}`` gauge; None if it does not answer."""
    try:
        with urllib.request.urlopen(rig.metrics[gateway.id], timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    prefix = f'xbgw_active_streams{{direction="{direction}"}} '
    return next((int(float(line[len(prefix) :])) for line in text.splitlines()
                 if line.startswith(prefix)), 0)  # fmt: skip


def quiet(rig: Rig, *gateways: Gateway) -> None:
    """Wait until no upload is in flight: Lingang's send attempt and Frankfurt's stream ended."""
    wanted = [(g, "out" if g is rig.lingang else "in") for g in gateways]
    wait_until(
        lambda: all(active_streams(rig, g, d) == 0 for g, d in wanted),
        DEADLINE,
        "the upload to end (xbgw_active_streams back to 0)",
    )


def durable_mid_stream(rig: Rig, transfer_id: str) -> None:
    """Wait until Frankfurt has made a durable resume point, with the transfer unfinished."""
    found: list[InboundRow] = []

    def ready() -> bool:
        row = inbound(rig.frankfurt, transfer_id)
        found.extend([row] if row is not None else [])
        return row is not None and row.next_segment >= SYNC_EVERY_SEGMENTS

    wait_until(ready, DEADLINE, f"a durable resume point for {transfer_id} on frankfurt")
    assert not found[-1].final_received, "the transfer finished before the fault was injected"


def saved_point(rig: Rig, transfer_id: str, size: int = SIZE) -> InboundRow:
    """After a broken stream: Frankfurt holds, durably, exactly the whole segments it verified."""
    row = inbound(rig.frankfurt, transfer_id)
    assert row is not None and row.state == "receiving", row
    assert 0 < row.received_bytes < size and not row.final_received, row
    assert row.received_bytes == row.next_segment * SEGMENT, row
    spooled = partial_file(rig.frankfurt, transfer_id).stat().st_size
    assert spooled == row.header_len + row.next_segment * (SEGMENT + TAG_LEN), (spooled, row)
    return row


def inbox_count(rig: Rig, transfer_id: str) -> int:
    listed = rig.frankfurt.cli("inbox")
    assert listed.returncode == 0, listed.stderr
    return sum(1 for line in listed.stdout.splitlines() if line.split()[:1] == [transfer_id])


def assert_delivered(rig: Rig, transfer_id: str, digest: str, size: int, tmp_path: Path) -> None:
    """Listed once, committed with every byte, no partial left, fetched byte-identical."""
    assert inbox_count(rig, transfer_id) == 1
    row = inbound(rig.frankfurt, transfer_id)
    assert row is not None
    assert (row.state, row.received_bytes, row.final_received) == ("committed", size, True)
    assert not partial_file(rig.frankfurt, transfer_id).exists()
    target = tmp_path / f"{transfer_id}.fetched"
    fetched = rig.frankfurt.cli("fetch", transfer_id, "-o", str(target))
    assert fetched.returncode == 0, fetched.stderr
    assert hashlib.sha256(target.read_bytes()).hexdigest() == digest


def resumed_from(stderr: str, transfer_id: str) -> int | None:
    match = RESUMING.search(stderr)
    if match is None:
        return None
    assert match.group(1) == transfer_id
    return int(match.group(2))


def assert_resumed(
    rig: Rig,
    second: subprocess.CompletedProcess[str],
    transfer_id: str,
    held: int,
    sent: int,
    size: int = SIZE,
) -> None:
    """The second send continued from ``held`` bytes: the CLI and the wire agree.

    ``sent`` is the proxy's upstream counter just before the second send. Sending the rest
    costs at least ``size - held`` bytes (ciphertext is longer than plaintext); starting over
    would have cost more than ``size``.
    """
    assert second.returncode == 0, second.stderr + rig.logs()
    assert resumed_from(second.stderr, transfer_id) == held, second.stderr
    on_wire = rig.proxy.upstream_bytes - sent
    assert size - held <= on_wire < size - held // 2, (on_wire, held)


# -- driving the sender ----------------------------------------------------------------------


def dataset(path: Path, size: int = SIZE) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def new_transfer(rig: Rig, label: str) -> tuple[str, str]:
    """A fresh transfer id and a passport for it."""
    transfer_id = f"dpo_resume-{label}-{uuid.uuid4().hex[:12]}"
    return transfer_id, rig.pair.passport(byte_limit=4 * SIZE, jti=transfer_id)


def send(rig: Rig, source: Path, token: str, wait: int = 0) -> subprocess.CompletedProcess[str]:
    return rig.lingang.cli(
        "send",
        str(source),
        "--to",
        "frankfurt",
        "--passport",
        token,
        "--wait",
        str(wait),
        timeout=60 + wait,
    )


@contextlib.contextmanager
def sending(rig: Rig, source: Path, token: str) -> Iterator[subprocess.Popen[str]]:
    """``xbgw send`` in the background; waited for, or killed by its PID, on the way out."""
    process = subprocess.Popen(
        [*XBGW, "send", str(source), "--to", "frankfurt", "--passport", token, "--wait", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={
            **os.environ,
            "XBGW_SOCKET": str(rig.lingang.paths.socket),
            "GRPC_VERBOSITY": "ERROR",
        },
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.communicate(timeout=10)


def finished(process: subprocess.Popen[str]) -> tuple[int, str]:
    """Wait (with a deadline) for a background send to end: exit code and stderr."""
    _out, err = process.communicate(timeout=DEADLINE)
    return process.returncode, err


# -- breaks and crashes ----------------------------------------------------------------------


def test_reset_connection_resumes_from_the_partners_point(rig: Rig, tmp_path: Path) -> None:
    """The partner link is reset mid-upload; the same passport continues where Frankfurt stopped.

    The proxy stalls the upload, then resets both sides of the connection (TCP RST, as a
    firewall that drops its state does). The failed send must name the partner, not blame
    the local daemon. (test_resume_with_different_data_is_refused cuts with a clean close.)
    """
    source = tmp_path / "data.bin"
    digest = dataset(source)
    transfer_id, token = new_transfer(rig, "reset")

    rig.proxy.hold_after(SIZE // 4)
    with sending(rig, source, token) as cli:
        rig.proxy.wait_tripped(DEADLINE)
        durable_mid_stream(rig, transfer_id)
        rig.proxy.cut_all(reset=True)
        code, err = finished(cli)
    rig.proxy.release()
    assert code != 0, err
    assert "partner frankfurt is unreachable" in err, err
    quiet(rig, rig.lingang, rig.frankfurt)
    held = saved_point(rig, transfer_id).received_bytes
    assert inbox_count(rig, transfer_id) == 0

    sent = rig.proxy.upstream_bytes
    second = send(rig, source, token)
    assert_resumed(rig, second, transfer_id, held, sent)
    assert_delivered(rig, transfer_id, digest, SIZE, tmp_path)


def test_sender_daemon_killed_mid_stream_resumes_after_restart(rig: Rig, tmp_path: Path) -> None:
    """SIGKILL of the sending daemon mid-upload; after a restart the same passport continues."""
    source = tmp_path / "data.bin"
    digest = dataset(source)
    transfer_id, token = new_transfer(rig, "sender-kill")

    rig.proxy.hold_after(SIZE // 4)
    with sending(rig, source, token) as cli:
        rig.proxy.wait_tripped(DEADLINE)
        durable_mid_stream(rig, transfer_id)
        rig.lingang.kill()
        code, err = finished(cli)
    assert code != 0, err
    quiet(rig, rig.frankfurt)
    held = saved_point(rig, transfer_id).received_bytes  # every segment the stream brought

    rig.lingang.start()
    rig.proxy.release()
    sent = rig.proxy.upstream_bytes
    second = send(rig, source, token)
    assert_resumed(rig, second, transfer_id, held, sent)
    assert_delivered(rig, transfer_id, digest, SIZE, tmp_path)


def test_receiver_daemon_killed_mid_stream_resumes_from_its_last_sync(
    rig: Rig, tmp_path: Path
) -> None:
    """SIGKILL of the receiving daemon mid-upload; it resumes from its last durable sync.

    Killed, not broken: there is no save at the end of the stream, so the resume point is
    the last periodic sync, and whatever the spool file holds beyond it is cut off.
    """
    source = tmp_path / "data.bin"
    digest = dataset(source)
    transfer_id, token = new_transfer(rig, "receiver-kill")

    rig.proxy.hold_after(SIZE // 4)
    with sending(rig, source, token) as cli:
        rig.proxy.wait_tripped(DEADLINE)
        durable_mid_stream(rig, transfer_id)
        rig.frankfurt.kill()
        code, err = finished(cli)
    assert code != 0, err
    spooled = partial_file(rig.frankfurt, transfer_id).stat().st_size

    durable = inbound(rig.frankfurt, transfer_id)
    assert durable is not None and durable.state == "receiving", durable
    held = durable.received_bytes
    assert durable.next_segment % SYNC_EVERY_SEGMENTS == 0, durable
    assert 0 < held < SIZE and held == durable.next_segment * SEGMENT, durable
    assert spooled >= durable.header_len + durable.next_segment * (SEGMENT + TAG_LEN)

    rig.frankfurt.start()
    rig.proxy.release()
    sent = rig.proxy.upstream_bytes
    second = send(rig, source, token)
    assert_resumed(rig, second, transfer_id, held, sent)
    assert_delivered(rig, transfer_id, digest, SIZE, tmp_path)


def test_local_client_killed_mid_send_delivers_nothing_partial(rig: Rig, tmp_path: Path) -> None:
    """``xbgw send`` itself is killed mid-upload: nothing short is delivered; a resend continues.

    The sending daemon sees its local stream end without the rest of the file. It must not
    take that for the end of the data (that would commit a truncated file under a valid
    receipt); it must stop, leaving Frankfurt a resumable partial transfer.
    """
    source = tmp_path / "data.bin"
    digest = dataset(source)
    transfer_id, token = new_transfer(rig, "client-kill")

    rig.proxy.hold_after(SIZE // 4)
    with sending(rig, source, token) as cli:
        rig.proxy.wait_tripped(DEADLINE)
        durable_mid_stream(rig, transfer_id)
        cli.send_signal(signal.SIGKILL)
        cli.wait(DEADLINE)
    rig.proxy.release()  # let the daemon's attempt run to whatever end it comes to
    quiet(rig, rig.lingang, rig.frankfurt)

    row = inbound(rig.frankfurt, transfer_id)
    assert row is not None and row.state == "receiving", (
        f"the send whose client died ended {row} (of {SIZE} bytes)" + rig.logs()
    )
    assert inbox_count(rig, transfer_id) == 0
    held = saved_point(rig, transfer_id).received_bytes
    # The stream ended after everything that was encrypted for it: nothing in between lost.
    assert row.next_segment == len(encrypted_segments(rig.lingang, transfer_id))

    sent = rig.proxy.upstream_bytes
    second = send(rig, source, token)
    assert_resumed(rig, second, transfer_id, held, sent)
    assert_delivered(rig, transfer_id, digest, SIZE, tmp_path)


# -- refusals --------------------------------------------------------------------------------
