"""The xbgw benchmark harness: ``python -m bench`` (``make bench``).

Two real gateway daemons (the demo pair of ``devtools.pair``: SoftHSM, mutual TLS on
loopback, SQLite) measured against a control in the same run:

* ``bench.runner``    -- orchestration, the table and ``bench/results.json``;
* ``bench.control``   -- the control: a byte-counting gRPC server (its own process) and the
  client-streaming upload that feeds it with the gateway's certificates and limits;
* ``bench.localapi``  -- the harness's client of the daemon's local Unix-socket API;
* ``bench.daemons``   -- what /proc says about the daemons (peak RSS, CPU time), and HSM
  operation counts scraped from the daemon's metrics endpoint;
* ``bench.passports`` -- issues passports in bulk in one child process (issuer's token);
* ``bench.hsmbench``  -- HSM operation rates, in a child process against a gateway token;
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def child_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this environment) with the repository first on ``PYTHONPATH``.

    ``bench`` is not an installed package: child processes running ``python -m bench.<x>``
    find it through this, whatever their working directory.
    """
    env = dict(os.environ if base is None else base)
    rest = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + rest if rest else "")
    env.setdefault("GRPC_VERBOSITY", "ERROR")
    return env
