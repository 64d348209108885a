"""What every ``xbgw`` verb shares: exit codes, argument helpers, passports read from the
command line, and opening the HSM named by the HSM arguments.

Imported by the verb modules and by :mod:`gateway.cli`; it imports none of them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from gateway.errors import UsageError, XbgwError
from gateway.hsm import Hsm
from gateway.keys import KeyRef
from gateway.secrets import PinSource

DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
EXIT_FAILURE = 1
EXIT_USAGE = 2
# sysexits EX_CONFIG: the configuration or the PIN is wrong; systemd must not retry
# (RestartPreventExitStatus=78), since a retried wrong PIN can lock a real HSM.
EXIT_CONFIG = 78

# 128 + SIGPIPE: how a shell reports a writer whose reader went away.
EXIT_BROKEN_PIPE = 141

_TOKEN = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_SIZE = re.compile(r"^(\d+)\s*([KMGT]i?B?|B)?$", re.IGNORECASE)
_DURATION = re.compile(r"^(\d+)\s*([smhd])$")


# --- argument helpers -----------------------------------------------------------------------


def parse_size(text: str) -> int:
    """``4096``, ``64MiB``, ``1G`` -> bytes (binary multiples)."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 4096, 64MiB, 1GiB)")
    number, unit = int(match.group(1)), (match.group(2) or "B").upper()
    scale = {"B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[unit[0]]
    return number * scale


def parse_duration(text: str) -> int:
    """``90s``, ``15m``, ``2h``, ``7d`` -> seconds."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (examples: 90s, 15m, 2h)")
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def positive_int(text: str) -> int:
    """A key version: 1 or more."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return int(text)


def key_ref(text: str, option: str) -> KeyRef:
    """A key reference given to ``option``; a malformed one is a usage error naming it."""
    try:
        return KeyRef.parse(text)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None


def read_token(value: str, option: str = "passport") -> str:
    """A passport given on the command line as ``option``: a file holding it, the token
    itself, or ``-`` for stdin.

    A file wins when one is there; otherwise the text must look like a token, so that a
    mistyped path is named as one instead of reaching the verifier as a broken token."""
    if value == "-":
        return sys.stdin.read().strip()
    if os.path.isfile(value):
        try:
            return Path(value).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read a passport from {value}: {exc}") from None
    token = value.strip()
    if _TOKEN.fullmatch(token):
        return token
    shown = value if len(value) <= 80 else value[:77] + "..."
    if os.path.exists(value):
        raise UsageError(f"{option} {shown}: not a regular file; name the file holding the token")
    raise UsageError(
        f"{option} {shown}: no such file, and not a passport token "
        "(three dot-separated base64url parts)"
    )


# --- errors, as the person reads them ------------------------------------------------------


def error_line(exc: XbgwError, verbose: bool) -> str:
    """``xbgw: what happened: what to do``; ``verbose`` adds the status the error maps to
    (the gRPC status a daemon answered, or would answer) and the notes beneath it, such as
    gRPC's own words -- for whoever debugs, not for whoever acts first."""
    if not verbose:
        return f"xbgw: {exc}"
    lines = [f"xbgw: {exc} [{exc.grpc_status}]"]
    lines.extend(f"xbgw:   {note}" for note in getattr(exc, "__notes__", ()))
    return "\n".join(lines)


@contextlib.contextmanager
def closed_pipe_exits_quietly() -> Iterator[None]:
    """``xbgw status | head -1``: when the reader of stdout goes away, exit at once and
    silently, with status 141 (128 + SIGPIPE) as cat, grep and git do: no traceback, no
    "Broken pipe" line, yet ``set -o pipefail`` still sees that the output was cut short
    (0 would hide a truncated ``xbgw audit export | gzip``).

    stdout is flushed here, inside the guard, not at interpreter exit; and after a broken
    pipe it is pointed at /dev/null, so that the flush at exit finds nothing to fail on (the
    Python documentation's "Note on SIGPIPE")."""
    try:
        try:
            yield
        finally:
            sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        raise SystemExit(EXIT_BROKEN_PIPE) from None


# --- the HSM --------------------------------------------------------------------------------


def add_hsm_arguments(parser: argparse.ArgumentParser, config: bool = True) -> None:
    """``--module``, ``--token``, a PIN source and (``config``) ``-c``, for ``open_hsm``."""
    group = parser.add_argument_group("HSM (or take them from --config)")
    if config:
        group.add_argument("-c", "--config", help="gateway YAML file to take the HSM settings from")
    group.add_argument("--module", help=f"PKCS#11 module path (default {DEFAULT_MODULE})")
    group.add_argument("--token", help="token label")
    pin = group.add_mutually_exclusive_group()
    pin.add_argument("--pin-file", help="file holding the user PIN")
    pin.add_argument("--pin-env", help="environment variable holding the user PIN")
    pin.add_argument("--pin-credential", help="systemd credential holding the user PIN")


def pin_source(args: argparse.Namespace) -> PinSource | None:
    """The PIN source named by ``--pin-file``, ``--pin-env`` or ``--pin-credential``, if any."""
    if args.pin_file:
        return PinSource("file", args.pin_file)
    if args.pin_env:
        return PinSource("env", args.pin_env)
    if args.pin_credential:
        return PinSource("credential", args.pin_credential)
    return None


def open_hsm(args: argparse.Namespace) -> Hsm:
    """Open the HSM from explicit flags, falling back to the gateway config for the rest."""
    module, token, pin = args.module, args.token, pin_source(args)
    if args.config:
        from gateway.config import load_config

        config = load_config(args.config)
        if config.hsm.softhsm_conf is not None:
            # The config wins over an inherited value, as in the daemon.
            os.environ["SOFTHSM2_CONF"] = str(config.hsm.softhsm_conf)
        module = module or str(config.hsm.module)
        token = token or config.hsm.token
        pin = pin or config.hsm.pin
    if not token:
        raise UsageError("name the HSM token with --token or --config")
    if pin is None:
        raise UsageError("give the PIN source with --pin-file, --pin-env or --pin-credential")
    return Hsm.open(module or DEFAULT_MODULE, token, pin.read())
