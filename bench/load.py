"""``python -m bench.load``: many concurrent sends through two real daemons -- how many fail,
and how much memory each daemon needs meanwhile.

The demo pair (:mod:`devtools.pair`: SoftHSM tokens, mutual TLS on loopback, SQLite) with
the default limits (``max_concurrent_transfers`` 8, ``max_queued_sends`` 1024) and 1 MiB
segments. ``--sends`` local clients (default 64) each send ``--size`` bytes (default 8 MiB)
at the same moment, each under its own passport and on its own connection to the local
socket -- what that many ``xbgw send`` processes would do, without that many interpreters.
Every send must end with a verified receipt whose size and SHA-256 match what was sent.

Reported: each daemon's peak RSS (``VmHWM``) and idle RSS, the sends that failed (by gRPC
status), how many saw a ``queued`` event and the highest place seen, and the wall time.
The daemons are stopped by PID whatever happens.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc

from bench.daemons import RssSampler, each_peak_rss_kib, each_rss_kib
from bench.passports import issue_many
from devtools.pair import provision_pair
from gateway._proto.xbgw.v1 import local_pb2, local_pb2_grpc
from gateway.config import Limits

MIB = 1 << 20
CHUNK = MIB  # what `xbgw send` writes per message
LOCAL_MESSAGE_LIMIT = 16 << 20  # the CLI's own limit on the local socket


@dataclass
class Outcome:
    ok: bool
    seconds: float
    status: str = ""  # the gRPC status name of a failure
    detail: str = ""
    queued_events: int = 0
    highest_position: int = 0


@dataclass
class LoadResult:
    sends: int
    size_bytes: int
    max_concurrent_transfers: int
    seconds: float
    failed: int
    failures_by_status: dict[str, int]
    first_failures: list[str]
    saw_queued: int
    highest_position: int
    idle_rss_kib: dict[str, int]
    peak_rss_kib: dict[str, int]
    rss_samples_kib: dict[str, list[float]] = field(repr=False)

    def summary(self) -> str:
        peak = ", ".join(f"{name} {kib / 1024:.1f} MiB" for name, kib in self.peak_rss_kib.items())
        idle = ", ".join(f"{name} {kib / 1024:.1f} MiB" for name, kib in self.idle_rss_kib.items())
        lines = [
            f"{self.sends} concurrent sends of {self.size_bytes / MIB:g} MiB "
            f"(max_concurrent_transfers {self.max_concurrent_transfers}) in {self.seconds:.1f} s",
            f"  failed        {self.failed}"
            + (f"  {dict(self.failures_by_status)}" if self.failed else ""),
            f"  saw 'queued'  {self.saw_queued} (highest place {self.highest_position})",
            f"  peak RSS      {peak}",
            f"  idle RSS      {idle}",
        ]
        lines += [f"  failure: {text}" for text in self.first_failures]
        return "\n".join(lines)


def _send(socket: Path, index: int, token: str, data: bytes, digest: str) -> Outcome:
    """One local client on its own connection (distinct channel arguments), as a separate
    ``xbgw send`` process would have."""
    channel = grpc.insecure_channel(
        f"unix:{socket}",
        options=[
            ("grpc.max_send_message_length", LOCAL_MESSAGE_LIMIT),
            ("grpc.max_receive_message_length", LOCAL_MESSAGE_LIMIT),
            ("grpc.use_local_subchannel_pool", 1),
            ("bench.load.client", index),
        ],
    )

    def requests() -> Iterator[local_pb2.SendRequest]:
        yield local_pb2.SendRequest(
            start=local_pb2.SendStart(partner="frankfurt", passport=token, size=len(data))
        )
        for offset in range(0, len(data), CHUNK):
            yield local_pb2.SendRequest(data=data[offset : offset + CHUNK])

    outcome = Outcome(ok=False, seconds=0.0)
    started = time.perf_counter()
    try:
        stub = local_pb2_grpc.LocalGatewayStub(channel)
        done = None
        for event in stub.Send(requests()):
            kind = event.WhichOneof("kind")
            if kind == "queued":
                outcome.queued_events += 1
                outcome.highest_position = max(outcome.highest_position, event.queued.position)
            elif kind == "done":
                done = event.done
        if done is None:
            outcome.detail = "ended without a receipt"
        elif done.plaintext_size != len(data) or done.plaintext_sha256 != digest:
            outcome.detail = f"receipt for {done.transfer_id} does not match what was sent"
        else:
            outcome.ok = True
    except grpc.RpcError as exc:
        outcome.status = exc.code().name
        outcome.detail = exc.details() or ""
    finally:
        channel.close()
    outcome.seconds = time.perf_counter() - started
    return outcome


def bench_load(
    root: Path, sends: int = 64, size: int = 8 * MIB, limits: dict[str, int] | None = None
) -> LoadResult:
    """Provision a pair under ``root``, run ``sends`` concurrent sends of ``size`` bytes."""
    pair = provision_pair(root, segment_size=MIB, extra_limits=limits)
    tokens = issue_many(pair.issuer, pair.lingang.spec, pair.frankfurt.spec, sends, size)
    data = os.urandom(size)
    digest = hashlib.sha256(data).hexdigest()
    outcomes: list[Outcome] = [Outcome(ok=False, seconds=0.0)] * sends
    with pair.running():
        pids = pair.pids()
        idle = each_rss_kib(pids)
        gate = threading.Barrier(sends)

        def client(index: int) -> None:
            gate.wait()  # all start together: the load is the point
            outcomes[index] = _send(pair.lingang.paths.socket, index, tokens[index], data, digest)

        threads = [
            threading.Thread(target=client, args=(i,), name=f"load-{i}") for i in range(sends)
        ]
        with RssSampler(pids, interval=0.2) as sampler:
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            seconds = time.perf_counter() - started
        peak = each_peak_rss_kib(pids)
    failures = [o for o in outcomes if not o.ok]
    return LoadResult(
        sends=sends,
        size_bytes=size,
        max_concurrent_transfers=(limits or {}).get(
            "max_concurrent_transfers", Limits().max_concurrent_transfers
        ),
        seconds=seconds,
        failed=len(failures),
        failures_by_status=dict(collections.Counter(o.status or "no receipt" for o in failures)),
        first_failures=sorted({f"{o.status}: {o.detail}" for o in failures})[:5],
        saw_queued=sum(1 for o in outcomes if o.queued_events),
        highest_position=max((o.highest_position for o in outcomes), default=0),
        idle_rss_kib=idle,
        peak_rss_kib=peak,
        rss_samples_kib=sampler.samples,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__)
    parser.add_argument("--sends", type=int, default=64, help="concurrent sends (default 64)")
    parser.add_argument("--size-mib", type=int, default=8, help="MiB per send (default 8)")
    parser.add_argument(
        "--max-concurrent", type=int, help="limits.max_concurrent_transfers (default: the config's)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--dir", type=Path, help="work directory, kept (default: temporary)")
    args = parser.parse_args(argv)
    if args.sends <= 0 or args.size_mib <= 0:
        parser.error("--sends and --size-mib must be positive")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    root = args.dir or Path(tempfile.mkdtemp(prefix="xbgw-load-"))
    root.mkdir(parents=True, exist_ok=True)
    limits = (
        None if args.max_concurrent is None else {"max_concurrent_transfers": args.max_concurrent}
    )
    try:
        result = bench_load(root, args.sends, args.size_mib * MIB, limits)
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    print(result.summary())
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(result), indent=2) + "\n", encoding="utf-8")
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
