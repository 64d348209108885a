"""The schema of ``gateway.yaml``: pydantic models that check a parsed document in one pass.

Why pydantic: the shape of the file (sections, keys, required or not, lists, unknown keys) is
declared once as models, and the same models give the JSON Schema that editors use
(``xbgw config schema``, ``schemas/gateway.schema.json``). What is the gateway's own --
host:port forms, jurisdiction codes, files that must exist and parse (read bounded through
:mod:`gateway.files`), secret sources -- is a check on a field that raises
``ValueError(reason)``.

Pydantic never speaks to the operator: :func:`problems` turns its errors into the lines
users know, ``file: key.path: reason`` (``partners[0].ca``), with did-you-mean for unknown
keys; a value is never echoed where it might be a secret. The models are strict where a typo
must not pass: no ``"5"`` or ``5.0`` for an integer, no ``yes`` for a string.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, NamedTuple
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from gateway import files, schema_common, tlskey
from gateway.compliance import RuleSet, RuleTableError, load_tables, shipped_tables
from gateway.errors import TlsKeyError
from gateway.keys import MAX_VERSION, KeyRef, Purpose, check_gateway_id
from gateway.schema_common import Check, KeyedValueError, PlacedLinesError
from gateway.secrets import PinSource

kind = schema_common.kind  # a value's type in words, never the value (also config.py's)
KIB, MIB = 1024, 1024 * 1024
DAY = 86_400
FRAME_OVERHEAD = 64 * KIB  # room for gRPC framing and message fields around one segment
MIN_SEGMENT_SIZE, MAX_SEGMENT_SIZE, DEFAULT_SEGMENT_SIZE = 64, 16 * MIB, MIB
MAX_MESSAGE_BYTES = 16 * MIB
MAX_CONNECTIONS = 16  # partners[].connections: stripes of one transfer
MAX_UNIX_SOCKET_PATH = 107  # sun_path is 108 bytes including the terminating NUL
#: The file-handover socket is the local socket's path plus this (``gateway.fdpass``).
FD_SOCKET_SUFFIX = ".fd"
#: The rule tables a gateway applies when its configuration names none: every shipped table
#: but the example free-trade-zone list (each table is scoped to the jurisdictions it governs).
DEFAULT_RULE_TABLES = ("baseline", "prc-export", "gdpr-chapter-v")

_JURISDICTION = re.compile(r"[A-Z]{2}(-[A-Z0-9]{1,3})?")
_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:\S+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CREDENTIAL = re.compile(r"[A-Za-z0-9_.@-]+")
_SOURCES = ("file", "env", "credential")
_DURATION = re.compile(r"([0-9]{1,9})([smhd]?)")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": DAY}


@dataclass(frozen=True)
class Address:
    """A validated ``host:port``; ``str()`` gives the form gRPC accepts (``[v6]:port``)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class CertificateFile(NamedTuple):
    path: Path
    pem: bytes


class PublicKeyFile(NamedTuple):
    path: Path
    key: ec.EllipticCurvePublicKey


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _text(check: Callable[[str], Any] | None = None, **json: Any) -> Check:
    """A non-empty string, optionally passed through ``check``."""

    def convert(value: str) -> Any:
        return check(_non_empty(value)) if check else _non_empty(value)

    return Check(convert, json=tuple({"minLength": 1, **json}.items()))


def _int(low: int, high: int | None = None) -> Check:
    def convert(value: int) -> int:
        if value < low or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ValueError(f"must be {bounds}, got {value}")
        return value

    bounds = {"minimum": low} | ({} if high is None else {"maximum": high})
    return Check(convert, "int", tuple(bounds.items()))


