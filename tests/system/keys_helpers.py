"""The key verbs and a transfer, as the system tests of key lifecycle run them: through the
CLI of a running pair, checking exit codes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from devtools.pair import Gateway, Pair


def ok(gateway: Gateway, *args: str) -> str:
    """``xbgw ARGS`` against ``gateway``, which must succeed; its standard output."""
    done = gateway.cli(*args)
    assert done.returncode == 0, f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def status(gateway: Gateway, *where: str) -> dict[str, dict[str, Any]]:
    """``xbgw keys status --json``, by key reference."""
    data = json.loads(ok(gateway, "keys", "status", "--json", *where))
    return {entry["key"]: entry for entry in data["keys"]}


def send(pair: Pair, tmp_path: Path, size: int, token: str | None = None) -> tuple[str, str]:
    """Send ``size`` random bytes lingang -> frankfurt (under ``token``, or a passport issued
    for it); (transfer id, sha256)."""
    data = os.urandom(size)
    source = tmp_path / f"data-{size}-{os.urandom(4).hex()}.bin"
    source.write_bytes(data)
    token = token or pair.passport(byte_limit=size + 1)
    out = ok(pair.lingang, "send", str(source), "--to", "frankfurt", "--passport", token, "-q")
    transfer_id = next(line.split()[1] for line in out.splitlines() if line.startswith("delivered"))
    source.unlink()
    return transfer_id, hashlib.sha256(data).hexdigest()


def fetched(gateway: Gateway, tmp_path: Path, transfer_id: str) -> str:
    """The SHA-256 of what ``xbgw fetch`` gives back for ``transfer_id``."""
    target = tmp_path / f"fetched-{transfer_id}"
    ok(gateway, "fetch", transfer_id, "-o", str(target))
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    target.unlink()
    return digest
