"""The ``xbgw`` command line.

Every verb is a thin client: HSM verbs open the token named on the command line (or in the
gateway config), daemon verbs talk to the local Unix socket. Errors from the one error tree
are caught once, in :func:`main`, and printed as one line with a non-zero exit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway import DEFAULT_SOCKET
from gateway.errors import ConfigError, HsmPinError, UsageError, XbgwError
from gateway.hsm import Hsm, KeyInfo, PinSource
from gateway.keys import KeyRef, Purpose

DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
EXIT_FAILURE = 1
EXIT_USAGE = 2
# sysexits EX_CONFIG: the configuration or the PIN is wrong; systemd must not retry
# (RestartPreventExitStatus=78), since a retried wrong PIN can lock a real HSM.
EXIT_CONFIG = 78

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


def _positive_int(text: str) -> int:
    """A key version: 1 or more."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return int(text)


def _key_ref(text: str, option: str) -> KeyRef:
    try:
        return KeyRef.parse(text)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None


def _add_hsm_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("HSM (or take them from --config)")
    group.add_argument("-c", "--config", help="gateway YAML file to take the HSM settings from")
    group.add_argument("--module", help=f"PKCS#11 module path (default {DEFAULT_MODULE})")
    group.add_argument("--token", help="token label")
    pin = group.add_mutually_exclusive_group()
    pin.add_argument("--pin-file", help="file holding the user PIN")
    pin.add_argument("--pin-env", help="environment variable holding the user PIN")
    pin.add_argument("--pin-credential", help="systemd credential holding the user PIN")


def _pin_source(args: argparse.Namespace) -> PinSource | None:
    if args.pin_file:
        return PinSource("file", args.pin_file)
    if args.pin_env:
        return PinSource("env", args.pin_env)
    if args.pin_credential:
        return PinSource("credential", args.pin_credential)
    return None


def open_hsm(args: argparse.Namespace) -> Hsm:
    """Open the HSM from explicit flags, falling back to the gateway config for the rest."""
    module, token, pin = args.module, args.token, _pin_source(args)
    if args.config:
        from gateway.config import load_config

        config = load_config(args.config)
        if config.hsm.softhsm_conf is not None:
            os.environ.setdefault("SOFTHSM2_CONF", str(config.hsm.softhsm_conf))
        module = module or str(config.hsm.module)
        token = token or config.hsm.token
        pin = pin or config.hsm.pin
    if not token:
        raise UsageError("name the HSM token with --token or --config")
    if pin is None:
        raise UsageError("give the PIN source with --pin-file, --pin-env or --pin-credential")
    return Hsm.open(module or DEFAULT_MODULE, token, pin.read())


# --- keys -----------------------------------------------------------------------------------


def cmd_keys_init(args: argparse.Namespace) -> int:
    with open_hsm(args) as hsm:
        made = []
        for purpose in Purpose:
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
    unsafe = [info for info in infos if not info.safe]
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "purpose": i.purpose.value,
                        "version": i.version,
                        "state": "current" if i.version == _latest(infos, i.purpose) else "older",
                        "sensitive": i.sensitive,
                        "always_sensitive": i.always_sensitive,
                        "extractable": i.extractable,
                        "never_extractable": i.never_extractable,
                        "capabilities": list(i.capabilities),
                    }
                    for i in infos
                ],
                indent=2,
            )
        )
    else:
        _print_key_table(infos)
    if unsafe:
        print(f"WARNING: {len(unsafe)} key(s) could have left the HSM in clear", file=sys.stderr)
        return EXIT_FAILURE
    return 0


def _print_key_table(infos: Sequence[KeyInfo]) -> None:
    print(f"{'PURPOSE':<10} {'VER':>4} {'STATE':<8} {'SENSITIVE':<10} {'EXTRACTABLE':<12} USAGE")
    for info in infos:
        state = "current" if info.version == _latest(infos, info.purpose) else "older"
        sensitive = "always" if info.always_sensitive else ("yes" if info.sensitive else "NO")
        extractable = "never" if info.never_extractable else ("YES" if info.extractable else "no")
        print(
            f"{info.purpose.value:<10} {info.version:>4} {state:<8} {sensitive:<10} "
            f"{extractable:<12} {','.join(info.capabilities)}"
        )


def _latest(infos: Sequence[KeyInfo], purpose: Purpose) -> int:
    return max(info.version for info in infos if info.purpose is purpose)


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


# --- passports ------------------------------------------------------------------------------


