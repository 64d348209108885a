"""``xbgw passport``: issue a passport with an HSM key, inspect one, verify one."""

from __future__ import annotations

import argparse
import calendar
import datetime
import difflib
import hashlib
import json
import sys
import time
import uuid
from collections.abc import Hashable
from pathlib import Path
from typing import Any

from gateway.cli.common import key_ref, open_hsm, read_token
from gateway.errors import UsageError
from gateway.keys import Purpose


def cmd_passport_issue(args: argparse.Namespace) -> int:
    from gateway.passport import issue
    from gateway.passport_claims import PassportClaims, XbgwClaims, scoped_jti

    kid = key_ref(args.kid, "--kid")
    if kid.purpose is not Purpose.SIGNING:
        raise UsageError(f"--kid: {kid} is not a signing key (ISSUER/signing/VERSION)")
    terms = load_claims_file(args.claims) if args.claims else {}
    terms.update(_flag_terms(args))  # a flag overrides the file; a flag's default does not
    for name in _DEFAULTED:
        terms.setdefault(name, getattr(args, name))
    missing = [flag for name, flag in _REQUIRED.items() if name not in terms]
    if missing:
        raise UsageError(
            f"give {', '.join(missing)} (as flags, or in the --claims file as "
            f"{', '.join(name for name, flag in _REQUIRED.items() if flag in missing)})"
        )
    xbgw = XbgwClaims.from_json(terms)  # PassportClaimsError names the claim: xbgw.<path>
    now = int(time.time())
    sub = args.sub
    if args.file:
        try:
            sub = _sha256_file(Path(args.file))
        except OSError as exc:
            raise UsageError(f"--file: cannot read {args.file}: {exc.strerror}") from None
    claims = PassportClaims(
        iss=kid.owner,
        jti=scoped_jti(kid.owner, args.jti or uuid.uuid4().hex),
        iat=now,
        nbf=now,  # exp - nbf is exactly --ttl; verifiers allow for clock skew (leeway)
        exp=now + args.ttl,
        aud=args.to,
        sub=sub,
        xbgw=xbgw,
    )
    with open_hsm(args) as hsm:
        token = issue(claims, hsm, kid)
    if args.output:
        Path(args.output).write_text(token + "\n", encoding="ascii")
        print(f"passport {claims.jti} written to {args.output}", file=sys.stderr)
    else:
        print(token)
    return 0


# --- the terms: flags and the --claims file -------------------------------------------------

#: Terms whose flags have a default (general, none, 0): it applies when neither the flag
#: nor the --claims file gives the term (the flags' action, ExplicitTerm, tells them apart).
_DEFAULTED = ("classification", "pi", "subjects")
#: Terms a --claims file may give instead of their flag: claim name -> flag.
_REQUIRED = {"purpose": "--purpose", "legal_basis": "--legal-basis"}
#: The transfer itself -- who sends where, how much -- is given by flags only (required).
_FLAG_ONLY = {
    "sender": "--sender",
    "src": "--src",
    "dst": "--dst",
    "byte_limit": "--byte-limit",
}
#: The keys a --claims file may hold: the xbgw claim names (cn_class: classification).
CLAIMS_FILE_KEYS = (
    "classification",
    "cn_class",
    "pi",
    "eu_class",
    "subjects",
    "purpose",
    "legal_basis",
    "exporter",
    "ciio",
    "categories",
    "zone",
    "evidence",
)
EVIDENCE_KEYS = ("kind", "reference", "expires", "article", "module", "tia")
_EVIDENCE_OPTIONS = EVIDENCE_KEYS[2:]
_EVIDENCE_FLAG = "KIND:REFERENCE[:KEY=VALUE,...]"
_EVIDENCE_EXAMPLE = "cac-assessment:CAC-2026-0042:expires=2029-01-31"
_TIME_FORMS = (
    "an ISO date (2029-01-31, meaning 00:00 UTC), an ISO time with a zone "
    "(2029-01-31T12:00:00+08:00) or Unix seconds"
)


def parse_time(value: object) -> int:
    """An expiry as Unix seconds, from an ISO date or time (with a zone) or Unix seconds.

    A date alone means 00:00:00 UTC that day: evidence is treated as expiring at the start
    of the date written, never later. ``ValueError`` says what is accepted.
    """
    if type(value) is int:
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.isdigit():
            return int(text)
        try:
            value = (
                datetime.date.fromisoformat(text)
                if len(text) == 10
                else datetime.datetime.fromisoformat(text)
            )
        except ValueError:
            raise ValueError(f"not a date or time: {_show(text)} (give {_TIME_FORMS})") from None
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            raise ValueError(
                f"{value.isoformat()} has no time zone: add one (Z, +08:00) or give a date"
            )
        return int(value.timestamp())
    if isinstance(value, datetime.date):
        return calendar.timegm(value.timetuple())
    raise ValueError(f"not a date or time: {_show(value)} (give {_TIME_FORMS})")


