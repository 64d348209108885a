"""Passports in bulk: one child process opens the issuer's token once and signs N of them.

``xbgw passport issue`` costs a process start (Python, gRPC and PKCS#11 imports, a login) per
passport; a thousand of those would dominate the harness. The claims are the ones
:func:`devtools.provision.issue_passport` makes through the CLI. The child runs with
``SOFTHSM2_CONF`` pointing at the issuer's token directory (set before PKCS#11 loads) and
prints one token per line.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence

from bench import child_env
from devtools.provision import SOFTHSM_MODULE, GatewaySpec, Issuer

PURPOSE = "benchmark transfer"
LEGAL_BASIS = "CAC-SC-2026-0042"


def issue_many(
    issuer: Issuer,
    sender: GatewaySpec,
    receiver: GatewaySpec,
    count: int,
    byte_limit: int,
    ttl_seconds: int = 3600,
) -> list[str]:
    """``count`` passports for ``sender`` -> ``receiver``, each with its own random ``jti``."""
    if count <= 0:
        return []
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.passports",
            "--module",
            SOFTHSM_MODULE,
            "--token",
            issuer.token,
            "--pin-file",
            str(issuer.pin_file),
            "--kid",
            issuer.kid,
            "--sender",
            sender.id,
            "--to",
            receiver.id,
            "--src",
            sender.jurisdiction,
            "--dst",
            receiver.jurisdiction,
            "--byte-limit",
            str(byte_limit),
            "--ttl",
            str(ttl_seconds),
            "--count",
            str(count),
        ],
        check=False,
        capture_output=True,
        text=True,
        env=child_env(issuer.env()),
    )
    if done.returncode != 0:
        raise RuntimeError(f"passport helper failed ({done.returncode}): {done.stderr.strip()}")
    tokens = done.stdout.split()
    if len(tokens) != count:
        raise RuntimeError(f"passport helper printed {len(tokens)} tokens, {count} were asked")
    return tokens


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.passports", description=__doc__)
    parser.add_argument("--module", default=SOFTHSM_MODULE)
    parser.add_argument("--token", required=True)
    parser.add_argument("--pin-file", required=True)
    parser.add_argument("--kid", required=True)
    parser.add_argument("--sender", required=True)
    parser.add_argument("--to", required=True)
    parser.add_argument("--src", required=True)
    parser.add_argument("--dst", required=True)
    parser.add_argument("--byte-limit", type=int, required=True)
    parser.add_argument("--ttl", type=int, default=3600)
    parser.add_argument("--count", type=int, required=True)
    args = parser.parse_args(argv)
    if "SOFTHSM2_CONF" not in os.environ:
        parser.error("SOFTHSM2_CONF must name the issuer's SoftHSM config")

    from gateway.hsm import Hsm
    from gateway.keys import KeyRef
    from gateway.passport import issue
    from gateway.passport_claims import PassportClaims, XbgwClaims, scoped_jti
    from gateway.secrets import PinSource

    kid = KeyRef.parse(args.kid)
    pin = PinSource("file", args.pin_file).read()
    out = []
    with Hsm.open(args.module, args.token, pin) as hsm:
        for _ in range(args.count):
            now = int(time.time())
            claims = PassportClaims(
                iss=kid.owner,
                jti=scoped_jti(kid.owner, uuid.uuid4().hex),
                iat=now,
                nbf=now - 5,
                exp=now + args.ttl,
                aud=args.to,
                xbgw=XbgwClaims(
                    sender=args.sender,
                    src=args.src,
                    dst=args.dst,
                    classification="general",
                    pi="none",
                    subjects=0,
                    purpose=PURPOSE,
                    legal_basis=LEGAL_BASIS,
                    byte_limit=args.byte_limit,
                ),
            )
            out.append(issue(claims, hsm, kid))
    sys.stdout.write("".join(token + "\n" for token in out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