def cmd_passport_issue(args: argparse.Namespace) -> int:
    from gateway.passport import PassportClaims, XbgwClaims, issue

    kid = _key_ref(args.kid, "--kid")
    if kid.purpose is not Purpose.SIGNING:
        raise UsageError(f"--kid: {kid} is not a signing key (ISSUER/signing/VERSION)")
    now = int(time.time())
    sub = args.sub
    if args.file:
        try:
            sub = _sha256_file(Path(args.file))
        except OSError as exc:
            raise UsageError(f"--file: cannot read {args.file}: {exc.strerror}") from None
    claims = PassportClaims(
        iss=kid.owner,
        jti=args.jti or uuid.uuid4().hex,
        iat=now,
        nbf=now,  # exp - nbf is exactly --ttl; verifiers allow for clock skew (leeway)
        exp=now + args.ttl,
        aud=args.to,
        sub=sub,
        xbgw=XbgwClaims(
            sender=args.sender,
            src=args.src,
            dst=args.dst,
            classification=args.classification,
            pi=args.pi,
            subjects=args.subjects,
            purpose=args.purpose,
            legal_basis=args.legal_basis,
            byte_limit=args.byte_limit,
        ),
    )
    with open_hsm(args) as hsm:
        token = issue(claims, hsm, kid)
    if args.output:
        Path(args.output).write_text(token + "\n", encoding="ascii")
        print(f"passport {claims.jti} written to {args.output}", file=sys.stderr)
    else:
        print(token)
    return 0


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as src:
        for block in iter(lambda: src.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_token(value: str) -> str:
    if value == "-":
        return sys.stdin.read().strip()
    if os.path.isfile(value):
        try:
            return Path(value).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read a passport from {value}: {exc}") from None
    return value.strip()


def cmd_passport_inspect(args: argparse.Namespace) -> int:
    from gateway.passport import inspect

    header, payload = inspect(read_token(args.token))
    print("# UNVERIFIED: the signature was not checked; use 'xbgw passport verify'")
    print(json.dumps({"header": header, "claims": payload}, indent=2, sort_keys=True))
    return 0


def cmd_passport_verify(args: argparse.Namespace) -> int:
    from gateway.passport import PassportVerifier, load_public_key_pem

    trusted = {}
    audience = args.audience
    leeway = 60
    if args.config:
        from gateway.config import load_config

        config = load_config(args.config)
        trusted.update(config.trusted_issuer_keys())
        audience = audience or config.id
        leeway = config.limits.passport_leeway_seconds
    for item in args.issuer or []:
        kid, _, pem_path = item.partition("=")
        if not pem_path:
            raise UsageError(f"--issuer takes KID=PEMFILE, got {item!r}")
        _key_ref(kid, "--issuer")
        try:
            trusted[kid] = load_public_key_pem(Path(pem_path).read_bytes())
        except OSError as exc:
            raise UsageError(f"--issuer {kid}: cannot read {pem_path}: {exc.strerror}") from None
        except ValueError as exc:
            raise UsageError(f"--issuer {kid}: {pem_path}: {exc}") from None
    if not trusted:
        raise UsageError("no trusted issuer: give --issuer KID=PEMFILE or --config")
    if not audience:
        raise UsageError("give --audience (this gateway's id) or --config")
    try:
        verifier = PassportVerifier(trusted, audience=audience, leeway_seconds=leeway)
    except ValueError as exc:  # a non-signing issuer key id, an invalid audience
        raise UsageError(str(exc)) from None
    verified = verifier.verify(read_token(args.token))
    claims = verified.claims
    terms = claims.xbgw
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(claims.exp))
    print(
        f"valid passport {claims.jti}: {terms.sender} ({terms.src}) -> {claims.aud} "
        f"({terms.dst}), {terms.classification}, up to {terms.byte_limit} bytes, "
        f"signed by {verified.kid}, expires {expires}"
    )
    return 0