def _duration(low: int, high: int) -> Check:
    """Seconds, as an integer or a string with a unit: ``90``, ``90s``, ``15m``, ``2h``, ``30d``."""

    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError(f"expected a duration (30d, 12h, 15m, 90s), got {kind(value)}")
        if isinstance(value, int):
            seconds = value
        elif match := _DURATION.fullmatch(value.strip()):
            seconds = int(match.group(1)) * _DURATION_UNITS[match.group(2)]
        else:
            raise ValueError(f"not a duration: {value!r} (examples: 30d, 12h, 15m, 90s)")
        if not low <= seconds <= high:
            raise ValueError(f"must be between {low} and {high} seconds, got {seconds}")
        return seconds

    json = {
        "anyOf": [
            {"type": "integer", "minimum": low, "maximum": high},
            {"type": "string", "pattern": "^[0-9]{1,9}[smhd]?$"},
        ]
    }
    return Check(convert, "any", tuple(json.items()))


def _jurisdiction(value: str) -> str:
    if not _JURISDICTION.fullmatch(value):
        raise ValueError(
            f"expected a jurisdiction code like CN-SH or EU-DE (two capital letters, optionally "
            f"'-' and 1-3 capital letters or digits), got {value!r}"
        )
    return value


def _is_hostname(host: str) -> bool:
    return len(host) <= 253 and all(_LABEL.fullmatch(part) for part in host.split("."))


def _address(allow_zero: bool) -> Check:
    def check(text: str) -> Address:
        match = re.fullmatch(r"\[([^\]]+)\]:(\d{1,5})|([^:\[\]]+):(\d{1,5})", text)
        if not match:
            hint = " (IPv6 addresses go in brackets: [::1]:7443)" if text.count(":") > 1 else ""
            raise ValueError(f"expected host:port, got {text!r}{hint}")
        host, port = match[1] or match[3], int(match[2] or match[4])
        try:
            if match[1]:
                ipaddress.IPv6Address(host)
            elif re.fullmatch(r"[0-9.]+", host):
                ipaddress.IPv4Address(host)
            elif not _is_hostname(host):
                raise ValueError
        except ValueError:
            raise ValueError(f"{host!r} in {text!r} is not an IP address or host name") from None
        if not (0 if allow_zero else 1) <= port <= 65535:
            low = "0 (ephemeral)" if allow_zero else "1"
            raise ValueError(f"port in {text!r} must be between {low} and 65535")
        return Address(host, port)

    return _text(check, description="host:port; an IPv6 address in brackets: [::1]:7443")


def _partner_identity(value: str) -> str:
    if not (_is_hostname(value) or _URI.fullmatch(value)):
        raise ValueError(f"expected a DNS name or URI (a certificate SAN), got {value!r}")
    return value


def _signing_kid(value: str) -> KeyRef:
    ref = KeyRef.parse(value)
    if ref.purpose is not Purpose.SIGNING:
        raise ValueError(f"{value!r} must name a signing key, not a {ref.purpose.value} key")
    return ref


def _timezone(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a time zone name like Asia/Shanghai, got {kind(value)}")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r} (an IANA name like Asia/Shanghai)") from None
    return value


def _base(info: ValidationInfo) -> Path:
    """The directory relative paths are resolved against: the config file's."""
    base = _context(info).get("base")
    return base if isinstance(base, Path) else Path.cwd()


def _resolve(text: str, info: ValidationInfo) -> Path:
    if "\0" in text:
        raise ValueError("path contains a NUL character")
    return _base(info) / _non_empty(text)  # an absolute path replaces the base


def _socket_path(text: str, info: ValidationInfo) -> Path:
    resolved = _resolve(text, info)
    if (size := len(os.fsencode(resolved))) > MAX_UNIX_SOCKET_PATH:
        raise ValueError(f"{resolved} is {size} bytes; Unix sockets allow {MAX_UNIX_SOCKET_PATH}")
    if size + len(FD_SOCKET_SUFFIX) > MAX_UNIX_SOCKET_PATH:
        limit = MAX_UNIX_SOCKET_PATH - len(FD_SOCKET_SUFFIX)
        raise ValueError(
            f"{resolved} is {size} bytes; the local socket may have at most {limit}, for the "
            f"file-handover socket beside it ({resolved.name}{FD_SOCKET_SUFFIX}) to fit in "
            f"the {MAX_UNIX_SOCKET_PATH} bytes Unix sockets allow: choose a shorter path"
        )
    return resolved