def _show(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_evidence(text: str) -> dict[str, object]:
    """``--evidence KIND:REFERENCE[:KEY=VALUE,...]`` as an evidence object.

    The first two colons separate the parts (a time in ``expires`` may hold more); options
    are separated by commas. A reference with a colon, or a value with a comma, goes in a
    --claims file. Kinds and values are checked with the other claims.
    """
    parts = text.split(":", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise UsageError(
            f"--evidence {_show(text)}: expected {_EVIDENCE_FLAG}, e.g. {_EVIDENCE_EXAMPLE}"
        )
    entry: dict[str, object] = {"kind": parts[0], "reference": parts[1]}
    for option in parts[2].split(",") if len(parts) == 3 else []:
        key, equals, value = option.partition("=")
        if not equals or key not in _EVIDENCE_OPTIONS:
            raise UsageError(
                f"--evidence {_show(text)}: {_show(option)} is not KEY=VALUE with KEY one of "
                f"{', '.join(_EVIDENCE_OPTIONS)}"
            )
        if key in entry:
            raise UsageError(f"--evidence {_show(text)}: {key} is given twice")
        try:
            entry[key] = parse_time(value) if key == "expires" else value
        except ValueError as exc:
            raise UsageError(f"--evidence {_show(text)}: expires: {exc}") from None
    return entry


class ExplicitTerm(argparse.Action):
    """Store a flag's value and note that it was given: its default must not override the
    --claims file, while the value given must."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
        given: set[str] = set(getattr(namespace, "explicit_terms", ()))
        namespace.explicit_terms = given | {self.dest}


def _flag_terms(args: argparse.Namespace) -> dict[str, object]:
    """The terms given as flags, by claim name (flags not given are left out)."""
    terms: dict[str, object] = {name: getattr(args, name) for name in _FLAG_ONLY}
    for name in getattr(args, "explicit_terms", ()):
        terms[name] = getattr(args, name)
    for name in (
        "eu_class",
        "purpose",
        "legal_basis",
        "exporter",
        "ciio",
        "categories",
        "zone",
    ):
        value = getattr(args, name)
        if value is not None:
            terms[name] = value
    if args.evidence is not None:
        terms["evidence"] = [parse_evidence(text) for text in args.evidence]
    return terms


def load_claims_file(path: str) -> dict[str, object]:
    """The terms in a --claims YAML file, by claim name; ``UsageError`` lists every problem.

    Keys are the xbgw claim names (``cn_class`` may stand for ``classification``) except
    those that name the transfer (sender, src, dst, byte_limit: flags only); a key without a
    value is left out. Dates become Unix seconds and an SCC ``module`` number a string;
    everything else is checked with the claims themselves.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--claims: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"--claims: {path} is not UTF-8 text") from None
    doc, problems = _read_yaml(text, path)
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise UsageError(f"{path}: the top level must be a mapping of claim names")
    terms: dict[str, object] = {}
    for key, value in doc.items():
        if key in _FLAG_ONLY:
            problems.append(f"{path}: {key}: give it with {_FLAG_ONLY[key]}: it names the transfer")
        elif key not in CLAIMS_FILE_KEYS:
            problems.append(f"{path}: {key}: {_unknown(key, CLAIMS_FILE_KEYS)}")
        elif value is not None:
            terms[str(key)] = value
    if "cn_class" in terms:
        if "classification" in terms:
            problems.append(f"{path}: cn_class: the same claim as classification: give one")
        terms["classification"] = terms.pop("cn_class")
    if "evidence" in terms:
        terms["evidence"] = _file_evidence(path, terms["evidence"], problems)
    if problems:
        raise UsageError("\n".join(problems))
    return terms


def _file_evidence(path: str, value: object, problems: list[str]) -> object:
    if not isinstance(value, list):
        problems.append(f"{path}: evidence: expected a list of mappings, got {_kind(value)}")
        return value
    entries: list[object] = []
    for i, entry in enumerate(value):
        where = f"{path}: evidence[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected a mapping, got {_kind(entry)}")
            entries.append(entry)
            continue
        checked: dict[str, object] = {}
        for key, item in entry.items():
            if key not in EVIDENCE_KEYS:
                problems.append(f"{where}.{key}: {_unknown(key, EVIDENCE_KEYS)}")
            elif item is not None:
                checked[str(key)] = item
        if "expires" in checked:
            try:
                checked["expires"] = parse_time(checked["expires"])
            except ValueError as exc:
                problems.append(f"{where}.expires: {exc}")
        if type(checked.get("module")) is int:
            checked["module"] = str(checked["module"])
        entries.append(checked)
    return entries


def _unknown(key: object, allowed: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(str(key), allowed, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(allowed)}"
    return f"unknown key ({hint})"


def _kind(value: object) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true/false"}
    return names.get(type(value), type(value).__name__)


def _read_yaml(text: str, path: str) -> tuple[object, list[str]]:
    """The YAML document and the keys given twice (a mistake, not "last wins")."""
    import yaml

    duplicates: list[str] = []

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(
            self, node: yaml.MappingNode, deep: bool = False
        ) -> dict[Hashable, Any]:
            seen: set[str] = set()
            for key, _ in node.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    if key.value in seen:
                        line = key.start_mark.line + 1
                        duplicates.append(f"{path}: line {line}: key {key.value!r} is given twice")
                    seen.add(key.value)
            return super().construct_mapping(node, deep)

    loader = StrictLoader(text)
    try:
        return loader.get_single_data(), duplicates
    except (yaml.YAMLError, ValueError) as exc:
        # Position and reason only: PyYAML's own message quotes the line.
        mark = getattr(exc, "problem_mark", None)
        if mark is None:  # a bad timestamp (2024-13-01) escapes as a bare ValueError
            reason = str(exc) if isinstance(exc, ValueError) else "syntax error"
            raise UsageError(f"{path}: not valid YAML: {reason}") from None
        problem = getattr(exc, "problem", None) or "syntax error"
        raise UsageError(
            f"{path}: line {mark.line + 1}, column {mark.column + 1}: invalid YAML: {problem}"
        ) from None
    finally:
        loader.dispose()


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
