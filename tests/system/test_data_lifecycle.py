"""The data lifecycle against real daemons: cancel on either side, expiry, inbox ack, delete,
retention and paging -- SoftHSM tokens, mutual TLS on loopback, the CLI as an operator runs it.

Lingang's endpoint for Frankfurt is a :class:`~tests.system.faults.FaultProxy`, so a transfer
can be left unfinished on purpose: the proxy holds the upload mid-stream (the send is running
there), then cuts it (the send has failed, Frankfurt holds a partial file). Both gateways
sweep every second with no grace after a passport's exp, and remove an inbox item's data a
second after it is acknowledged. Nothing waits on time but the expiry and retention tests,
and those wait on the ledger with a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from devtools.pair import edit_config, provision_pair
from gateway._proto.xbgw.v1 import local_pb2, local_pb2_grpc
from gateway.receiver.intake import SYNC_EVERY_SEGMENTS
from tests.system.faults import FaultProxy
from tests.system.harness import Gateway, Pair, wait_until

SEGMENT = 4096
SIZE = 2 << 20  # 512 segments
DEADLINE = 30.0
XBGW = [sys.executable, "-m", "gateway.cli"]


@dataclass
class Rig:
    pair: Pair
    proxy: FaultProxy

    @property
    def lingang(self) -> Gateway:
        return self.pair.lingang

    @property
    def frankfurt(self) -> Gateway:
        return self.pair.frankfurt

    def logs(self) -> str:
        return (
            f"\n--- lingang log ---\n{self.lingang.log_text()[-3000:]}"
            f"\n--- frankfurt log ---\n{self.frankfurt.log_text()[-3000:]}"
        )


def _lifecycle_settings(_gateway_id: str, data: dict[str, Any]) -> None:
    data["retention"] = {"unfinished_grace": 0, "sweep_every": 1, "acknowledged": 1}


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    pair = provision_pair(
        tmp_path_factory.mktemp("lifecycle"), segment_size=SEGMENT, configure=_lifecycle_settings
    )
    with FaultProxy(("127.0.0.1", pair.port("frankfurt"))) as proxy:

        def via_proxy(data: dict[str, Any]) -> None:
            next(p for p in data["partners"] if p["id"] == "frankfurt")["endpoint"] = proxy.endpoint

        edit_config(pair.lingang.paths.config, via_proxy)
        with pair.running():
            yield Rig(pair, proxy)


@pytest.fixture(autouse=True)
def _released(rig: Rig) -> Iterator[None]:
    rig.proxy.release()
    yield
    rig.proxy.release()


# -- observing ---------------------------------------------------------------------------------


def _ledger(gateway: Gateway) -> contextlib.closing[sqlite3.Connection]:
    path = gateway.paths.state_dir / "ledger.sqlite3"
    return contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5))


def state(gateway: Gateway, table: str, transfer_id: str) -> tuple[str, int] | None:
    """(state, length of the stored header) of a transfer's row."""
    with _ledger(gateway) as db:
        row = db.execute(
            f"SELECT state, length(stored_header) FROM {table} WHERE transfer_id = ?",
            (transfer_id,),
        ).fetchone()
    return None if row is None else (str(row[0]), int(row[1]))


def next_segment(gateway: Gateway, transfer_id: str) -> int:
    with _ledger(gateway) as db:
        row = db.execute(
            "SELECT next_segment FROM inbound WHERE transfer_id = ?", (transfer_id,)
        ).fetchone()
    return -1 if row is None else int(row[0])


def records(gateway: Gateway, transfer_id: str) -> list[dict[str, Any]]:
    with _ledger(gateway) as db:
        rows = db.execute("SELECT record FROM audit_records ORDER BY idx").fetchall()
    found = [json.loads(bytes(row[0])) for row in rows]
    return [r for r in found if r.get("transfer_id") == transfer_id]


def partial_file(gateway: Gateway, transfer_id: str) -> Path:
    return gateway.paths.state_dir / "spool" / "incoming" / f"{transfer_id}.part"


def committed_file(gateway: Gateway, transfer_id: str) -> Path:
    return gateway.paths.state_dir / "spool" / "inbox" / f"{transfer_id}.xbgw"


# -- driving ---------------------------------------------------------------------------------


def new_transfer(rig: Rig, label: str, ttl: str = "1h") -> tuple[str, str]:
    transfer_id = f"dpo_life-{label}-{uuid.uuid4().hex[:10]}"
    token = rig.pair.passport(byte_limit=4 * SIZE, jti=transfer_id, extra=["--ttl", ttl])
    return transfer_id, token


def send_args(source: Path, token: str) -> list[str]:
    return ["send", str(source), "--to", "frankfurt", "--passport", token, "--wait", "0", "-q"]


@contextlib.contextmanager
def sending(rig: Rig, source: Path, token: str) -> Iterator[subprocess.Popen[str]]:
    """``xbgw send`` in the background; killed by its PID on the way out if still running."""
    process = rig.lingang.cli_background(*send_args(source, token))
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.communicate(timeout=10)


