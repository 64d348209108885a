"""``make demo``: two gateways in two jurisdictions and one real transfer between them.

Provisions ``lingang`` (CN-SH) and ``frankfurt`` (EU-DE) under ``demo-state/`` -- SoftHSM
tokens with keys made by ``xbgw keys init``, certificates from a throw-away CA, configs --
starts both daemons, issues a passport, sends a generated data set with ``xbgw send``,
fetches it on the other side with ``xbgw fetch``, checks the SHA-256, and stops the daemons.
Re-running starts from a clean ``demo-state/``.

``up`` starts the two gateways again on what the demo left (README, "After the demo"), in the
background: each records its PID in ``demo-state/<id>/daemon.pid`` and logs to
``daemon.log``, and ``up`` returns once each answers SERVING on its local socket. ``down``
stops them by those PIDs (SIGTERM: they drain and exit 0; SIGKILL after a deadline).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devtools.pair import FRANKFURT, LINGANG, STOP_TIMEOUT, Gateway, provision_pair
from gateway.cli import parse_size

#: The order ``up`` starts them in (the receiver first) and ``down`` stops them in reverse.
GATEWAYS = (FRANKFURT[0], LINGANG[0])
READY_TIMEOUT = 30.0
POLL_SECONDS = 0.1


def _step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def _xbgw(socket: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XBGW_SOCKET": str(socket), "GRPC_VERBOSITY": "ERROR"}
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        check=False,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
    )
    for line in done.stdout.splitlines():
        print(f"    {line}")
    if done.returncode != 0:
        raise SystemExit(f"demo: 'xbgw {args[0]}' failed with exit code {done.returncode}")
    return done


def _dataset(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as out:
        left = size
        while left:
            block = os.urandom(min(left, 1 << 20))
            digest.update(block)
            out.write(block)
            left -= len(block)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as src:
        while block := src.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "action",
        nargs="?",
        choices=["run", "up", "down"],
        default="run",
        help="run: the whole demo (default); up / down: start / stop the demo gateways again",
    )
    parser.add_argument("--size", type=parse_size, default=parse_size("64MiB"))
    parser.add_argument("--dir", type=Path, default=Path("demo-state"))
    args = parser.parse_args(argv)
    if args.action == "up":
        return up(args.dir.resolve())
    if args.action == "down":
        return down(args.dir.resolve())
    started = time.monotonic()
    root: Path = args.dir.resolve()
    for gateway_id in GATEWAYS if root.exists() else ():
        if pid_file(root, gateway_id).exists() and (pid := _recorded_pid(root, gateway_id)):
            raise SystemExit(
                f"demo: {gateway_id} still runs from `up` (pid {pid}) on {root}; "
                "`python -m devtools.demo down` stops it first"
            )
    if root.exists():
        shutil.rmtree(root)

    _step("provisioning lingang (CN-SH) and frankfurt (EU-DE): SoftHSM tokens, keys, demo CA")
    pair = provision_pair(root)
    for gateway in pair.gateways:
        spec = gateway.spec
        print(
            f"    {spec.id:<10} {spec.jurisdiction:<6} 127.0.0.1:{spec.port}  "
            f"{gateway.paths.config}"
        )
    print(f"    passport issuer {pair.issuer.kid}")
    lingang, frankfurt = pair.lingang.paths, pair.frankfurt.paths

    try:
        _step("starting both daemons (waiting for READY=1 on the notify socket)")
        pair.start()
        for gateway in pair.gateways:
            print(f"    {gateway.id} ready, pid {gateway.pid}")

        _step(f"generating a {args.size / 2**20:.0f} MiB data set")
        data = root / "dataset.bin"
        digest = _dataset(data, args.size)
        print(f"    sha256 {digest}")

        _step("issuing a data passport (signed in the issuer's HSM)")
        token = pair.passport(byte_limit=args.size, extra=["--file", str(data)])
        passport = root / "passport.jwt"
        passport.write_text(token + "\n", encoding="ascii")
        _xbgw(lingang.socket, "passport", "verify", str(passport), "-c", str(frankfurt.config))

        _step("lingang -> frankfurt: xbgw send")
        _xbgw(
            lingang.socket,
            "send",
            str(data),
            "--to",
            "frankfurt",
            "--passport",
            str(passport),
        )

        _step("frankfurt: xbgw inbox")
        inbox = _xbgw(frankfurt.socket, "inbox")
        transfer_id = next(
            line.split()[0] for line in inbox.stdout.splitlines() if digest[:16] in line
        )

        _step(f"frankfurt: xbgw fetch {transfer_id}")
        fetched = root / "fetched.bin"
        _xbgw(frankfurt.socket, "fetch", transfer_id, "-o", str(fetched))
        received = _sha256(fetched)
        if received != digest:
            print(f"demo: MISMATCH: sent {digest}, fetched {received}", file=sys.stderr)
            return 1
        print(f"    sha256 {received}  matches what lingang sent")

        _step("a transfer the border refuses: core data, sensitive PI of 5,000,000 subjects")
        refused = pair.passport(
            byte_limit=args.size,
            extra=["--classification", "core", "--pi", "sensitive", "--subjects", "5000000"],
        )
        done = subprocess.run(
            [*Gateway.cli_command("send", str(data), "--to", "frankfurt"), "--passport", refused],
            check=False,
            env={**os.environ, "XBGW_SOCKET": str(lingang.socket), "GRPC_VERBOSITY": "ERROR"},
            text=True,
            capture_output=True,
        )
        if done.returncode == 0:
            print("demo: the border let core data through", file=sys.stderr)
            return 1
        print(
            textwrap.fill(
                done.stderr.strip(), 96, initial_indent="    ", subsequent_indent="      "
            )
        )
    finally:
        _step("stopping both daemons (SIGTERM)")
        for gateway_id, code in pair.stop().items():
            print(f"    {gateway_id} exited with {code}")
    print(f"\ndemo finished in {time.monotonic() - started:.1f}s; state kept in {root}")
    return 0


# --- up / down: the demo gateways again, in the background ----------------------------------


def pid_file(root: Path, gateway_id: str) -> Path:
    return root / gateway_id / "daemon.pid"


def _config(root: Path, gateway_id: str) -> Path:
    config = root / gateway_id / "gateway.yaml"
    if not config.is_file():
        raise SystemExit(f"demo: no {config}: run `make demo` first (it provisions {root})")
    return config


def is_our_daemon(pid: int, config: Path) -> bool:
    """Whether ``pid`` is a live ``xbgw serve -c CONFIG`` (not a zombie, not a reused PID)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state != "Z" and b"serve" in argv and str(config).encode() in argv