def _file(
    limit: int | None = files.NAMED_MAX,
    secret: bool = False,
    parse: Callable[[Path, bytes | None], Any] | None = None,
) -> Check:
    """An existing regular file of at most ``limit`` bytes (``None``: any size), as a path;
    with ``parse``, its content (read bounded) must parse and ``parse(path, data)`` is the
    value -- ``data`` is None for a ``secret`` file this process may not read: the CLI loads
    the same config as an unprivileged user, and only the daemon's user needs the secret."""

    def check(text: str, info: ValidationInfo) -> Any:
        file, data = _resolve(text, info), None
        try:
            if parse is None:
                files.check_regular(file, limit)
                return file
            data = files.read_bounded(file, limit or files.PEM_MAX)
        except files.FileDeniedError as exc:
            if not secret:
                raise ValueError(str(exc)) from None
        except files.FileError as exc:
            raise ValueError(str(exc)) from None
        return file if parse is None else parse(file, data)

    return Check(check, json=(("minLength", 1), ("description", "a file")), info=True)


def _certificates(file: Path, data: bytes | None) -> CertificateFile:
    try:
        x509.load_pem_x509_certificates(data or b"")
    except ValueError:
        raise ValueError(f"{file} is not a PEM X.509 certificate") from None
    return CertificateFile(file, data or b"")


