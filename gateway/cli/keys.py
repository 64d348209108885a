"""``xbgw keys``: create, list and export the key versions on an HSM token."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.cli.common import EXIT_FAILURE, open_hsm
from gateway.errors import UsageError
from gateway.hsm import KeyInfo
from gateway.keys import Purpose


def cmd_keys_init(args: argparse.Namespace) -> int:
    # An issuer's token needs only a signing key: keys it never uses are only attack surface.
    wanted = set(args.purposes or Purpose)
    with open_hsm(args) as hsm:
        made = []
        for purpose in (p for p in Purpose if p in wanted):
            if hsm.versions(purpose):
                print(f"{purpose.label}: already has versions {hsm.versions(purpose)}; kept")
                continue
            version = hsm.generate(purpose, 1)
            made.append(f"{purpose.label} v{version}")
        print("created " + ", ".join(made) if made else "nothing to create")
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    with open_hsm(args) as hsm:
        infos = hsm.list_keys()
    states = _key_states(args)
    unsafe = [info for info in infos if not info.safe]
    flawed = [info for info in infos if info.problems]
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "purpose": i.purpose.value,
                        "version": i.version,
                        "state": states.get((i.purpose, i.version)),
                        "sensitive": i.sensitive,
                        "always_sensitive": i.always_sensitive,
                        "extractable": i.extractable,
                        "never_extractable": i.never_extractable,
                        "modifiable": i.modifiable,
                        "copyable": i.copyable,
                        "capabilities": list(i.capabilities),
                    }
                    for i in infos
                ],
                indent=2,
            )
        )
    else:
        _print_key_table(infos, states)
    if unsafe:
        print(f"WARNING: {len(unsafe)} key(s) could have left the HSM in clear", file=sys.stderr)
    for info in flawed:
        print(
            f"WARNING: {info.purpose.value} v{info.version} " + " and ".join(info.problems),
            file=sys.stderr,
        )
    if any(info.modifiable or info.extra_capabilities for info in flawed):
        print(
            "replace such keys with 'xbgw keys rotate PURPOSE' (see README, Rotating keys)",
            file=sys.stderr,
        )
    # Exit 1 on anything to report, so that monitoring and scripts see it without parsing.
    return EXIT_FAILURE if flawed else 0


def _key_states(args: argparse.Namespace) -> dict[tuple[Purpose, int], str]:
    """The lifecycle state of each version, from the ledger the daemon uses (with -c); the
    token alone does not know which version is in use."""
    if not args.config:
        return {}
    from gateway.config import load_config
    from gateway.ledger import LEDGER_FILE, open_ledger

    config = load_config(args.config)
    if config.state.database is None and not (config.state_dir / LEDGER_FILE).exists():
        return {}
    ledger = open_ledger(config)
    try:
        return {(k.purpose, k.version): k.state.value for k in ledger.key_versions()}
    finally:
        ledger.close()


def _print_key_table(infos: Sequence[KeyInfo], states: dict[tuple[Purpose, int], str]) -> None:
    print(f"{'PURPOSE':<10} {'VER':>4} {'STATE':<13} {'SENSITIVE':<10} {'EXTRACTABLE':<12} USAGE")
    for info in infos:
        state = states.get((info.purpose, info.version), "-")
        sensitive = "always" if info.always_sensitive else ("yes" if info.sensitive else "NO")
        extractable = "never" if info.never_extractable else ("YES" if info.extractable else "no")
        print(
            f"{info.purpose.value:<10} {info.version:>4} {state:<13} {sensitive:<10} "
            f"{extractable:<12} {','.join(info.capabilities)}"
        )


def cmd_keys_public(args: argparse.Namespace) -> int:
    purpose = Purpose(args.purpose)
    with open_hsm(args) as hsm:
        version = args.version
        if version is None:
            version = max(hsm.versions(purpose), default=0)
        if not version:
            raise UsageError(f"the token has no {purpose.label} key; run 'xbgw keys init'")
        pem = hsm.public_key(purpose, version).public_bytes(
            Encoding.PEM, PublicFormat.SubjectPublicKeyInfo
        )
    if args.output:
        Path(args.output).write_bytes(pem)
        print(f"wrote {purpose.label} v{version} public key to {args.output}")
    else:
        sys.stdout.write(pem.decode("ascii"))
    return 0
