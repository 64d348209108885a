"""``make demo``: two gateways in two jurisdictions and one real transfer between them.

Provisions ``lingang`` (CN-SH) and ``frankfurt`` (EU-DE) under ``demo-state/`` -- SoftHSM
tokens with keys made by ``xbgw keys init``, certificates from a throw-away CA, configs --
starts both daemons, issues a passport, sends a generated data set with ``xbgw send``,
fetches it on the other side with ``xbgw fetch``, checks the SHA-256, and stops the daemons.
Re-running starts from a clean ``demo-state/``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from devtools.pair import Gateway, provision_pair
from gateway.cli import parse_size


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
    parser = argparse.ArgumentParser(prog="xbgw-demo", description=__doc__)
    parser.add_argument("--size", type=parse_size, default=parse_size("64MiB"))
    parser.add_argument("--dir", type=Path, default=Path("demo-state"))
    args = parser.parse_args(argv)
    started = time.monotonic()
    root: Path = args.dir.resolve()
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


if __name__ == "__main__":
    sys.exit(main())
