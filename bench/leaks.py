"""Native memory per transfer: ``python -m bench.leaks N`` (or :func:`measure` from a runner).

N small transfers lingang -> frankfurt in one process, each fetched back: a real
``Sender`` wired to a real ``Receiver`` through ``tests.loopback.LoopbackLink`` (no sockets),
real SQLite ledgers and spools, and real SoftHSM tokens -- one per gateway plus the passport
issuer's, all behind ``gateway.hsm.Hsm`` as the daemon uses it. Each transfer makes HSM
session objects on both sides (ECDH on the receiver, the data key's wrap into the spool and
its unwrap at the fetch), which is where SoftHSM 2.6 keeps memory after the objects are
destroyed, until ``C_Finalize``.

Every ``--every`` transfers it prints RSS and the object counts each token reports, then the
growth per transfer after ``--warmup`` transfers (allocator, SQLite cache and JIT-like
warm-up of CPython's caches are over by then). ``--no-recycle`` turns off the periodic
restart of the library (``gateway.hsm.RECYCLE_AFTER_SESSION_OBJECTS``) to show the growth
it prevents. The last line is a JSON object (what :func:`measure` returns).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import child_env

SMALL = 4096
WARMUP = 1000
EVERY = 2000
USER_PIN = "bench-leaks-1234"
SO_PIN = "bench-leaks-so-12345678"
GATEWAYS = (("lingang", "CN-SH"), ("frankfurt", "EU-DE"))
ISSUER = "dpo"


def measure(
    transfers: int,
    *,
    recycle: bool = True,
    warmup: int = WARMUP,
    every: int = EVERY,
    timeout: float = 3600.0,
) -> dict[str, Any]:
    """Run this module in a child process (a fresh RSS and PKCS#11 state); its JSON result."""
    args = [sys.executable, "-m", "bench.leaks", str(transfers)]
    args += ["--warmup", str(warmup), "--every", str(every)]
    if not recycle:
        args.append("--no-recycle")
    done = subprocess.run(
        args, check=False, capture_output=True, text=True, timeout=timeout, env=child_env()
    )
    if done.returncode != 0:
        raise RuntimeError(f"leak benchmark failed ({done.returncode}): {done.stderr.strip()}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


@dataclass
class Sample:
    transfers: int
    rss_kib: int
    session_objects: int  # live on both tokens: 0 means each was destroyed
    created_since_restart: int
    library_restarts: int


def run(transfers: int, root: Path, every: int, warmup: int) -> list[Sample]:
    """The transfers, sampled; SOFTHSM2_CONF must not be loaded yet in this process."""
    from devtools.provision import init_softhsm_token, write_softhsm_conf

    conf = write_softhsm_conf(root / "softhsm")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    for label in (*(g[0] for g in GATEWAYS), ISSUER):
        init_softhsm_token(conf, label, USER_PIN, SO_PIN)
    rig = _Rig(root)
    try:
        samples: list[Sample] = []
        for n in range(1, transfers + 1):
            rig.transfer(n)
            if n in (warmup, transfers) or n % every == 0:
                samples.append(rig.sample(n))
                _print_sample(samples[-1])
        return samples
    finally:
        rig.close()


class _Rig:
    """lingang and frankfurt as :mod:`tests.loopback` wires them, with real tokens."""

    def __init__(self, root: Path) -> None:
        from devtools.provision import SOFTHSM_MODULE
        from gateway.config import Limits
        from gateway.hsm import Hsm
        from gateway.keyring import KeyRing
        from gateway.keys import Purpose
        from gateway.ledger import Ledger
        from gateway.receiver import Receiver
        from gateway.sender import Sender
        from gateway.spool import Spool
        from tests.loopback import LoopbackLink, gateway_config

        module = SOFTHSM_MODULE
        self.issuer = Hsm.open(module, ISSUER, USER_PIN)
        self.issuer.generate(Purpose.SIGNING)
        self.hsms = {gid: Hsm.open(module, gid, USER_PIN) for gid, _ in GATEWAYS}
        for hsm in self.hsms.values():
            for purpose in Purpose:
                hsm.generate(purpose)
        self.link = LoopbackLink()
        self.ledgers: list[Any] = []
        self.senders: dict[str, Any] = {}
        self.receivers: dict[str, Any] = {}
        self.configs: dict[str, Any] = {}
        self.spools: dict[str, Any] = {}
        for me, peer in (GATEWAYS, GATEWAYS[::-1]):
            state = root / me[0]
            config = gateway_config(
                state, me, peer, self.hsms[peer[0]], self.issuer, Limits(partner_wait_seconds=0)
            )
            hsm = self.hsms[me[0]]
            ledger = Ledger(state / "ledger.sqlite3")
            ring = KeyRing(me[0], ledger, hsm, config.keys)
            spool = Spool(state / "spool")
            self.ledgers.append(ledger)
            self.configs[me[0]] = config
            self.spools[me[0]] = spool
            self.senders[me[0]] = Sender(config, hsm, ring, ledger, self.link)
            self.receivers[me[0]] = Receiver(config, hsm, ring, ledger, spool)
        for me, peer in (GATEWAYS, GATEWAYS[::-1]):
            self.link.receivers[peer[0]] = (
                self.receivers[peer[0]],
                self.configs[peer[0]].partner(me[0]),
            )
        self.payload = os.urandom(SMALL)

    def transfer(self, n: int) -> None:
        from gateway.envelope.stream import read_stream

        token = _passport(self.issuer, f"leak-{n}")
        data = self.payload[:-8] + n.to_bytes(8, "big")
        receipt = self.senders["lingang"].send("frankfurt", token, iter([data]), len(data))
        out = io.BytesIO()
        with self.spools["frankfurt"].open_committed(receipt.transfer_id) as src:
            read_stream(src, out, "frankfurt", self.hsms["frankfurt"])
        if out.getvalue() != data:
            raise RuntimeError(f"transfer {n}: fetched bytes differ from what was sent")
        self.link.calls.clear()

    def sample(self, n: int) -> Sample:
        counts = [hsm.count_objects() for hsm in self.hsms.values()]
        hsm = self.hsms["frankfurt"]
        return Sample(
            transfers=n,
            rss_kib=rss_kib(),
            session_objects=sum(c.session for c in counts),
            created_since_restart=counts[0].created_since_restart,
            library_restarts=hsm.library_restarts,
        )

    def close(self) -> None:
        for ledger in self.ledgers:
            ledger.close()
        for hsm in (*self.hsms.values(), self.issuer):
            hsm.close()


def _passport(issuer: Any, jti: str) -> str:
    from gateway.keys import KeyRef, Purpose
    from gateway.passport import issue
    from gateway.passport_claims import PassportClaims, XbgwClaims, scoped_jti

    now = int(time.time())
    claims = PassportClaims(
        iss=ISSUER,
        jti=scoped_jti(ISSUER, jti),
        iat=now,
        nbf=now,
        exp=now + 3600,
        aud="frankfurt",
        sub=None,
        xbgw=XbgwClaims(
            sender="lingang",
            src="CN-SH",
            dst="EU-DE",
            classification="general",
            pi="none",
            subjects=0,
            purpose="leak benchmark",
            legal_basis="test",
            byte_limit=SMALL,
        ),
    )
    return issue(claims, issuer, KeyRef(ISSUER, Purpose.SIGNING, 1))


def _print_sample(sample: Sample) -> None:
    print(
        f"{sample.transfers:>8} transfers  RSS {sample.rss_kib:>8} KiB  "
        f"live session objects {sample.session_objects}  "
        f"made since library start {sample.created_since_restart:>6}  "
        f"library restarts {sample.library_restarts}",
        flush=True,
    )


def summarise(samples: list[Sample], warmup: int, recycle: bool) -> dict[str, Any]:
    first = next(sample for sample in samples if sample.transfers >= warmup)
    last = samples[-1]
    measured = [sample for sample in samples if sample.transfers >= warmup]
    return {
        "transfers": last.transfers,
        "recycle": recycle,
        "rss_kib_after_warmup": first.rss_kib,
        "rss_kib_end": last.rss_kib,
        # The least-squares slope over every sample after the warm-up, not the difference of
        # two: RSS moves by a megabyte either way as SoftHSM is restarted and the allocator
        # returns memory, and two samples would read that noise as growth or shrinkage.
        "bytes_per_transfer": statistics.linear_regression(
            [float(s.transfers) for s in measured], [s.rss_kib * 1024.0 for s in measured]
        ).slope,
        "live_session_objects_end": last.session_objects,
        "library_restarts": last.library_restarts,
        "samples": [sample.__dict__ for sample in samples],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.leaks", description=__doc__)
    parser.add_argument("transfers", type=int, help="how many small transfers (e.g. 20000)")
    parser.add_argument("--every", type=int, default=EVERY, help="sample every N transfers")
    parser.add_argument("--warmup", type=int, default=WARMUP, help="growth counted after this")
    parser.add_argument(
        "--no-recycle", action="store_true", help="never restart the library (the old way)"
    )
    args = parser.parse_args(argv)
    if args.transfers <= args.warmup:
        parser.error(f"transfers must exceed --warmup ({args.warmup})")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    if args.no_recycle:
        import gateway.hsm

        gateway.hsm.RECYCLE_AFTER_SESSION_OBJECTS = sys.maxsize
    with tempfile.TemporaryDirectory(prefix="xbgw-bench-leaks-") as scratch:
        started = time.monotonic()
        samples = run(args.transfers, Path(scratch), args.every, args.warmup)
        result = summarise(samples, args.warmup, recycle=not args.no_recycle)
        result["seconds"] = round(time.monotonic() - started, 1)
    print(
        f"growth after {args.warmup} transfers: {result['bytes_per_transfer']:.0f} bytes per "
        f"transfer ({'with' if result['recycle'] else 'without'} library restarts)"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
