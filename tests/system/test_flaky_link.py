"""A flaky link, a silent black hole and full disks, against real daemons.

Two real gateways (SoftHSM, mutual TLS on loopback, ``keepalive_seconds: 2``); Lingang's
partner endpoint for Frankfurt is a :class:`~tests.system.faults.FaultProxy`. Frankfurt's
spool and Lingang's whole state directory each sit on a small tmpfs of their own, so a test
can fill one side's disk and free it again. The mounts are made before the daemons start and
removed after they stop, whatever happened (lazily, if a file is still held open).

* A reset every ``PERIOD`` bytes: each attempt keeps what it brought (the receiver makes
  what verified durable when the stream breaks), so the transfer completes however often the
  link breaks, and the wire carries little more than the data once.
* A black hole mid-stream (no FIN, no RST): Frankfurt's keepalive notices it within about
  twice ``keepalive_seconds``, ends the stream and keeps a durable resume point.
* A full disk on either side is RESOURCE_EXHAUSTED naming the side and the path; once space
  is freed, the same send completes.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import shutil
import sqlite3
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devtools.pair import edit_config, provision_pair
from gateway.envelope import TAG_LEN
from tests.system.faults import FaultProxy, privileged, tmpfs_options
from tests.system.harness import Gateway, Pair, wait_until

SEGMENT = 256 << 10
PERIOD = 1 << 20  # a reset every 1 MiB: four segments' worth per connection at most
SIZE = 6 << 20
KEEPALIVE = 2  # seconds, both gateways
DEADLINE = 60.0
MAX_ATTEMPTS = 40
TMPFS_BYTES = 32 << 20


@dataclass
class Rig:
    pair: Pair
    proxy: FaultProxy
    spool: Path  # Frankfurt's spool: a tmpfs
    sender_state: Path  # Lingang's state directory: a tmpfs

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


# -- mounts ----------------------------------------------------------------------------------


def _umount(path: Path) -> None:
    umount = privileged("umount", str(path))
    if subprocess.run(umount, check=False, capture_output=True).returncode:
        subprocess.run(privileged("umount", "--lazy", str(path)), capture_output=True, check=True)


@contextlib.contextmanager
def tmpfs(path: Path, size: int) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes at ``path`` holding what ``path`` held; unmounted (and the
    files put back) on the way out, whatever happened."""
    saved = path.with_name(path.name + ".on-disk")
    path.mkdir(parents=True, exist_ok=True)
    path.rename(saved)
    path.mkdir(mode=0o700)
    subprocess.run(
        privileged("mount", "-t", "tmpfs", "-o", tmpfs_options(size), "tmpfs", str(path)),
        check=True,
        capture_output=True,
    )
    try:
        shutil.copytree(saved, path, dirs_exist_ok=True, symlinks=True)
        yield path
    finally:
        _umount(path)


def fill(directory: Path, leave: int) -> Path:
    """Take all but ``leave`` bytes of the file system of ``directory``; the filler's path."""
    filler = directory / "filler.bin"
    stat = os.statvfs(directory)
    free = stat.f_bavail * stat.f_frsize
    with filler.open("wb") as out:
        out.truncate(0)
        chunk = bytes(1 << 20)
        todo = max(free - leave, 0)
        while todo > 0:
            todo -= out.write(chunk[: min(len(chunk), todo)])
    return filler


# -- the rig ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    def keepalive(_gateway_id: str, data: dict[str, object]) -> None:
        limits = data["limits"]
        assert isinstance(limits, dict)
        limits["keepalive_seconds"] = KEEPALIVE

    pair = provision_pair(
        tmp_path_factory.mktemp("flaky"), segment_size=SEGMENT, metrics=True, configure=keepalive
    )
    with contextlib.ExitStack() as stack:
        spool = stack.enter_context(tmpfs(pair.frankfurt.paths.state_dir / "spool", TMPFS_BYTES))
        state = stack.enter_context(tmpfs(pair.lingang.paths.state_dir, TMPFS_BYTES))
        proxy = stack.enter_context(FaultProxy(("127.0.0.1", pair.port("frankfurt"))))

        def via_proxy(data: dict[str, list[dict[str, str]]]) -> None:
            next(p for p in data["partners"] if p["id"] == "frankfurt")["endpoint"] = proxy.endpoint

        edit_config(pair.lingang.paths.config, via_proxy)
        stack.enter_context(pair.running())
        yield Rig(pair, proxy, spool, state)


@pytest.fixture
def fresh(rig: Rig) -> Iterator[Rig]:
    """The module's rig with the proxy passing traffic, before and after the test."""
    rig.proxy.release()
    yield rig
    rig.proxy.release()


# -- observing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class InboundRow:
    state: str
    next_segment: int
    received_bytes: int
    header_len: int


