"""The daemon's lifecycle as systemd sees it (issue 4, items 2-4), through real processes.

Every daemon here is ``xbgw serve`` under :class:`devtools.provision.DaemonProcess`, which
binds the ``$NOTIFY_SOCKET`` datagram socket itself and records every notification, so the
tests read exactly what systemd would: ``STATUS=`` lines, ``READY=1``, ``WATCHDOG=1``,
``RELOADING=1`` + ``MONOTONIC_USEC``, ``STOPPING=1``. Signals are sent to the daemon's PID.

Two worlds of two gateways each (lingang -> frankfurt, SoftHSM, mutual TLS on loopback):

* ``served`` (module): both daemons stay up; TLS comes from a CA the test holds (so it can
  issue frankfurt a new certificate), and both expose Prometheus metrics. Health, metrics,
  certificate reload, refused reload, logs and start-up errors run against it.
* ``drain_world`` (module, provisioned only): the notify-sequence and SIGTERM-mid-transfer
  tests start and stop their own daemons in it (16 KiB segments, 1 s drain grace).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from devtools.provision import DaemonProcess, renew_tls
from gateway import tlskey
from tests.system.harness import wait_until
from tests.system.lifecycle_helpers import (
    CLI_ENV,
    World,
    answers_health,
    cli,
    cli_command,
    cli_env,
    committed_inbound,
    dataset,
    drain,
    file_serial,
    health_status,
    json_log,
    ledger_row,
    list_services,
    local_channel,
    make_world,
    partner_channel,
    read_datagrams_until,
    sample,
    scrape,
    send_and_fetch,
    server_certificate,
    standalone_config,
    stop_quietly,
    unwrapped_tls_key,
    wait_after,
    wait_count,
    write_standalone,
)

SEGMENT = 16 << 10
DRAIN_GRACE = 1
WATCHDOG_ENV = {"WATCHDOG_USEC": "1000000"}  # pings expected every 0.5 s
RESUMING = re.compile(r"resuming (\S+): partner holds (\d+) bytes")
LOCAL_SERVICE = "xbgw.v1.LocalGateway"
PARTNER_SERVICE = "xbgw.v1.PartnerGateway"


@dataclass
class Served:
    world: World
    lingang: DaemonProcess
    frankfurt: DaemonProcess


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    world = make_world(tmp_path_factory.mktemp("served"), SEGMENT, own_ca=True, metrics=True)
    with world.pair.running() as pair:
        yield Served(world, pair.lingang, pair.frankfurt)


@pytest.fixture(scope="module")
def drain_world(tmp_path_factory: pytest.TempPathFactory) -> World:
    # max_message_bytes: the workaround for the 1 MiB local-message limit, see
    # test_cli_send_of_more_than_one_read_chunk_with_small_segments.
    return make_world(
        tmp_path_factory.mktemp("drain"),
        SEGMENT,
        extra_limits={"drain_grace_seconds": DRAIN_GRACE, "max_message_bytes": 2 << 20},
    )


def _fields(message: str) -> list[str]:
    return message.split("\n")


def _first(messages: list[str], line: str, start: int = 0) -> int:
    return next(i for i in range(start, len(messages)) if line in _fields(messages[i]))


def _sequence(messages: list[str]) -> list[str]:
    """Notifications as one string each, runs of WATCHDOG=1 collapsed."""
    out: list[str] = []
    for message in messages:
        text = " + ".join(_fields(message))
        if text == "WATCHDOG=1" and out and out[-1].startswith("WATCHDOG=1"):
            count = int(out[-1].partition(" x")[2] or 1) + 1
            out[-1] = f"WATCHDOG=1 x{count}"
        else:
            out.append(text)
    return out


def _monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


# -- 1. the notify sequence ------------------------------------------------------------------


def test_notify_sequence_start_watchdog_reload_stop(drain_world: World) -> None:
    world = drain_world
    frankfurt = DaemonProcess(world.frankfurt, env=WATCHDOG_ENV)
    try:
        frankfurt.start()
        # Right after READY=1 both listeners must answer, with no retry.
        certificate = server_certificate(world.port("frankfurt"), world.ca_path(), world.lingang)
        assert certificate.serial_number == file_serial(world.frankfurt.tls_certificate)
        with local_channel(world.frankfurt) as channel:
            assert health_status(channel) == "SERVING"
        messages = frankfurt.messages
        ready = _first(messages, "READY=1")
        before = messages[:ready]
        assert before, "no STATUS= lines before READY=1"
        assert all(line.startswith("STATUS=") for m in before for line in _fields(m)), before
        assert "STATUS=opening the HSM" in _fields(messages[0])
        assert any(
            line.startswith("STATUS=serving as frankfurt") for line in _fields(messages[ready])
        )

        pings = wait_count(frankfurt, "WATCHDOG=1", 2, timeout=10)
        assert _first(frankfurt.messages, "WATCHDOG=1") > ready

        mark = len(frankfurt.messages)
        asked = _monotonic_usec()
        frankfurt.signal(signal.SIGHUP)
        reloading = wait_after(frankfurt, mark, "RELOADING=1")
        stamp = [
            f for f in _fields(frankfurt.messages[reloading]) if f.startswith("MONOTONIC_USEC=")
        ]
        assert len(stamp) == 1, f"MONOTONIC_USEC not in the RELOADING=1 datagram: {stamp}"
        value = stamp[0].partition("=")[2]
        assert value.isdigit(), stamp
        assert asked <= int(value) <= _monotonic_usec(), "MONOTONIC_USEC is not CLOCK_MONOTONIC"
        reloaded = wait_after(frankfurt, reloading + 1, "READY=1")

        mark = len(frankfurt.messages)
        signalled = time.monotonic()
        frankfurt.signal(signal.SIGTERM)
        stopping = wait_after(frankfurt, mark, "STOPPING=1")
        assert frankfurt.process is not None
        code = frankfurt.process.wait(timeout=DRAIN_GRACE + 15)
        took = time.monotonic() - signalled
        drain(frankfurt)
    finally:
        stop_quietly(frankfurt)
    assert code == 0
    assert ready < reloading < reloaded < stopping
    assert not any("READY=1" in _fields(m) for m in frankfurt.messages[reloading + 1 : reloaded])
    observed = _sequence(frankfurt.messages)
    print("\nobserved notify sequence (frankfurt, WATCHDOG_USEC=1000000):")
    for entry in observed:
        print(f"  {entry}")
    print(
        f"  first two WATCHDOG=1 read {pings[1] - pings[0]:.2f}s apart; exit {code} in {took:.1f}s"
    )


# -- 5. health and reflection ----------------------------------------------------------------


def test_health_serving_on_both_listeners_and_reflection_on_local(served: Served) -> None:
    world = served.world
    with local_channel(world.frankfurt) as channel:
        assert health_status(channel) == "SERVING"
        assert health_status(channel, LOCAL_SERVICE) == "SERVING"
        services = list_services(channel)
        assert LOCAL_SERVICE in services, services
        assert "grpc.health.v1.Health" in services, services
    with partner_channel(world, world.lingang, world.port("frankfurt")) as channel:
        assert health_status(channel) == "SERVING"
        assert health_status(channel, PARTNER_SERVICE) == "SERVING"
        # Reflection is for local operators only: the partner listener must not describe us.
        with pytest.raises(grpc.RpcError) as info:
            list_services(channel)
        assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED


# -- 6. metrics ------------------------------------------------------------------------------


def test_metrics_after_a_transfer_and_a_refused_replay(served: Served, tmp_path: Path) -> None:
    world = served.world
    frankfurt_port, lingang_port = world.metrics_ports["frankfurt"], world.metrics_ports["lingang"]
    _, idle = scrape(frankfurt_port)
    assert sample(idle, "xbgw_ready") == 1.0

    size = 200_000
    token, _transfer_id = send_and_fetch(world, tmp_path, size, "metrics")
    text, fr = scrape(frankfurt_port)
    committed = committed_inbound(world.frankfurt.state_dir)
    problems: list[str] = []

    def expect(samples: dict[Any, float], label: str, ok: bool, name: str, **labels: str) -> None:
        if not ok:
            problems.append(f"{label}: {name}{labels} = {sample(samples, name, **labels)}")

    name, labels = "xbgw_transfers_total", {"direction": "in", "partner": "lingang"}
    expect(
        fr,
        "frankfurt",
        sample(fr, name, **labels, outcome="committed") == committed,
        name,
        **labels,
        outcome="committed",
    )
    got = sample(fr, "xbgw_bytes_total", direction="in", partner="lingang")
    expect(fr, "frankfurt", got is not None and got >= size, "xbgw_bytes_total", **labels)
    got = sample(fr, "xbgw_hsm_operation_seconds_count", operation="unwrap")
    expect(
        fr,
        "frankfurt",
        got is not None and got >= 1,
        "xbgw_hsm_operation_seconds_count",
        operation="unwrap",
    )
    expect(
        fr,
        "frankfurt",
        sample(fr, "xbgw_active_streams", direction="in") == 0.0,
        "xbgw_active_streams",
        direction="in",
    )
    expect(fr, "frankfurt", sample(fr, "xbgw_ready") == 1.0, "xbgw_ready")

    _, li = scrape(lingang_port)
    out = {"direction": "out", "partner": "frankfurt"}
    got = sample(li, "xbgw_transfers_total", **out, outcome="delivered")
    expect(
        li,
        "lingang",
        got is not None and got >= 1,
        "xbgw_transfers_total",
        **out,
        outcome="delivered",
    )
    got = sample(li, "xbgw_bytes_total", **out)
    expect(li, "lingang", got is not None and got >= size, "xbgw_bytes_total", **out)

    # Replaying the delivered passport: the sending gateway already knows it was spent.
    source = tmp_path / "metrics.bin"
    replay = cli(world.lingang, "send", str(source), "--to", "frankfurt", "--passport", token)
    assert replay.returncode != 0
    assert "already delivered" in replay.stderr, replay.stderr
    _, li = scrape(lingang_port)
    got = sample(li, "xbgw_refusals_total", reason="PassportReplayError", partner="frankfurt")
    expect(
        li,
        "lingang",
        got == 1.0,
        "xbgw_refusals_total",
        reason="PassportReplayError",
        partner="frankfurt",
    )

    declared = sorted({line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")})
    print("\nmetric families declared:", ", ".join(declared))
    for label, samples in (("frankfurt", fr), ("lingang", li)):
        series = sorted(
            f"{n}{dict(sorted(ls))}"
            for n, ls in samples
            if n.endswith(("_total", "_count")) or n in ("xbgw_ready", "xbgw_active_streams")
        )
        print(f"series on {label}:", "; ".join(series))
    assert not problems, "metrics missing or wrong:\n" + "\n".join(problems)


# -- a limit found on the way ----------------------------------------------------------------


def test_cli_send_of_more_than_one_read_chunk_with_small_segments(
    served: Served, tmp_path: Path
) -> None:
    """``xbgw send`` streams 1 MiB data messages to the local socket, whose receive limit is
    the *partner* ``limits.max_message_bytes`` (1 MiB when segments are small): every file
    over 1 MiB fails with RESOURCE_EXHAUSTED."""
    send_and_fetch(served.world, tmp_path, (1 << 20) + 1, "two-chunks")


# -- 2. reload swaps the server certificate --------------------------------------------------


def test_reload_swaps_the_server_certificate(served: Served, tmp_path: Path) -> None:
    world, frankfurt = served.world, served.frankfurt
    assert world.ca is not None
    port = world.port("frankfurt")
    certificate, key = world.frankfurt.tls_certificate, world.frankfurt.tls_key
    old = server_certificate(port, world.ca_path(), world.lingang).serial_number
    assert old == file_serial(certificate)

    # Renewed as an operator does (`xbgw tls rotate`): the new key is wrapped by the HSM and
    # no plaintext key is left next to the certificate.
    renew_tls(world.frankfurt, world.ca)
    new = file_serial(certificate)
    assert new != old
    assert tlskey.looks_wrapped(key.read_bytes())
    assert sorted(p.name for p in certificate.parent.iterdir()) == [certificate.name, key.name]
    # New files alone change nothing: the running daemon serves what it loaded.
    assert server_certificate(port, world.ca_path(), world.lingang).serial_number == old

    mark = len(frankfurt.messages)
    frankfurt.signal(signal.SIGHUP)
    reloading = wait_after(frankfurt, mark, "RELOADING=1")
    ready = wait_after(frankfurt, reloading + 1, "READY=1")
    assert any(f.startswith("STATUS=serving as") for f in _fields(frankfurt.messages[ready]))

    assert server_certificate(port, world.ca_path(), world.lingang).serial_number == new
    send_and_fetch(world, tmp_path, 300_000, "after-cert-reload")


# -- 3. a broken config is refused on reload -------------------------------------------------


def test_reload_with_a_broken_config_is_refused(served: Served, tmp_path: Path) -> None:
    world, frankfurt = served.world, served.frankfurt
    config = world.frankfurt.config
    original = config.read_text(encoding="utf-8")
    data = yaml.safe_load(original)
    data["gateway"]["colour"] = "blue"
    broken = {
        "YAML syntax": ("gateway: [\n", str(config)),
        "unknown key": (yaml.safe_dump(data, sort_keys=False), "gateway.colour"),
    }
    try:
        for label, (text, needle) in broken.items():
            config.write_text(text, encoding="utf-8")
            logged_before = len(json_log(frankfurt.log_path)[0])
            mark = len(frankfurt.messages)
            frankfurt.signal(signal.SIGHUP)
            reloading = wait_after(frankfurt, mark, "RELOADING=1")
            ready = wait_after(frankfurt, reloading + 1, "READY=1")
            status = [f for f in _fields(frankfurt.messages[ready]) if f.startswith("STATUS=")]
            assert status and status[0].startswith("STATUS=reload refused: "), (label, status)
            assert needle in status[0], (label, status)
            errors = [
                e
                for e in json_log(frankfurt.log_path)[0][logged_before:]
                if e.get("level") == "error" and "reload refused" in str(e.get("msg"))
            ]
            assert errors, f"{label}: no error line in the log"
            assert needle in errors[0]["msg"]

        # The broken file is still in place: the old configuration keeps serving.
        status_cli = cli(world.frankfurt, "status")
        assert status_cli.returncode == 0, status_cli.stderr
        assert "frankfurt" in status_cli.stdout
        send_and_fetch(world, tmp_path, 150_000, "after-refused-reload")
    finally:
        config.write_text(original, encoding="utf-8")
    mark = len(frankfurt.messages)
    frankfurt.signal(signal.SIGHUP)
    ready = wait_after(frankfurt, wait_after(frankfurt, mark, "RELOADING=1") + 1, "READY=1")
    assert any(f.startswith("STATUS=serving as") for f in _fields(frankfurt.messages[ready]))


# -- 8. start-up errors ----------------------------------------------------------------------


@pytest.mark.parametrize("case", ["unknown key", "port in use", "wrong PIN", "missing token"])
def test_startup_error_is_one_clear_line(served: Served, tmp_path: Path, case: str) -> None:
    base = served.world.frankfurt
    data = standalone_config(base, tmp_path)
    config = tmp_path / "gateway.yaml"
    blocker: socket.socket | None = None
    if case == "unknown key":
        data["gateway"]["colour"] = "blue"
        needles = [str(config), "gateway.colour", "unknown key"]
    elif case == "port in use":
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        address = f"127.0.0.1:{blocker.getsockname()[1]}"
        data["listen"]["partner"] = address
        needles = ["cannot listen on", address]
    elif case == "wrong PIN":
        pin = tmp_path / "pin"
        pin.write_text("0000000000000000\n", encoding="utf-8")
        pin.chmod(0o600)
        data["hsm"]["pin"] = {"file": str(pin)}
        needles = ["wrong PIN"]
    else:
        data["hsm"]["token"] = "no-such-token"
        needles = ["'no-such-token' not found"]
    process = DaemonProcess(write_standalone(base, tmp_path, data))
    try:
        with pytest.raises(RuntimeError, match="exited with"):
            process.start(timeout=30)
    finally:
        if blocker is not None:
            blocker.close()
        stop_quietly(process)
    assert process.process is not None and process.process.returncode not in (0, None)
    stderr = process.log_path.read_text(errors="replace")
    assert "Traceback" not in stderr, stderr
    # The error is one line; before it only info records of what did start (the first start
    # of a gateway records its key versions: "key adopted").
    lines = [line for line in stderr.strip().splitlines() if not _info_record(line)]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not any("READY=1" in _fields(m) for m in process.messages), process.messages


# -- the notify socket itself: abstract namespace, or nobody listening --------------------------


@pytest.mark.parametrize("where", ["abstract", "unreachable"])
def test_notify_socket_abstract_or_unreachable(served: Served, tmp_path: Path, where: str) -> None:
    """``NOTIFY_SOCKET=@name`` is the abstract namespace; a socket nobody listens on must not
    stop the daemon (sd_notify is best effort: systemd's own client ignores such errors)."""
    base = served.world.frankfurt
    paths = write_standalone(base, tmp_path, standalone_config(base, tmp_path))
    receiver: socket.socket | None = None
    if where == "abstract":
        name = f"xbgw-lifecycle-{uuid.uuid4().hex}"
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        receiver.bind("\0" + name)
        address = "@" + name
    else:
        address = str(tmp_path / "nobody-listens.sock")
    log = tmp_path / "daemon.log"
    messages: list[str] = []
    with log.open("ab") as out:
        process = subprocess.Popen(
            cli_command("serve", "-c", str(paths.config)),
            stdout=out,
            stderr=out,
            env={**os.environ, **CLI_ENV, "NOTIFY_SOCKET": address},
        )
    try:
        if receiver is not None:
            read_datagrams_until(receiver, messages, "READY=1", 30)
        else:
            wait_until(
                lambda: process.poll() is not None or answers_health(paths),
                30,
                "the daemon serves or exits",
            )
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        assert answers_health(paths)
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
        if receiver is not None:
            read_datagrams_until(receiver, messages, "STOPPING=1", 5)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        if receiver is not None:
            receiver.close()
    assert code == 0
    assert "Traceback" not in log.read_text(errors="replace")


# -- 7. logs ---------------------------------------------------------------------------------


def test_logs_are_json_lines_without_secrets_or_payload(served: Served, tmp_path: Path) -> None:
    world = served.world
    if not world.payload_prefixes:  # run alone: make one transfer to look for
        send_and_fetch(world, tmp_path, 200_000, "for-the-logs")
    secrets = {
        "lingang PIN": world.lingang.pin_file.read_text().strip(),
        "frankfurt PIN": world.frankfurt.pin_file.read_text().strip(),
        "issuer PIN": world.issuer.pin_file.read_text().strip(),
    }
    for paths in (world.lingang, world.frankfurt):
        # The key each daemon holds now (frankfurt's is the renewed one after the reload test).
        key_pem = unwrapped_tls_key(paths).decode().splitlines()
        secrets[f"{paths.id} TLS key"] = next(line for line in key_pem if "-----" not in line)
    for number, prefix in enumerate(world.payload_prefixes):
        secrets[f"payload {number} hex"] = prefix.hex()
        secrets[f"payload {number} base64"] = base64.b64encode(prefix).decode()[:40]
        secrets[f"payload {number} base64url"] = base64.urlsafe_b64encode(prefix).decode()[:40]

    for process, final in (
        (served.lingang, "transfer delivered"),
        (served.frankfurt, "transfer committed"),
    ):
        text = process.log_path.read_text(errors="replace")
        entries, bad = json_log(process.log_path)
        assert entries and not bad, f"{process.paths.id}: lines that are not JSON: {bad[:5]}"
        for entry in entries:
            missing = {"ts", "level", "msg"} - entry.keys()
            assert not missing, (missing, entry)
        with_id = [e for e in entries if e.get("transfer_id")]
        for entry in with_id:
            assert entry.get("partner") and entry.get("outcome"), entry
        assert any(e["msg"] == final and e.get("transfer_id") for e in with_id), final
        for what, value in secrets.items():
            assert value not in text, f"{process.paths.id}'s log contains the {what}"


# -- 4. SIGTERM during a transfer that later resumes -----------------------------------------


def test_sigterm_mid_transfer_drains_and_the_send_resumes(
    drain_world: World, tmp_path: Path
) -> None:
    world = drain_world
    size = 64 << 20
    source = tmp_path / "big.bin"
    digest = dataset(source, size)
    transfer_id = f"dpo_{uuid.uuid4().hex}"
    token = world.passport(byte_limit=size * 2, jti=transfer_id)
    state_dir = world.frankfurt.state_dir
    frankfurt, lingang = DaemonProcess(world.frankfurt), DaemonProcess(world.lingang)
    send: subprocess.Popen[str] | None = None
    try:
        frankfurt.start()
        lingang.start()
        # --wait 0: this send is to fail when frankfurt stops (waiting for it to come back is
        # tests/system/test_partner_outage.py's), so that the resend shows the durable point.
        send = subprocess.Popen(
            cli_command(
                "send", str(source), "--to", "frankfurt", "--passport", token, "--wait", "0"
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(world.lingang),
        )

        def moving() -> bool:
            row = ledger_row(state_dir, transfer_id)
            return (row is not None and row[1] > 0) or send.poll() is not None

        wait_until(moving, 60, "frankfurt's ledger shows received bytes")
        row = ledger_row(state_dir, transfer_id)
        assert send.poll() is None and row is not None and row[0] == "receiving", (
            f"the transfer ended before SIGTERM ({row}); make the data bigger"
        )
        assert not row[2], "all segments arrived before SIGTERM; make the data bigger"

        mark = len(frankfurt.messages)
        signalled = time.monotonic()
        frankfurt.signal(signal.SIGTERM)
        stopping = wait_after(frankfurt, mark, "STOPPING=1")
        assert f"STATUS=draining transfers for up to {DRAIN_GRACE}s" in _fields(
            frankfurt.messages[stopping]
        )
        assert frankfurt.process is not None
        code = frankfurt.process.wait(timeout=DRAIN_GRACE + 30)
        took = time.monotonic() - signalled
        assert code == 0
        assert took <= DRAIN_GRACE + 5, f"frankfurt took {took:.1f}s to stop"

        _out, err = send.communicate(timeout=60)
        assert send.returncode != 0, "the send succeeded although frankfurt stopped"
        assert "Traceback" not in err, err
        last = err.strip().splitlines()[-1]
        assert last.startswith("xbgw: ") and "frankfurt" in last, err
        durable = ledger_row(state_dir, transfer_id)
        assert durable is not None and durable[0] == "receiving" and durable[1] > 0, durable
        print(f"\nSIGTERM -> exit {code} in {took:.1f}s; sender: {last}; durable {durable[1]} B")

        frankfurt.stop()  # exited already: closes the old notify socket
        frankfurt.start()
        again = cli(world.lingang, "send", str(source), "--to", "frankfurt", "--passport", token)
        assert again.returncode == 0, again.stderr
        resumed = RESUMING.search(again.stderr)
        assert resumed is not None, again.stderr
        assert resumed[1] == transfer_id
        held = int(resumed[2])
        assert held == durable[1] and 0 < held <= size
        print(f"resume: {resumed[0]}")

        target = tmp_path / "big.fetched"
        fetched = cli(world.frankfurt, "fetch", transfer_id, "-o", str(target))
        assert fetched.returncode == 0, fetched.stderr
        with target.open("rb") as got:
            assert hashlib.file_digest(got, "sha256").hexdigest() == digest
    finally:
        if send is not None and send.poll() is None:
            send.kill()
            send.wait(10)
        stop_quietly(lingang)
        stop_quietly(frankfurt)


def _info_record(line: str) -> bool:
    try:
        entry = json.loads(line)
    except ValueError:
        return False
    return isinstance(entry, dict) and entry.get("level") == "info"