def held_mid_stream(rig: Rig, transfer_id: str, cli: subprocess.Popen[str]) -> None:
    """The upload stands still mid-stream with a durable point on Frankfurt; the send runs."""
    rig.proxy.wait_tripped(DEADLINE)
    wait_until(
        lambda: next_segment(rig.frankfurt, transfer_id) >= SYNC_EVERY_SEGMENTS,
        DEADLINE,
        f"a durable resume point for {transfer_id} on frankfurt",
    )
    assert cli.poll() is None, "the send ended before the fault"


def broken_off(rig: Rig, transfer_id: str, cli: subprocess.Popen[str]) -> None:
    """Cut the held upload: the send fails, Frankfurt keeps a partial file."""
    rig.proxy.cut_all(reset=True)
    _out, err = cli.communicate(timeout=DEADLINE)
    rig.proxy.release()
    assert cli.returncode != 0, err
    assert partial_file(rig.frankfurt, transfer_id).exists()


def unfinished(rig: Rig, label: str, tmp_path: Path, ttl: str = "1h") -> tuple[str, str, Path]:
    """A send left unfinished on both sides, with a partial file at Frankfurt."""
    source = tmp_path / f"{label}.bin"
    source.write_bytes(os.urandom(SIZE))
    transfer_id, token = new_transfer(rig, label, ttl)
    rig.proxy.hold_after(SIZE // 2)
    with sending(rig, source, token) as cli:
        held_mid_stream(rig, transfer_id, cli)
        broken_off(rig, transfer_id, cli)
    return transfer_id, token, source


# -- cancel ------------------------------------------------------------------------------------


def test_cancel_on_the_sending_side_mid_transfer(rig: Rig, tmp_path: Path) -> None:
    """While the send runs, a cancel is refused as busy; once it has failed, the cancel ends
    the transfer on both sides: the partner is told, its partial file goes, both audit it,
    and the same passport cannot be sent again."""
    source = tmp_path / "data.bin"
    source.write_bytes(os.urandom(SIZE))
    transfer_id, token = new_transfer(rig, "out")
    rig.proxy.hold_after(SIZE // 2)
    with sending(rig, source, token) as cli:
        held_mid_stream(rig, transfer_id, cli)
        busy = rig.lingang.cli("-v", "cancel", transfer_id, "--reason", "wrong data set")
        assert busy.returncode == 1, busy.stdout + busy.stderr
        assert "being sent right now" in busy.stderr and "[ABORTED]" in busy.stderr, busy.stderr
        broken_off(rig, transfer_id, cli)

    done = rig.lingang.cli("cancel", transfer_id, "--reason", "wrong data set")
    assert done.returncode == 0, done.stderr + rig.logs()
    assert done.stdout.startswith(f"cancelled  {transfer_id} (out)"), done.stdout
    assert "partner  told" in done.stdout, done.stdout
    assert state(rig.lingang, "outbound", transfer_id) == ("cancelled", 0)
    assert state(rig.frankfurt, "inbound", transfer_id) == ("cancelled", 0)
    assert not partial_file(rig.frankfurt, transfer_id).exists()
    for gateway, direction in ((rig.lingang, "out"), (rig.frankfurt, "in")):
        [record] = [r for r in records(gateway, transfer_id) if r["kind"] == "transfer.cancelled"]
        assert (record["direction"], record["by"]) == (direction, "lingang"), record

    again = rig.lingang.cli(*send_args(source, token), timeout=60)
    assert again.returncode != 0
    assert "cancelled by lingang" in again.stderr, again.stderr


def test_cancel_on_the_receiving_side_refuses_the_senders_resume(rig: Rig, tmp_path: Path) -> None:
    transfer_id, token, source = unfinished(rig, "in", tmp_path)
    done = rig.frankfurt.cli("cancel", transfer_id, "--reason", "not expected")
    assert done.returncode == 0, done.stderr + rig.logs()
    assert done.stdout.startswith(f"cancelled  {transfer_id} (in)"), done.stdout
    assert state(rig.frankfurt, "inbound", transfer_id) == ("cancelled", 0)
    assert not partial_file(rig.frankfurt, transfer_id).exists()

    resumed = rig.lingang.cli("-v", *send_args(source, token), timeout=60)
    assert resumed.returncode != 0
    assert "cancelled by frankfurt at" in resumed.stderr, resumed.stderr
    assert "(not expected)" in resumed.stderr and "FAILED_PRECONDITION" in resumed.stderr


def test_a_committed_transfer_cannot_be_cancelled(rig: Rig, tmp_path: Path) -> None:
    source = tmp_path / "small.bin"
    source.write_bytes(os.urandom(10_000))
    transfer_id, token = new_transfer(rig, "committed")
    sent = rig.lingang.cli(*send_args(source, token), timeout=60)
    assert sent.returncode == 0, sent.stderr
    refused = rig.frankfurt.cli("-v", "cancel", transfer_id)
    assert refused.returncode == 1
    assert "cannot be cancelled" in refused.stderr and "xbgw inbox delete" in refused.stderr
    assert "FAILED_PRECONDITION" in refused.stderr
    unknown = rig.frankfurt.cli("-v", "cancel", "no-such-transfer")
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr, unknown.stderr


# -- expiry ------------------------------------------------------------------------------------


def test_an_unfinished_transfer_expires_after_its_passport(rig: Rig, tmp_path: Path) -> None:
    transfer_id, _token, _source = unfinished(rig, "exp", tmp_path, ttl="4s")
    # The sweep records the end, then removes the file (a crash between the two leaves the
    # file to ``remove_leftovers``): the file is waited for, not read at the state's moment.
    wait_until(
        lambda: (
            state(rig.frankfurt, "inbound", transfer_id) == ("expired", 0)
            and state(rig.lingang, "outbound", transfer_id) == ("expired", 0)
            and not partial_file(rig.frankfurt, transfer_id).exists()
        ),
        DEADLINE,
        f"{transfer_id} to expire on both sides and its partial file to go",
    )
    for gateway in (rig.lingang, rig.frankfurt):
        assert [r["kind"] for r in records(gateway, transfer_id)].count("transfer.expired") == 1


# -- the inbox -------------------------------------------------------------------------------


def _pages(gateway: Gateway, page_size: int) -> tuple[list[str], int]:
    """Every inbox item's id through the API, ``page_size`` at a time; and the page count."""
    channel = grpc.insecure_channel(f"unix:{gateway.paths.socket}")
    try:
        stub = local_pb2_grpc.LocalGatewayStub(channel)
        ids: list[str] = []
        token, pages = "", 0
        while True:
            page = stub.ListInbox(
                local_pb2.ListInboxRequest(page_size=page_size, page_token=token), timeout=10
            )
            pages += 1
            assert len(page.items) <= page_size
            ids += [item.transfer_id for item in page.items]
            token = page.next_page_token
            if not token:
                return ids, pages
    finally:
        channel.close()


def test_inbox_paging_ack_delete_and_retention(rig: Rig, tmp_path: Path) -> None:
    made = []
    for i in range(3):
        source = tmp_path / f"item-{i}.bin"
        source.write_bytes(os.urandom(5000))
        transfer_id, token = new_transfer(rig, f"inbox{i}")
        sent = rig.lingang.cli(*send_args(source, token), timeout=60)
        assert sent.returncode == 0, sent.stderr
        made.append(transfer_id)

    ids, pages = _pages(rig.frankfurt, 2)
    assert len(ids) == len(set(ids)) and set(made) <= set(ids)
    assert pages == -(-len(ids) // 2) >= 2  # a token only while more items follow
    listed = rig.frankfurt.cli("inbox", "--page-size", "1")
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[0] for line in listed.stdout.splitlines()[1:]] == ids

    acked, deleted, kept = made
    fetched = rig.frankfurt.cli("fetch", kept, "-o", str(tmp_path / "kept.out"))
    assert fetched.returncode == 0, fetched.stderr
    ack = rig.frankfurt.cli("inbox", "ack", acked)
    assert ack.returncode == 0 and f"acknowledged         {acked}" in ack.stdout, ack.stdout
    pending = rig.frankfurt.cli("inbox", "--pending")
    assert acked not in pending.stdout and kept in pending.stdout

    gone = rig.frankfurt.cli("inbox", "delete", deleted)
    assert gone.returncode == 0 and f"deleted              {deleted}" in gone.stdout, gone.stdout
    assert not committed_file(rig.frankfurt, deleted).exists()
    refused = rig.frankfurt.cli("-v", "fetch", deleted, "-o", str(tmp_path / "deleted.out"))
    assert refused.returncode == 1
    assert "was deleted on" in refused.stderr and "xbgw inbox delete" in refused.stderr
    assert "NOT_FOUND" in refused.stderr

    wait_until(
        lambda: not committed_file(rig.frankfurt, acked).exists(),
        DEADLINE,
        f"retention to remove {acked} a second after its acknowledgement",
    )
    late = rig.frankfurt.cli("fetch", acked, "-o", str(tmp_path / "acked.out"))
    assert late.returncode == 1 and "(retention: acknowledged 1s)" in late.stderr, late.stderr
    causes = {
        t: [r["cause"] for r in records(rig.frankfurt, t) if r["kind"] == "inbox.deleted"]
        for t in made
    }
    assert causes == {acked: ["acknowledged"], deleted: ["operator"], kept: []}
    assert committed_file(rig.frankfurt, kept).exists()  # fetched, kept: fetched is 30d
    remaining, _ = _pages(rig.frankfurt, 1000)
    assert kept in remaining and acked not in remaining and deleted not in remaining