# --- parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xbgw",
        description="Cross-border data exchange gateway: keys, passports, transfers.",
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")

    keys = verbs.add_parser("keys", help="HSM key versions").add_subparsers(
        dest="keys_verb", required=True, metavar="ACTION"
    )
    init = keys.add_parser("init", help="create version 1 of every key purpose on a token")
    _add_hsm_arguments(init)
    init.set_defaults(func=cmd_keys_init)
    listing = keys.add_parser("list", help="key versions with the flags the HSM reports")
    _add_hsm_arguments(listing)
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=cmd_keys_list)
    public = keys.add_parser("public", help="print a transport or signing public key (PEM)")
    _add_hsm_arguments(public)
    public.add_argument("--purpose", choices=["transport", "signing"], default="signing")
    public.add_argument("--version", type=_positive_int, help="key version (default: newest)")
    public.add_argument("-o", "--output", help="write the PEM to this file")
    public.set_defaults(func=cmd_keys_public)

    passport = verbs.add_parser("passport", help="data passports").add_subparsers(
        dest="passport_verb", required=True, metavar="ACTION"
    )
    issue = passport.add_parser("issue", help="sign a passport with an issuer key in the HSM")
    _add_hsm_arguments(issue)
    issue.add_argument("--kid", required=True, help="issuer key: ISSUER/signing/VERSION")
    issue.add_argument("--to", required=True, help="receiving gateway id (aud)")
    issue.add_argument("--sender", required=True, help="sending gateway id")
    issue.add_argument("--src", required=True, help="source jurisdiction, e.g. CN-SH")
    issue.add_argument("--dst", required=True, help="destination jurisdiction, e.g. EU-DE")
    issue.add_argument("--classification", default="general")
    issue.add_argument("--pi", choices=["none", "personal", "sensitive"], default="none")
    issue.add_argument("--subjects", type=int, default=0, help="number of data subjects")
    issue.add_argument("--purpose", required=True, help="purpose of the transfer")
    issue.add_argument("--legal-basis", required=True, help="e.g. CAC filing number, GDPR SCC")
    issue.add_argument("--byte-limit", type=parse_size, required=True, help="e.g. 64MiB")
    issue.add_argument("--ttl", type=parse_duration, default=3600, help="lifetime, e.g. 2h")
    issue.add_argument("--jti", help="transfer id (default: random)")
    dataset = issue.add_mutually_exclusive_group()
    dataset.add_argument("--sub", help="dataset SHA-256 (hex)")
    dataset.add_argument("--file", help="compute the dataset SHA-256 from this file")
    issue.add_argument("-o", "--output", help="write the token to this file")
    issue.set_defaults(func=cmd_passport_issue)

    inspect = passport.add_parser("inspect", help="show a passport's header and claims")
    inspect.add_argument("token", help="the token, a file holding it, or - for stdin")
    inspect.set_defaults(func=cmd_passport_inspect)

    verify = passport.add_parser("verify", help="verify a passport as a gateway would")
    verify.add_argument("token", help="the token, a file holding it, or - for stdin")
    verify.add_argument("-c", "--config", help="gateway YAML: trusted issuers and audience")
    verify.add_argument("--issuer", action="append", help="trusted issuer KID=PEMFILE")
    verify.add_argument("--audience", help="this gateway's id")
    verify.set_defaults(func=cmd_passport_verify)

    _add_daemon_verbs(verbs)
    return parser


def _daemon_verb(name: str) -> Callable[[argparse.Namespace], int]:
    """A verb from ``cli_daemon``, imported only when it runs."""

    def run(args: argparse.Namespace) -> int:
        from gateway import cli_daemon

        command: Callable[[argparse.Namespace], int] = getattr(cli_daemon, name)
        return command(args)

    return run


def _add_daemon_verbs(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = verbs.add_parser("serve", help="run the gateway daemon")
    serve.add_argument("-c", "--config", required=True, help="gateway YAML file")
    serve.set_defaults(func=_daemon_verb("cmd_serve"))

    def client(name: str, help_text: str) -> argparse.ArgumentParser:
        parser = verbs.add_parser(name, help=help_text)
        where = parser.add_mutually_exclusive_group()
        where.add_argument("-c", "--config", help="gateway YAML (for its socket path)")
        where.add_argument(
            "--socket", help=f"local socket (default $XBGW_SOCKET or {DEFAULT_SOCKET})"
        )
        return parser

    send = client("send", "send a file to a partner gateway")
    send.add_argument("file")
    send.add_argument("--to", required=True, help="partner gateway id")
    send.add_argument("--passport", required=True, help="the passport token or a file holding it")
    send.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    send.set_defaults(func=_daemon_verb("cmd_send"))

    inbox = client("inbox", "list committed inbound transfers")
    inbox.set_defaults(func=_daemon_verb("cmd_inbox"))

    fetch = client("fetch", "write a received transfer's plaintext to a file")
    fetch.add_argument("transfer_id")
    fetch.add_argument("-o", "--output", required=True)
    fetch.set_defaults(func=_daemon_verb("cmd_fetch"))

    status = client("status", "gateway identity and recent transfers")
    status.set_defaults(func=_daemon_verb("cmd_status"))


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except UsageError as exc:
        print(f"xbgw: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ConfigError, HsmPinError) as exc:
        print(f"xbgw: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except XbgwError as exc:
        print(f"xbgw: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:  # a file named on the command line: say which and why
        where = f" {exc.filename}" if exc.filename else ""
        print(f"xbgw:{where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("xbgw: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