def inbound(rig: Rig, transfer_id: str) -> InboundRow | None:
    path = rig.frankfurt.paths.state_dir / "ledger.sqlite3"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
        row = db.execute(
            "SELECT state, next_segment, received_bytes, length(stored_header) FROM inbound "
            "WHERE transfer_id = ?",
            (transfer_id,),
        ).fetchone()
    return None if row is None else InboundRow(*row)


def streams_in(rig: Rig) -> int | None:
    """Frankfurt's ``xbgw_active_streams{direction="in"}``; None if it does not answer."""
    try:
        with urllib.request.urlopen(rig.frankfurt.metrics_url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    prefix = 'xbgw_active_streams{direction="in"} '
    found = [line[len(prefix) :] for line in text.splitlines() if line.startswith(prefix)]
    return int(float(found[0])) if found else 0


def no_stream_in(rig: Rig, timeout: float = DEADLINE) -> None:
    wait_until(lambda: streams_in(rig) == 0, timeout, "frankfurt's upload streams to end")


def durable_point(rig: Rig, transfer_id: str) -> InboundRow:
    """Frankfurt's resume point, checked against its spool file: exactly the whole segments
    it verified, durable (the file may hold a torn tail past it, never less)."""
    row = inbound(rig, transfer_id)
    assert row is not None and row.state == "receiving", row
    assert row.received_bytes == row.next_segment * SEGMENT, row
    partial = rig.spool / "incoming" / f"{transfer_id}.part"
    assert partial.stat().st_size >= row.header_len + row.next_segment * (SEGMENT + TAG_LEN)
    return row


KEPT = re.compile(r"upload ended early \(.*\); resume point (\d+) is durable")


def kept_points(rig: Rig, transfer_id: str) -> list[int]:
    """The resume points Frankfurt made durable as streams of ``transfer_id`` broke, in order."""
    points = []
    for line in rig.frankfurt.log_text().splitlines():
        match = KEPT.search(line)
        if match is not None and json.loads(line).get("transfer_id") == transfer_id:
            points.append(int(match.group(1)))
    return points


# -- sending ---------------------------------------------------------------------------------


def dataset(path: Path, size: int = SIZE) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def new_transfer(rig: Rig, label: str) -> tuple[str, str]:
    transfer_id = f"dpo_flaky-{label}-{uuid.uuid4().hex[:12]}"
    return transfer_id, rig.pair.passport(byte_limit=2 * SIZE, jti=transfer_id)


def send(rig: Rig, source: Path, token: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return rig.lingang.cli(
        "send", str(source), "--to", "frankfurt", "--passport", token, *extra, timeout=300
    )


def assert_delivered(rig: Rig, transfer_id: str, digest: str, tmp_path: Path) -> None:
    """Committed with every byte, listed once, fetched byte-identical."""
    row = inbound(rig, transfer_id)
    assert row is not None and (row.state, row.received_bytes) == ("committed", SIZE), row
    listed = rig.frankfurt.cli("inbox")
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[0] for line in listed.stdout.splitlines()].count(transfer_id) == 1
    target = tmp_path / "fetched.bin"
    fetched = rig.frankfurt.cli("fetch", transfer_id, "-o", str(target))
    assert fetched.returncode == 0, fetched.stderr
    assert hashlib.sha256(target.read_bytes()).hexdigest() == digest
    target.unlink()


# -- a flaky link ----------------------------------------------------------------------------


def test_a_reset_every_mebibyte_still_delivers(fresh: Rig, tmp_path: Path) -> None:
    """A reset every 1 MiB: every attempt moves the resume point; the transfer completes.

    ``xbgw send`` is run until it succeeds (a sender that resumes by itself needs one run,
    one that gives up at a break needs one per cut). Every stream the reset broke must have
    left a durable resume point past the one before it (Frankfurt logs each), and between
    runs Frankfurt's ledger and spool must agree with it.

    What a stream keeps is what Frankfurt had read when the reset came: the bytes still in
    its socket and in gRPC's buffers are lost with the connection, so an attempt that moved
    1 MiB may keep a single 256 KiB segment -- but never nothing.
    """
    rig = fresh
    source = tmp_path / "data.bin"
    digest = dataset(source)
    transfer_id, token = new_transfer(rig, "resets")
    cuts_before = rig.proxy.cuts
    rig.proxy.cut_every(PERIOD)
    result = None
    for _attempt in range(MAX_ATTEMPTS):
        result = send(rig, source, token)
        if result.returncode == 0:
            break
        no_stream_in(rig)
        row = inbound(rig, transfer_id)
        if row is not None and row.state == "receiving":
            assert durable_point(rig, transfer_id).next_segment == kept_points(rig, transfer_id)[-1]
    rig.proxy.release()
    assert result is not None
    assert result.returncode == 0, result.stderr + rig.logs()
    cuts = rig.proxy.cuts - cuts_before
    assert cuts >= SIZE // PERIOD, f"only {cuts} resets: the link was not flaky enough"
    points = kept_points(rig, transfer_id)
    assert len(points) >= SIZE // PERIOD, (points, cuts)
    assert all(a < b for a, b in itertools.pairwise([0, *points])), points
    assert points[-1] < SIZE // SEGMENT, points
    assert_delivered(rig, transfer_id, digest, tmp_path)


def test_a_black_hole_is_noticed_by_keepalive_and_the_point_is_kept(
    fresh: Rig, tmp_path: Path
) -> None:
    """Packets dropped mid-stream, nothing closed: Frankfurt ends the stream within about
    2 x keepalive_seconds, with every segment it verified durable; then the send completes."""
    rig = fresh
    source = tmp_path / "data.bin"
    digest = dataset(source)
    transfer_id, token = new_transfer(rig, "hole")
    # The hole opens at an exact byte, past two segments (and the offer's bytes), whatever
    # the sender's speed: armed before the send starts.
    rig.proxy.black_hole_after(2 * SEGMENT + (64 << 10))
    cli = rig.lingang.cli_background("send", str(source), "--to", "frankfurt", "--passport", token)
    try:
        rig.proxy.wait_tripped(DEADLINE)
        holed = time.monotonic()
        wait_until(lambda: streams_in(rig) == 1, DEADLINE, "frankfurt to hold the stream")
        no_stream_in(rig, timeout=6 * KEEPALIVE)
        noticed = time.monotonic() - holed
        assert noticed <= 2 * KEEPALIVE + 2.5, f"the black hole took {noticed:.1f}s to notice"
        row = durable_point(rig, transfer_id)
        assert 2 <= row.next_segment < SIZE // SEGMENT, row
        assert "resume point" in rig.frankfurt.log_text()
    finally:
        rig.proxy.release()  # resets what crossed the hole
        try:
            _out, err = cli.communicate(timeout=DEADLINE)  # a sender may resume by itself
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.communicate(timeout=30)
    for _attempt in range(MAX_ATTEMPTS):
        if cli.returncode == 0:
            break
        no_stream_in(rig)
        again = send(rig, source, token)
        if again.returncode == 0:
            break
        err = again.stderr
    else:
        pytest.fail(f"the send did not complete after the black hole: {err}{rig.logs()}")
    assert_delivered(rig, transfer_id, digest, tmp_path)


# -- full disks ------------------------------------------------------------------------------

FULL = re.compile(r"storage is full: (\S+) \((No space left on device|database or disk is full)\)")


def test_the_receivers_full_disk_is_resource_exhausted_and_resumes(
    fresh: Rig, tmp_path: Path
) -> None:
    """Frankfurt's spool fills up mid-transfer: the sender's error says whose storage is
    full and where; Frankfurt keeps what fitted; after space is freed the same send completes."""
    rig = fresh
    source = tmp_path / "data.bin"
    digest = dataset(source)
    transfer_id, token = new_transfer(rig, "receiver-full")
    filler = fill(rig.spool, leave=SIZE // 2)
    try:
        refused = send(rig, source, token)
        assert refused.returncode != 0, refused.stdout
        assert "RESOURCE_EXHAUSTED" not in refused.stderr, refused.stderr  # only with -v
        assert "partner frankfurt's storage is full" in refused.stderr, refused.stderr
        match = FULL.search(refused.stderr)
        assert match is not None and match.group(1) == str(rig.spool), refused.stderr
        assert "unreachable" not in refused.stderr
        no_stream_in(rig)
        kept = durable_point(rig, transfer_id)
        assert kept.next_segment >= 1, kept  # what fitted and verified is kept
    finally:
        filler.unlink()
    done = send(rig, source, token)
    assert done.returncode == 0, done.stderr + rig.logs()
    assert f"partner holds {kept.received_bytes} bytes" in done.stderr, done.stderr
    assert_delivered(rig, transfer_id, digest, tmp_path)


def test_the_senders_full_disk_is_resource_exhausted_and_resumes(
    fresh: Rig, tmp_path: Path
) -> None:
    """Lingang's state directory (its ledger) is full: RESOURCE_EXHAUSTED naming this
    gateway and the ledger, never an internal error; after space is freed it completes."""
    rig = fresh
    source = tmp_path / "data.bin"
    digest = dataset(source)
    transfer_id, token = new_transfer(rig, "sender-full")
    filler = fill(rig.sender_state, leave=0)
    try:
        refused = send(rig, source, token)
        assert refused.returncode != 0, refused.stdout
        assert "RESOURCE_EXHAUSTED" not in refused.stderr, refused.stderr  # only with -v
        assert "this gateway's storage is full" in refused.stderr, refused.stderr
        assert "internal error" not in refused.stderr, refused.stderr
        match = FULL.search(refused.stderr)
        assert match is not None, refused.stderr
        assert match.group(1).startswith(str(rig.sender_state)), refused.stderr
    finally:
        filler.unlink()
    done = send(rig, source, token)
    assert done.returncode == 0, done.stderr + rig.logs()
    assert_delivered(rig, transfer_id, digest, tmp_path)