def _private_key(file: Path, data: bytes | None) -> Path:
    """A key wrapped by ``xbgw tls import`` (known by its magic; only its structure is checked
    here -- the daemon unwraps it once the HSM is open), or else only the PEM shape:
    decrypting may need a passphrase that only the daemon has. Unreadable: the daemon's."""
    if data is None:
        return file
    if tlskey.looks_wrapped(data):
        try:
            tlskey.parse_wrapped_tls_key(data, str(file))
        except TlsKeyError as exc:
            raise ValueError(str(exc)) from None
    elif not re.search(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----", data):
        raise ValueError(f"{file} is not a PEM private key")
    return file


def _p256_public_key(file: Path, data: bytes | None) -> PublicKeyFile:
    try:
        key = load_pem_public_key(data or b"")
    except (ValueError, UnsupportedAlgorithm):
        hint = (
            " (it holds a private key, which must never be here)"
            if b"PRIVATE" in (data or b"")
            else ""
        )
        raise ValueError(f"{file} is not a PEM public key{hint}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        kind = f"EC {key.curve.name}" if isinstance(key, ec.EllipticCurvePublicKey) else "not EC"
        raise ValueError(f"{file} holds a public key of type {kind}; expected EC P-256")
    return PublicKeyFile(file, key)


def _secret_file(text: str, info: ValidationInfo) -> PinSource:
    file: Path = _file(files.SECRET_MAX, secret=True).check(text, info)
    return PinSource("file", str(file))


def _source_name(kind: Literal["env", "credential"], pattern: re.Pattern[str]) -> Check:
    def check(name: str) -> PinSource:
        if not pattern.fullmatch(name) or name in {".", ".."}:
            raise ValueError(f"{name!r} is not a valid {kind} name")
        return PinSource(kind, name)

    return _text(check)


def _table_name(text: str, info: ValidationInfo) -> str:
    """A shipped table's name as it is, a file's path against the config's directory; each
    one that is right is also noted in the context, for :meth:`Compliance._load_rules` to load
    the right ones even when another is wrong.

    A bare name that is not shipped is a mistake, not a file: "prc-exprot" is a typo, and
    reading it as ``<config dir>/prc-exprot`` would only hide that behind "no such file".
    """
    shipped = shipped_tables()
    if "/" not in text and not text.endswith((".yaml", ".yml")) and text not in shipped:
        close = difflib.get_close_matches(text, shipped, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"shipped: {', '.join(shipped)}"
        raise ValueError(f"no shipped table {text!r} ({hint}); name a file by a path or with .yaml")
    name = text if text in shipped else str(_file(files.YAML_MAX).check(text, info))
    _context(info).setdefault("tables", []).append(name)
    return name


def _context(info: ValidationInfo) -> dict[str, Any]:
    return info.context if isinstance(info.context, dict) else {}


def _non_empty_list(what: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if not isinstance(value, list) or not value:
            got = "an empty list" if value == [] else kind(value)
            raise ValueError(f"expected a non-empty list of {what}, got {got}")
        return value

    return check


Text = Annotated[str, _text()]
Jurisdiction = Annotated[str, _text(_jurisdiction, pattern=_JURISDICTION.pattern)]
GatewayId = Annotated[str, _text(check_gateway_id)]
PathValue = Annotated[Path, Check(_resolve, json=(("minLength", 1),), info=True)]
Duration = Annotated[int, _duration(0, 10 * 365 * DAY)]


# --- the sections ---------------------------------------------------------------------------


class Section(BaseModel):
    """A mapping of the file: unknown keys are mistakes, and a key written without a value
    means its default (or, if required, "has no value")."""

    model_config = ConfigDict(extra="forbid", strict=True)
    #: What an unknown key is told instead of did-you-mean (None: did-you-mean).
    unknown_key: ClassVar[str | None] = None

    @model_validator(mode="before")
    @classmethod
    def _without_empty_values(cls, data: Any) -> Any:
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


class Identity(Section):
    id: GatewayId
    jurisdiction: Jurisdiction
    description: Text | None = None


class Listen(Section):
    partner: Annotated[Address, _address(allow_zero=True)]
    local_socket: Annotated[Path, Check(_socket_path, json=(("minLength", 1),), info=True)]
    metrics: Annotated[Address, _address(allow_zero=True)] | None = None
    #: Plaintext gRPC health (Check only) for a load balancer's checks; None: not served.
    health: Annotated[Address, _address(allow_zero=True)] | None = None


class SecretSource(Section):
    """``{file|env|credential: ...}``: where a secret is read; the secret itself never is here."""

    unknown_key: ClassVar[str | None] = (
        "unknown source: use file, env or credential (the secret itself never goes in the YAML)"
    )
    model_config = ConfigDict(json_schema_extra={"minProperties": 1, "maxProperties": 1})

    file: Annotated[PinSource, Check(_secret_file, json=(("minLength", 1),), info=True)] | None = (
        None
    )
    env: Annotated[PinSource, _source_name("env", _ENV_NAME)] | None = None
    credential: Annotated[PinSource, _source_name("credential", _CREDENTIAL)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_source(cls, data: Any) -> Any:
        """A secret written inline is refused without echoing it."""
        if not isinstance(data, dict):
            raise ValueError(
                f"expected a mapping with one of file, env or credential saying where the "
                f"secret is read from; the secret itself never goes in the YAML (got "
                f"{kind(data)}, value not shown)"
            )
        given = [key for key in _SOURCES if data.get(key) is not None]
        if len(given) > 1 or not (given or [key for key in data if key not in _SOURCES]):
            raise ValueError(f"give exactly one of file, env, credential; got {len(given)}")
        return data

    def source(self) -> PinSource:
        return next(s for s in (self.file, self.env, self.credential) if s is not None)


class Tls(Section):
    certificate: Annotated[CertificateFile, _file(files.PEM_MAX, parse=_certificates)]
    private_key: Annotated[Path, _file(tlskey.MAX_KEY_FILE_LEN, secret=True, parse=_private_key)]
    private_key_passphrase: SecretSource | None = None


class HsmKeys(Section):
    """Pinned key versions per purpose."""

    transport: Annotated[int, _int(1, MAX_VERSION)] | None = None
    signing: Annotated[int, _int(1, MAX_VERSION)] | None = None
    storage: Annotated[int, _int(1, MAX_VERSION)] | None = None

    def versions(self) -> dict[Purpose, int] | None:
        pinned = {Purpose(k): v for k, v in self.model_dump().items() if v is not None}
        return pinned or None


class Hsm(Section):
    module: Annotated[Path, _file(limit=None)]
    token: Text
    pin: SecretSource
    softhsm_conf: Annotated[Path, _file()] | None = None
    keys: HsmKeys | None = None
    restart_after_seconds: Annotated[int, _duration(10, 7 * DAY)] = 300


class Partner(Section):
    id: GatewayId
    endpoint: Annotated[Address, _address(allow_zero=False)]
    jurisdiction: Jurisdiction
    ca: Annotated[CertificateFile, _file(files.PEM_MAX, parse=_certificates)]
    identity: Annotated[str, _text(_partner_identity)] | None = None
    signing_key: Annotated[PublicKeyFile, _file(files.PEM_MAX, parse=_p256_public_key)]
    max_transfer_bytes: Annotated[int, _int(1)] | None = None
    connections: Annotated[int, _int(1, MAX_CONNECTIONS)] = 1


class Issuer(Section):
    kid: Annotated[KeyRef, _text(_signing_kid)]
    public_key: Annotated[PublicKeyFile, _file(files.PEM_MAX, parse=_p256_public_key)]


class Limits(Section):
    """Resource bounds; a message must hold one segment plus ``FRAME_OVERHEAD``."""

    max_message_bytes: (
        Annotated[int, _int(MIN_SEGMENT_SIZE + FRAME_OVERHEAD, MAX_MESSAGE_BYTES)] | None
    ) = None
    segment_size: Annotated[int, _int(MIN_SEGMENT_SIZE, MAX_SEGMENT_SIZE)] = DEFAULT_SEGMENT_SIZE
    passport_leeway_seconds: Annotated[int, _int(0, 600)] = 60
    drain_grace_seconds: Annotated[int, _int(0, 3600)] = 20
    max_concurrent_transfers: Annotated[int, _int(1, 1024)] = 8
    max_passport_bytes: Annotated[int, _int(1024, 64 * KIB)] = 32768
    partner_wait_seconds: Annotated[int, _duration(0, 7 * DAY)] = 120
    keepalive_seconds: Annotated[int, _duration(1, 3600)] = 10
    max_queued_sends: Annotated[int, _int(0, 100_000)] = 1024

    @model_validator(mode="after")
    def _segment_fits(self) -> Limits:
        """The message limit must hold one segment plus framing; by default it is just that."""
        needed = self.segment_size + FRAME_OVERHEAD
        limit = needed if self.max_message_bytes is None else self.max_message_bytes
        if not needed <= limit <= MAX_MESSAGE_BYTES:
            key = "segment_size" if self.max_message_bytes is None else "max_message_bytes"
            raise KeyedValueError(
                key,
                f"segment_size + {FRAME_OVERHEAD} bytes of framing = {needed} must fit in "
                f"max_message_bytes ({limit}, at most {MAX_MESSAGE_BYTES})",
            )
        return self


class Log(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "text"] = "auto"


class PerPurpose(Section):
    """Seconds per key purpose; a purpose not named keeps its default."""

    transport: Duration | None = None
    signing: Duration | None = None
    storage: Duration | None = None

    def given(self) -> dict[Purpose, int]:
        return {Purpose(k): v for k, v in self.model_dump().items() if v is not None}


class Keys(Section):
    rotate_every: PerPurpose | None = None
    grace: PerPurpose | None = None
    key_set_refresh: Annotated[int, _duration(10, DAY)] = 300


class Compliance(Section):
    """``compliance:``. The rule tables are loaded (with the overrides) while the section is
    checked, so that their own mistakes are reported with the section's."""

    model_config = ConfigDict(arbitrary_types_allowed=True)  # the RuleSet the overrides give

    tables: Annotated[
        list[Annotated[str, Check(_table_name, json=(("minLength", 1),), info=True)]],
        Field(json_schema_extra={"minItems": 1}),
    ] = list(DEFAULT_RULE_TABLES)
    rules: Annotated[
        RuleSet | None,
        WithJsonSchema({"type": "object", "additionalProperties": {"type": "object"}}),
    ] = Field(None, alias="overrides", validate_default=True)
    ingress: Literal["enforce", "record"] = "enforce"
    year_timezone: Annotated[str, Check(_timezone, "any", (("type", "string"),))] = "UTC"
    zone: Text | None = None

    @field_validator("tables", mode="before")
    @classmethod
    def _table_list(cls, value: Any) -> Any:
        return _non_empty_list("rule table names or files")(value)

    @field_validator("rules", mode="plain")
    @classmethod
    def _load_rules(cls, overrides: Any, info: ValidationInfo) -> RuleSet | None:
        """The tables named that are right (their own mistakes, and overrides that name no
        rule of theirs, are reported with the rest), with the overrides; none if no table
        name is right (an override is not judged without its tables)."""
        if overrides is not None and not isinstance(overrides, dict):
            raise ValueError(f"expected a mapping of rule ids, got {kind(overrides)}")
        context = _context(info)
        tables = info.data.get("tables") or context.get("tables")
        if not tables:
            return None
        try:
            return load_tables(
                tables,
                overrides,
                overrides_file=str(context.get("label", "gateway.yaml")),
                overrides_key="compliance.overrides",
            )
        except RuleTableError as exc:
            raise PlacedLinesError(exc.problems) from None


class Retention(Section):
    unfinished_grace: Duration = 7 * DAY
    fetched: Duration = 30 * DAY
    acknowledged: Duration = DAY
    unfetched: Duration = 0
    sweep_every: Annotated[int, _duration(1, DAY)] = 600


def _database_url(url: str) -> str:
    """A PostgreSQL URL without a password: the password is read from ``state.password``."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(
            "expected a postgresql://user@host:port/dbname URL (leave state.database out for "
            "the SQLite ledger in state_dir)"
        )
    if parts.password is not None or "password" in parse_qs(parts.query):
        raise ValueError(
            "the URL holds a password (value not shown): the password never goes in the YAML; "
            "name where it is read with state.password: {file|env|credential: ...}"
        )
    if not parts.hostname and "host" not in parse_qs(parts.query):
        raise ValueError("the URL names no host")
    return url


class State(Section):
    """Where the ledger is kept: a SQLite file in ``state_dir`` (the default), or a
    PostgreSQL database shared by several nodes of one gateway (``database``), whose
    password comes from ``password``, never from the YAML."""

    database: Annotated[str, _text(_database_url, pattern="^postgres(ql)?://")] | None = None
    password: SecretSource | None = None
    #: How long a transfer's lease lives unrenewed (``gateway.ledger_leases``): how soon a
    #: dead node's transfers are taken over, against how long a node may stall unnoticed.
    lease_seconds: Annotated[int, _int(3, 600)] = 15

    @model_validator(mode="after")
    def _password_needs_database(self) -> State:
        if self.password is not None and self.database is None:
            raise ValueError("password is given but database is not (the SQLite ledger has none)")
        return self


class Document(Section):
    """The whole ``gateway.yaml``."""

    model_config = ConfigDict(title="xbgw gateway.yaml")

    gateway: Identity
    listen: Listen
    tls: Tls
    hsm: Hsm
    partners: list[Partner] = []
    issuers: list[Issuer] = []
    state_dir: PathValue
    limits: Limits | None = None
    log: Log | None = None
    keys: Keys | None = None
    compliance: Compliance | None = None
    retention: Retention | None = None
    state: State | None = None


def validate(doc: dict[Any, Any], label: str, base: Path) -> Document:
    """The document checked; a :class:`ValidationError` for :func:`problems` otherwise."""
    return Document.model_validate(doc, context={"label": label, "base": base})


def required_keys() -> list[str]:
    return [name for name, field in Document.model_fields.items() if field.is_required()]


def json_schema() -> dict[str, Any]:
    """The JSON Schema of ``gateway.yaml`` (what ``schemas/gateway.schema.json`` holds)."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema"
    } | Document.model_json_schema()


# --- pydantic's errors, in the operator's words ---------------------------------------------


def problems(error: ValidationError, label: str, doc: Any) -> list[str]:
    """One ``label: key.path: reason`` line per mistake; pydantic's own wording never shows."""
    return schema_common.problems(error, label, doc, Document)


def schema_text() -> str:
    """The published schema file's text: ``python -m gateway.config_schema`` prints it."""
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(schema_text(), end="")
