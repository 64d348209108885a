"""Test helpers for real SoftHSM tokens.

SoftHSM reads its token directory once, when the library is initialised in a process, so a
process cannot see tokens created afterwards. The in-process tests therefore take tokens from
a pool made before the library is first loaded; tests that start daemons or the CLI make
their own token directory and pass ``SOFTHSM2_CONF`` to the child process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from devtools.provision import SOFTHSM_MODULE, init_softhsm_token

__all__ = ["SOFTHSM_MODULE", "SO_PIN", "USER_PIN", "TokenSpec", "init_token"]

SO_PIN = "so-pin-12345678"
USER_PIN = "user-pin-1234"


@dataclass(frozen=True)
class TokenSpec:
    """Everything needed to open one SoftHSM token."""

    module: str
    label: str
    pin: str
    conf: Path


def init_token(conf: Path, label: str, pin: str = USER_PIN) -> TokenSpec:
    """Initialise a token with ``softhsm2-util`` (about 12 ms)."""
    init_softhsm_token(conf, label, pin, SO_PIN)
    return TokenSpec(SOFTHSM_MODULE, label, pin, conf)
