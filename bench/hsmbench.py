"""HSM operation rates: a child process opens a gateway's token with ``gateway.hsm.Hsm``.

Runs while no daemon is up (the two would share the cores). Each operation of the transfer
path is called ``--iterations`` times in one thread after a short warm-up, through the same
adapter methods the daemon calls (its lock, its validation, its session objects):

* ``ecdh``   -- ``Hsm.ecdh``: transport key x an ephemeral peer point (opening a header);
* ``sign``   -- ``Hsm.sign_digest``: signing key over a SHA-256 digest (manifest, receipt);
* ``wrap``   -- ``Hsm.wrap``: a 32-byte data key under the storage key (AES-KWP);
* ``unwrap`` -- ``Hsm.unwrap`` of such a wrapped key;
* ``list``   -- ``Hsm.versions``: a find over key objects (the receiver lists transport keys).

Prints one JSON object: ``{operation: {"iterations", "seconds", "ops_per_s"}}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import child_env

WARMUP = 20


def measure(config: Path, iterations: int, timeout: float = 600.0) -> dict[str, dict[str, float]]:
    """Run this module in a child process against ``config``'s token; its parsed JSON."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.hsmbench",
            "--config",
            str(config),
            "--iterations",
            str(iterations),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
    )
    if done.returncode != 0:
        raise RuntimeError(f"HSM benchmark failed ({done.returncode}): {done.stderr.strip()}")
    result: dict[str, dict[str, float]] = json.loads(done.stdout)
    return result


def _time(call: Callable[[int], Any], iterations: int) -> dict[str, float]:
    for i in range(WARMUP):
        call(i)
    started = time.perf_counter()
    for i in range(iterations):
        call(i)
    seconds = time.perf_counter() - started
    return {"iterations": iterations, "seconds": seconds, "ops_per_s": iterations / seconds}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hsmbench", description=__doc__)
    parser.add_argument("--config", type=Path, required=True, help="gateway YAML")
    parser.add_argument("--iterations", type=int, default=2000)
    args = parser.parse_args(argv)

    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from gateway.config import load_config
    from gateway.hsm import Hsm
    from gateway.keys import CurrentKeys, Purpose

    config = load_config(args.config)
    if config.hsm.softhsm_conf is not None:
        os.environ["SOFTHSM2_CONF"] = str(config.hsm.softhsm_conf)
    points = [
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        for _ in range(64)
    ]
    digests = [os.urandom(32) for _ in range(64)]
    secrets = [os.urandom(32) for _ in range(64)]
    results: dict[str, dict[str, float]] = {}
    with Hsm.open(str(config.hsm.module), config.hsm.token, config.hsm.pin.read()) as hsm:
        keys = CurrentKeys.resolve(hsm, config.hsm.key_versions)
        wrapped = [hsm.wrap(keys.storage, secret) for secret in secrets]
        n = args.iterations
        results["ecdh"] = _time(lambda i: hsm.ecdh(keys.transport, points[i % 64]), n)
        results["sign"] = _time(lambda i: hsm.sign_digest(keys.signing, digests[i % 64]), n)
        results["wrap"] = _time(lambda i: hsm.wrap(keys.storage, secrets[i % 64]), n)
        results["unwrap"] = _time(lambda i: hsm.unwrap(keys.storage, wrapped[i % 64]), n)
        results["list"] = _time(lambda i: hsm.versions(Purpose.TRANSPORT), n)
        for i in range(64):
            if hsm.unwrap(keys.storage, wrapped[i]) != secrets[i]:
                raise RuntimeError("unwrap returned a different key: the HSM is misbehaving")
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
