"""Test helpers for real SoftHSM tokens.

SoftHSM reads its token directory once, when the library is initialised in a process, so a
process cannot see tokens created afterwards. The in-process tests therefore take tokens from
a pool made before the library is first loaded; tests that start daemons or the CLI make
their own token directory and pass ``SOFTHSM2_CONF`` to the child process.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
SO_PIN = "so-pin-12345678"
USER_PIN = "user-pin-1234"


@dataclass(frozen=True)
class TokenSpec:
    """Everything needed to open one SoftHSM token."""

    module: str
    label: str
    pin: str
    conf: Path


def write_conf(directory: Path) -> Path:
    """Make a SoftHSM token directory and config under ``directory``; return the config."""
    tokens = directory / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n",
        encoding="utf-8",
    )
    return conf


def init_token(conf: Path, label: str, pin: str = USER_PIN) -> TokenSpec:
    """Initialise a token with ``softhsm2-util`` (about 12 ms)."""
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    subprocess.run(
        [
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            label,
            "--so-pin",
            SO_PIN,
            "--pin",
            pin,
        ],
        check=True,
        capture_output=True,
        env=env,
    )
    return TokenSpec(SOFTHSM_MODULE, label, pin, conf)
