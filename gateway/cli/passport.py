"""``xbgw passport``: issue a passport with an HSM key, inspect one, verify one."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import uuid
from pathlib import Path

from gateway.cli.common import key_ref, open_hsm, read_token
from gateway.errors import UsageError
from gateway.keys import Purpose


def cmd_passport_issue(args: argparse.Namespace) -> int:
    from gateway.passport import PassportClaims, XbgwClaims, issue

    kid = key_ref(args.kid, "--kid")
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
        key_ref(kid, "--issuer")
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