def _recorded_pid(root: Path, gateway_id: str) -> int | None:
    """The PID ``up`` recorded for a daemon that still runs; a stale file is removed."""
    path = pid_file(root, gateway_id)
    try:
        pid = int(path.read_text(encoding="ascii").strip())
    except FileNotFoundError:
        return None
    except ValueError:
        path.unlink()
        return None
    if is_our_daemon(pid, _config(root, gateway_id)):
        return pid
    path.unlink()
    return None


def _serving(socket: str) -> bool:
    """One health check on the local socket: SERVING once both listeners accept."""
    with grpc.insecure_channel(f"unix:{socket}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _start(root: Path, gateway_id: str) -> int:
    """``xbgw serve`` for one gateway in a session of its own, ready when it serves."""
    config = _config(root, gateway_id)
    socket = yaml.safe_load(config.read_text(encoding="utf-8"))["listen"]["local_socket"]
    log = root / gateway_id / "daemon.log"
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env={**env, "GRPC_VERBOSITY": "ERROR"},
            start_new_session=True,  # a Ctrl-C in this terminal later does not reach it
        )
    pid_file(root, gateway_id).write_text(f"{process.pid}\n", encoding="ascii")
    deadline = time.monotonic() + READY_TIMEOUT
    while not _serving(socket):
        if process.poll() is not None:
            pid_file(root, gateway_id).unlink()
            tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
            raise SystemExit(f"demo: {gateway_id} exited with {process.returncode}: {tail}")
        if time.monotonic() > deadline:
            _stop(process.pid, gateway_id, config)
            pid_file(root, gateway_id).unlink()
            raise SystemExit(
                f"demo: {gateway_id} did not serve within {READY_TIMEOUT:.0f}s; see {log}"
            )
        time.sleep(POLL_SECONDS)
    return process.pid


def up(root: Path) -> int:
    """Start frankfurt, then lingang, on the demo's configs; refuse if one already runs."""
    for gateway_id in GATEWAYS:
        pid = _recorded_pid(root, gateway_id)
        if pid is not None:
            raise SystemExit(
                f"demo: {gateway_id} already runs (pid {pid}); "
                "`python -m devtools.demo down` stops both"
            )
    started: list[str] = []
    try:
        for gateway_id in GATEWAYS:
            pid = _start(root, gateway_id)
            started.append(gateway_id)
            config = root / gateway_id / "gateway.yaml"
            print(f"{gateway_id} serving, pid {pid}: xbgw ... -c {config}", flush=True)
    except BaseException:
        for gateway_id in started:
            pid = _recorded_pid(root, gateway_id)
            if pid is not None:
                _stop(pid, gateway_id, _config(root, gateway_id))
                pid_file(root, gateway_id).unlink()
        raise
    return 0


def _stop(pid: int, gateway_id: str, config: Path) -> None:
    """SIGTERM, then SIGKILL after the stop deadline; return once the daemon is gone."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while is_our_daemon(pid, config):
        if time.monotonic() > deadline:
            print(f"demo: {gateway_id} (pid {pid}) ignored SIGTERM; killing it", file=sys.stderr)
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + STOP_TIMEOUT
        time.sleep(POLL_SECONDS)


def down(root: Path) -> int:
    """Stop lingang, then frankfurt, by the PIDs ``up`` recorded."""
    for gateway_id in reversed(GATEWAYS):
        pid = _recorded_pid(root, gateway_id)
        if pid is None:
            print(f"{gateway_id} is not running", flush=True)
            continue
        _stop(pid, gateway_id, _config(root, gateway_id))
        pid_file(root, gateway_id).unlink()
        print(f"{gateway_id} stopped (pid {pid})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
