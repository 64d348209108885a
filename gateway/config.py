"""The gateway's one YAML file, turned into frozen, typed dataclasses.

A misconfigured gateway must fail at load, never at first use: a typo in a partner's endpoint
found when the first transfer to it is attempted is an outage with a confusing cause. So
loading checks everything it can without the HSM or the network -- types, ranges, formats,
files that must exist, keys that must parse, cross references -- and reports *every* mistake
in one :class:`~gateway.errors.ConfigError`, one line each, as ``file: key.path: reason``.
An operator fixes the file once instead of once per restart.

Validation is table-driven: each section is a schema (YAML key -> converter, required or not)
and a converter either returns the typed value or raises ``ValueError(reason)``; the loader
adds the file and key path. Secrets are never values: a PIN or passphrase is a *source* (file, env,
systemd credential) and a secret-bearing value is never echoed in a message.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import ipaddress
import os
import re
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from gateway import files, tlskey
from gateway.compliance import RuleSet, RuleTableError, load_tables, shipped_tables
from gateway.errors import ConfigError, TlsKeyError
from gateway.keys import MAX_VERSION, KeyRef, Purpose, check_gateway_id
from gateway.secrets import PinSource

KIB, MIB = 1024, 1024 * 1024
FRAME_OVERHEAD = 64 * KIB  # room for gRPC framing and message fields around one segment
MIN_SEGMENT_SIZE, MAX_SEGMENT_SIZE, DEFAULT_SEGMENT_SIZE = 64, 16 * MIB, MIB
MAX_MESSAGE_BYTES = 16 * MIB
MAX_UNIX_SOCKET_PATH = 107  # sun_path is 108 bytes including the terminating NUL
#: The file-handover socket is the local socket's path plus this (``gateway.fdpass``).
FD_SOCKET_SUFFIX = ".fd"

_JURISDICTION = re.compile(r"[A-Z]{2}(-[A-Z0-9]{1,3})?")
_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:\S+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CREDENTIAL = re.compile(r"[A-Za-z0-9_.@-]+")
_SOURCES: tuple[Literal["file", "env", "credential"], ...] = ("file", "env", "credential")


# --- the typed result -----------------------------------------------------------------------


@dataclass(frozen=True)
class Address:
    """A validated ``host:port``; ``str()`` gives the form gRPC accepts (``[v6]:port``)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Identity:
    id: str
    jurisdiction: str
    description: str | None = None


@dataclass(frozen=True)
class Listen:
    partner: Address
    local_socket: Path
    metrics: Address | None = None  # None: no metrics endpoint


@dataclass(frozen=True)
class TlsConfig:
    """Paths, not bytes: the daemon rereads them on reload so certificates can be renewed."""

    certificate: Path
    private_key: Path
    private_key_passphrase: PinSource | None = None


@dataclass(frozen=True)
class HsmConfig:
    """How to open the token; the PIN is a source read at open, never a value held here."""

    module: Path
    token: str
    pin: PinSource
    softhsm_conf: Path | None = None
    key_versions: dict[Purpose, int] | None = None  # pinned versions; absent = highest on token
    #: How long the HSM may stay unusable before the daemon stops feeding systemd's watchdog
    #: (and is restarted): a lost token that comes back is reopened by itself before that.
    restart_after_seconds: int = 300


@dataclass(frozen=True)
class PartnerConfig:
    """A peer gateway; its CA and pinned signing key are loaded now, so a bad file fails here."""

    id: str
    endpoint: Address
    jurisdiction: str
    ca: Path
    ca_pem: bytes
    identity: str  # SAN expected in the partner's certificate
    signing_key: Path
    signing_public_key: ec.EllipticCurvePublicKey
    max_transfer_bytes: int | None = None


@dataclass(frozen=True)
class IssuerConfig:
    """A trusted passport issuer: the JWS ``kid`` and the P-256 key it must verify with."""

    kid: KeyRef
    public_key_path: Path
    public_key: ec.EllipticCurvePublicKey


DAY = 86_400


@dataclass(frozen=True)
class Limits:
    """Resource bounds; a message must hold one segment plus ``FRAME_OVERHEAD``."""

    max_message_bytes: int = DEFAULT_SEGMENT_SIZE + FRAME_OVERHEAD
    segment_size: int = DEFAULT_SEGMENT_SIZE
    passport_leeway_seconds: int = 60
    drain_grace_seconds: int = 20
    #: Sends running at once (more wait in a queue), and uploads accepted per partner. Why 8:
    #: a bulk send is CPU-bound (SHA-256, AES-GCM, TLS, gRPC), so a 2-core machine is busy
    #: with a handful; past that, more sends only add memory (a running send holds a few MiB
    #: of buffers). Measured with ``python -m bench.load`` (64 sends of 8 MiB, 2 cores): 16
    #: running took 3.5-4.0 s with the sender at 178-196 MiB peak RSS, 8 took 3.2-4.0 s at
    #: 164-176 MiB. Raise it with the cores, or for many small sends to slow partners.
    max_concurrent_transfers: int = 8
    max_passport_bytes: int = 32768  # a passport with every compliance fact fits
    #: How long a send waits, retrying with backoff, for a partner that is unreachable or
    #: busy (``xbgw send --wait`` overrides it per send; 0 fails at once).
    partner_wait_seconds: int = 120
    #: HTTP/2 keepalive on partner connections: a ping after this much silence, and the
    #: connection is dropped when the ping is not answered within as long again.
    keepalive_seconds: int = 10
    #: Local sends waiting for one of ``max_concurrent_transfers`` slots, in arrival order;
    #: beyond this a send is refused (RESOURCE_EXHAUSTED).
    max_queued_sends: int = 1024


@dataclass(frozen=True)
class RetentionConfig:
    """What the gateway keeps and for how long (``retention:``). Durations are seconds;
    0 keeps for ever. Ledger rows and audit records are always kept: only data files go.

    ``unfinished_grace``: an unfinished transfer (either side) expires this long after its
    passport's ``exp`` -- its partial file is removed and it is recorded EXPIRED.
    ``fetched``: an inbox item's data is removed this long after its first complete fetch.
    ``acknowledged``: ... after ``xbgw inbox ack``. ``unfetched``: ... after its commit, even if
    never fetched (0: kept until fetched). ``sweep_every``: how often the daemon looks.
    """

    unfinished_grace: int = 7 * DAY
    fetched: int = 30 * DAY
    acknowledged: int = DAY
    unfetched: int = 0
    sweep_every: int = 600


@dataclass(frozen=True)
class KeysConfig:
    """Key lifecycle policy (``keys:``). Durations are seconds.

    ``rotate_every``: the age at which the scheduled ``xbgw keys rotate`` (no purpose given)
    replaces a purpose's active version. ``grace``: how long a replaced version still opens
    (transport, storage) or verifies (signing) before ``xbgw keys retire`` may take it out of
    service -- partners that sealed to the old transport key, or hold receipts under the old
    signing key, get that long to learn the new one. ``key_set_refresh``: how long a
    partner's verified key set is used before it is fetched again.
    """

    rotate_every: dict[Purpose, int] = field(
        default_factory=lambda: {
            Purpose.TRANSPORT: 30 * DAY,
            Purpose.SIGNING: 365 * DAY,
            Purpose.STORAGE: 365 * DAY,
        }
    )
    grace: dict[Purpose, int] = field(
        default_factory=lambda: {
            Purpose.TRANSPORT: 7 * DAY,
            Purpose.SIGNING: 30 * DAY,
            Purpose.STORAGE: 0,
        }
    )
    key_set_refresh: int = 300


#: The rule tables a gateway applies when its configuration names none: every shipped table
#: but the example free-trade-zone list (each table is scoped to the jurisdictions it governs).
DEFAULT_RULE_TABLES = ("baseline", "prc-export", "gdpr-chapter-v")


def _default_rules() -> RuleSet:
    return load_tables(DEFAULT_RULE_TABLES)


@dataclass(frozen=True)
class ComplianceConfig:
    """Cross-border rules (``compliance:``), loaded and checked with the configuration.

    ``tables``: shipped names or files, in order; ``overrides``: per rule id (disable, or
    replace its article, scope, condition, outcome or message). ``ingress``: ``enforce`` (refuse
    at the offer what the rules refuse) or ``record`` (log and count the decision, accept the
    transfer) -- the exporting side always enforces its own jurisdiction at egress.
    ``year_timezone``: where "the calendar year" of the yearly counters is reckoned (the PRC
    Provisions count from 1 January, China time). ``zone``: the free-trade zone this gateway
    exports from (a passport's ``zone`` is used when this is unset).
    """

    tables: tuple[str, ...] = DEFAULT_RULE_TABLES
    rules: RuleSet = field(default_factory=_default_rules)
    ingress: Literal["enforce", "record"] = "enforce"
    year_timezone: str = "UTC"
    zone: str | None = None


@dataclass(frozen=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "text"] = "auto"


@dataclass(frozen=True)
class GatewayConfig:
    path: Path  # the file this came from, absolute
    gateway: Identity
    listen: Listen
    tls: TlsConfig
    hsm: HsmConfig
    state_dir: Path
    partners: tuple[PartnerConfig, ...] = ()
    issuers: tuple[IssuerConfig, ...] = ()
    limits: Limits = field(default_factory=Limits)
    log: LogConfig = field(default_factory=LogConfig)
    keys: KeysConfig = field(default_factory=KeysConfig)
    compliance: ComplianceConfig = field(default_factory=ComplianceConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    #: SHA-256 of the bytes this was loaded from (the audit record of a reload names it).
    sha256: str = field(default="", compare=False, repr=False)

    @property
    def id(self) -> str:
        return self.gateway.id

    def partner(self, partner_id: str) -> PartnerConfig:
        """The partner ``partner_id``; a ``ConfigError`` (not ``KeyError``) names the known ones."""
        for partner in self.partners:
            if partner.id == partner_id:
                return partner
        known = ", ".join(p.id for p in self.partners) or "none"
        raise ConfigError(f"{self.path}: no partner {partner_id!r} (configured: {known})")

    def partner_by_identity(self, identity: str) -> PartnerConfig | None:
        """The partner whose certificate carries ``identity`` (DNS names case-insensitively)."""
        key = _identity_key(identity)
        return next((p for p in self.partners if _identity_key(p.identity) == key), None)

    def trusted_issuer_keys(self) -> dict[str, ec.EllipticCurvePublicKey]:
        """Passport issuer keys by ``kid`` (the JWS header value)."""
        return {str(issuer.kid): issuer.public_key for issuer in self.issuers}


# --- the validation machinery ---------------------------------------------------------------
#
# A converter takes (raw value, loader, key path) and returns the typed value; it raises
# ValueError with the reason for a wrong value, or _ReportedError when it recorded problems
# itself (nested sections report each of their keys).


class _ReportedError(Exception):
    """A nested value is wrong and its problems are already recorded."""


Convert = Callable[[Any, "_Loader", str], Any]
Build = Callable[[dict[str, Any], "_Loader", str], Any]


@dataclass(frozen=True)
class _Key:
    convert: Convert
    required: bool


def _req(convert: Convert) -> _Key:
    return _Key(convert, required=True)


def _opt(convert: Convert) -> _Key:
    return _Key(convert, required=False)


class _Loader:
    """Collects problems with their key path; knows the file and its directory."""

    def __init__(self, label: str, source: Path) -> None:
        self.label, self.source, self.problems = label, source, list[str]()

    def problem(self, path: str, reason: str) -> None:
        self.problems.append(f"{self.label}: {path}: {reason}")

    def convert(self, convert: Convert, raw: Any, path: str) -> Any:
        """Run a converter, recording a ``ValueError`` as this path's problem."""
        try:
            return convert(raw, self, path)
        except ValueError as exc:
            self.problem(path, str(exc))
            raise _ReportedError from None

    def section(self, value: Any, path: str, schema: dict[str, _Key]) -> dict[str, Any]:
        """Convert a mapping by its schema; every key is checked before giving up."""
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping, got {_kind(value)}")
        failed = False
        for key in value:
            if key not in schema:
                self.problem(_join(path, key), _unknown_key(key, schema))
                failed = True
        out: dict[str, Any] = {}
        for key, spec in schema.items():
            sub, raw = _join(path, key), value.get(key)
            if raw is None:  # absent, or present without a value: optional means default
                if spec.required:
                    self.problem(
                        sub, f"required key {'has no value' if key in value else 'is missing'}"
                    )
                    failed = True
                continue
            try:
                out[key] = self.convert(spec.convert, raw, sub)
            except _ReportedError:
                failed = True
        if failed:
            raise _ReportedError
        return out


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _unknown_key(key: object, schema: dict[str, _Key]) -> str:
    close = difflib.get_close_matches(str(key), list(schema), n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(schema)}"
    return f"unknown key ({hint})"


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", list: "a list"}
_TYPE_NAMES |= {dict: "a mapping", type(None): "nothing"}


def _kind(value: object) -> str:
    """The type of a value, in words, without the value (it might be a secret)."""
    if isinstance(value, bool):
        return "a boolean (YAML reads yes/no/on/off/true/false as booleans; quote the value)"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _record(schema: dict[str, _Key], build: Build | type) -> Convert:
    """A mapping converted by ``schema``; a dataclass ``build`` takes the values as keywords."""

    def convert(value: Any, ld: _Loader, path: str) -> Any:
        values = ld.section(value, path, schema)
        return build(**values) if isinstance(build, type) else build(values, ld, path)

    return convert


def _list_of(item: Convert) -> Convert:
    def convert(value: Any, ld: _Loader, path: str) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise ValueError(f"expected a list, got {_kind(value)}")
        out, failed = [], False
        for index, raw in enumerate(value):
            try:
                out.append(ld.convert(item, raw, f"{path}[{index}]"))
            except _ReportedError:
                failed = True
        if failed:
            raise _ReportedError
        return tuple(out)

    return convert


def _text(check: Callable[[str], Any] | None = None) -> Convert:
    """A non-empty string, optionally passed through ``check``."""

    def convert(value: Any, _ld: _Loader, _path: str) -> Any:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {_kind(value)}")
        if not value.strip():
            raise ValueError("must not be empty")
        return check(value) if check else value

    return convert


def _choice(*options: str) -> Convert:
    def check(value: str) -> str:
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}; got {value!r}")
        return value

    return _text(check)


def _int(low: int, high: int | None = None) -> Convert:
    def convert(value: Any, _ld: _Loader, _path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {_kind(value)}")
        if value < low or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ValueError(f"must be {bounds}, got {value}")
        return value

    return convert


_DURATION = re.compile(r"([0-9]{1,9})([smhd]?)")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": DAY}


def _duration(low: int, high: int) -> Convert:
    """Seconds, as an integer or a string with a unit: ``90``, ``90s``, ``15m``, ``2h``, ``30d``."""

    def convert(value: Any, _ld: _Loader, _path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError(f"expected a duration (30d, 12h, 15m, 90s), got {_kind(value)}")
        if isinstance(value, int):
            seconds = value
        elif match := _DURATION.fullmatch(value.strip()):
            seconds = int(match.group(1)) * _DURATION_UNITS[match.group(2)]
        else:
            raise ValueError(f"not a duration: {value!r} (examples: 30d, 12h, 15m, 90s)")
        if not low <= seconds <= high:
            raise ValueError(f"must be between {low} and {high} seconds, got {seconds}")
        return seconds

    return convert


def _jurisdiction(value: str) -> str:
    if not _JURISDICTION.fullmatch(value):
        raise ValueError(
            f"expected a jurisdiction code like CN-SH or EU-DE (two capital letters, optionally "
            f"'-' and 1-3 capital letters or digits), got {value!r}"
        )
    return value


def _is_hostname(host: str) -> bool:
    return len(host) <= 253 and all(_LABEL.fullmatch(part) for part in host.split("."))


def _address(allow_zero: bool) -> Convert:
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

    return _text(check)


def _partner_identity(value: str) -> str:
    if not (_is_hostname(value) or _URI.fullmatch(value)):
        raise ValueError(f"expected a DNS name or URI (a certificate SAN), got {value!r}")
    return value


def _identity_key(identity: str) -> str:
    return identity if ":" in identity else identity.lower()  # DNS names ignore case


def _signing_kid(value: str) -> KeyRef:
    ref = KeyRef.parse(value)
    if ref.purpose is not Purpose.SIGNING:
        raise ValueError(f"{value!r} must name a signing key, not a {ref.purpose.value} key")
    return ref


# --- paths, files and secret sources --------------------------------------------------------


def _path(value: Any, ld: _Loader, path: str) -> Path:
    text: str = _text()(value, ld, path)
    if "\0" in text:
        raise ValueError("path contains a NUL character")
    return ld.source.parent / text  # an absolute path replaces the base


def _socket_path(value: Any, ld: _Loader, path: str) -> Path:
    resolved = _path(value, ld, path)
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
    parse: Callable[[Path, bytes], Any] | None = None,
) -> Convert:
    """An existing regular file of at most ``limit`` bytes (``None``: any size); with ``parse``,
    its content (read bounded, see :mod:`gateway.files`) must parse and ``(path, parsed)`` is
    returned.

    A ``secret`` file this process may not read is accepted: the CLI loads the same config
    as an unprivileged user, and only the daemon's user needs the secret.
    """

    def convert(value: Any, ld: _Loader, path: str) -> Any:
        file, data = _path(value, ld, path), None
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
        if parse is None:
            return file
        return file, (None if data is None else parse(file, data))

    return convert


def _certificates(file: Path, data: bytes) -> bytes:
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(f"{file} is not a PEM X.509 certificate") from None
    return data


def _private_key(file: Path, data: bytes) -> None:
    """A key wrapped by ``xbgw tls import`` (known by its magic; only its structure is checked
    here -- the daemon unwraps it once the HSM is open), or else only the PEM shape:
    decrypting may need a passphrase that only the daemon has."""
    if tlskey.looks_wrapped(data):
        try:
            tlskey.parse_wrapped_tls_key(data, str(file))
        except TlsKeyError as exc:
            raise ValueError(str(exc)) from None
        return
    if not re.search(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----", data):
        raise ValueError(f"{file} is not a PEM private key")


def _p256_public_key(file: Path, data: bytes) -> ec.EllipticCurvePublicKey:
    try:
        key = load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        hint = " (it holds a private key, which must never be here)" if b"PRIVATE" in data else ""
        raise ValueError(f"{file} is not a PEM public key{hint}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        kind = f"EC {key.curve.name}" if isinstance(key, ec.EllipticCurvePublicKey) else "not EC"
        raise ValueError(f"{file} holds a public key of type {kind}; expected EC P-256")
    return key


def _secret_source(value: Any, ld: _Loader, path: str) -> PinSource:
    """``{file|env|credential: ...}``; a secret written inline is refused without echoing it."""
    if not isinstance(value, dict):
        raise ValueError(
            f"expected a mapping with one of file, env or credential saying where the secret "
            f"is read from; the secret itself never goes in the YAML (got {_kind(value)}, "
            "value not shown)"
        )
    given = [kind for kind in _SOURCES if kind in value]
    unknown = [key for key in value if key not in _SOURCES]
    for key in unknown:
        ld.problem(
            _join(path, key),
            "unknown source: use file, env or credential "
            "(the secret itself never goes in the YAML)",
        )
    if len(given) > 1 or not (given or unknown):
        ld.problem(path, f"give exactly one of file, env, credential; got {len(given)}")
    if len(given) != 1 or unknown:
        raise _ReportedError
    source: PinSource = ld.convert(_SOURCE_NAMES[given[0]], value[given[0]], _join(path, given[0]))
    return source


def _source_name(kind: Literal["env", "credential"], pattern: re.Pattern[str]) -> Convert:
    def check(name: str) -> PinSource:
        if not pattern.fullmatch(name) or name in {".", ".."}:
            raise ValueError(f"{name!r} is not a valid {kind} name")
        return PinSource(kind, name)

    return _text(check)


_SOURCE_NAMES: dict[str, Convert] = {
    "file": lambda v, ld, p: PinSource("file", str(_file(files.SECRET_MAX, secret=True)(v, ld, p))),
    "env": _source_name("env", _ENV_NAME),
    "credential": _source_name("credential", _CREDENTIAL),
}


# --- the schema -----------------------------------------------------------------------------


def _build_hsm(v: dict[str, Any], _ld: _Loader, _path: str) -> HsmConfig:
    versions = v.pop("keys", None)
    return HsmConfig(**v, key_versions=versions or None)


def _build_tls(v: dict[str, Any], _ld: _Loader, _path: str) -> TlsConfig:
    return TlsConfig(**v | {"certificate": v["certificate"][0], "private_key": v["private_key"][0]})


def _build_partner(v: dict[str, Any], _ld: _Loader, _path: str) -> PartnerConfig:
    (ca, ca_pem), (key_path, key) = v.pop("ca"), v.pop("signing_key")
    v.setdefault("identity", v["id"])
    return PartnerConfig(**v, ca=ca, ca_pem=ca_pem, signing_key=key_path, signing_public_key=key)


def _build_issuer(v: dict[str, Any], _ld: _Loader, _path: str) -> IssuerConfig:
    (key_path, key) = v["public_key"]
    return IssuerConfig(kid=v["kid"], public_key_path=key_path, public_key=key)


def _build_limits(v: dict[str, Any], ld: _Loader, path: str) -> Limits:
    """The message limit must hold one segment plus framing; by default it is just that."""
    needed = v.setdefault("segment_size", DEFAULT_SEGMENT_SIZE) + FRAME_OVERHEAD
    key = "max_message_bytes" if "max_message_bytes" in v else "segment_size"
    if not needed <= v.setdefault("max_message_bytes", needed) <= MAX_MESSAGE_BYTES:
        ld.problem(
            _join(path, key),
            f"segment_size + {FRAME_OVERHEAD} bytes of framing = {needed} must fit in "
            f"max_message_bytes ({v['max_message_bytes']}, at most {MAX_MESSAGE_BYTES})",
        )
        raise _ReportedError
    return Limits(**v)


def _build_gateway(v: dict[str, Any], ld: _Loader, _path: str) -> GatewayConfig:
    return GatewayConfig(path=ld.source, **v)


_IDENTITY = {
    "id": _req(_text(check_gateway_id)),
    "jurisdiction": _req(_text(_jurisdiction)),
    "description": _opt(_text()),
}
_LISTEN = {
    "partner": _req(_address(allow_zero=True)),
    "local_socket": _req(_socket_path),
    "metrics": _opt(_address(allow_zero=True)),
}
_TLS = {
    "certificate": _req(_file(files.PEM_MAX, parse=_certificates)),
    "private_key": _req(_file(tlskey.MAX_KEY_FILE_LEN, secret=True, parse=_private_key)),
    "private_key_passphrase": _opt(_secret_source),
}
_HSM_KEYS = {p.value: _opt(_int(1, MAX_VERSION)) for p in Purpose}
_HSM = {
    "module": _req(_file(limit=None)),
    "token": _req(_text()),
    "pin": _req(_secret_source),
    "softhsm_conf": _opt(_file()),
    "keys": _opt(_record(_HSM_KEYS, lambda v, _ld, _p: {Purpose(k): n for k, n in v.items()})),
    "restart_after_seconds": _opt(_duration(10, 7 * DAY)),
}
_PARTNER = {
    "id": _req(_text(check_gateway_id)),
    "endpoint": _req(_address(allow_zero=False)),
    "jurisdiction": _req(_text(_jurisdiction)),
    "ca": _req(_file(files.PEM_MAX, parse=_certificates)),
    "identity": _opt(_text(_partner_identity)),
    "signing_key": _req(_file(files.PEM_MAX, parse=_p256_public_key)),
    "max_transfer_bytes": _opt(_int(1)),
}
_ISSUER = {
    "kid": _req(_text(_signing_kid)),
    "public_key": _req(_file(files.PEM_MAX, parse=_p256_public_key)),
}
_LIMITS = {
    "max_message_bytes": _opt(_int(MIN_SEGMENT_SIZE + FRAME_OVERHEAD, MAX_MESSAGE_BYTES)),
    "segment_size": _opt(_int(MIN_SEGMENT_SIZE, MAX_SEGMENT_SIZE)),
    "passport_leeway_seconds": _opt(_int(0, 600)),
    "drain_grace_seconds": _opt(_int(0, 3600)),
    "max_concurrent_transfers": _opt(_int(1, 1024)),
    "max_passport_bytes": _opt(_int(1024, 64 * KIB)),
    "partner_wait_seconds": _opt(_duration(0, 7 * DAY)),
    "keepalive_seconds": _opt(_duration(1, 3600)),
    "max_queued_sends": _opt(_int(0, 100_000)),
}
_RETENTION = {
    "unfinished_grace": _opt(_duration(0, 10 * 365 * DAY)),
    "fetched": _opt(_duration(0, 10 * 365 * DAY)),
    "acknowledged": _opt(_duration(0, 10 * 365 * DAY)),
    "unfetched": _opt(_duration(0, 10 * 365 * DAY)),
    "sweep_every": _opt(_duration(1, DAY)),
}
_PER_PURPOSE_DURATION = {p.value: _opt(_duration(0, 10 * 365 * DAY)) for p in Purpose}


def _build_keys(v: dict[str, Any], _ld: _Loader, _path: str) -> KeysConfig:
    """Purposes not named keep their defaults."""
    base = KeysConfig()
    rotate = {**base.rotate_every, **{Purpose(k): n for k, n in v.get("rotate_every", {}).items()}}
    grace = {**base.grace, **{Purpose(k): n for k, n in v.get("grace", {}).items()}}
    refresh = v.get("key_set_refresh", base.key_set_refresh)
    return KeysConfig(rotate_every=rotate, grace=grace, key_set_refresh=refresh)


_KEYS = {
    "rotate_every": _opt(_record(_PER_PURPOSE_DURATION, lambda v, _ld, _p: v)),
    "grace": _opt(_record(_PER_PURPOSE_DURATION, lambda v, _ld, _p: v)),
    "key_set_refresh": _opt(_duration(10, DAY)),
}


def _timezone(raw: Any, _ld: _Loader, _path: str) -> str:
    if not isinstance(raw, str):
        raise ValueError(f"expected a time zone name like Asia/Shanghai, got {_kind(raw)}")
    try:
        ZoneInfo(raw)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {raw!r} (an IANA name like Asia/Shanghai)") from None
    return raw


def _table_names(raw: Any, ld: _Loader, path: str) -> tuple[tuple[str, ...], bool]:
    """The tables named -- shipped names as they are, files against the config's directory --
    and whether every one is right (each mistake is recorded under its index).

    A bare name that is not shipped is a mistake, not a file: "prc-exprot" is a typo, and
    reading it as ``<config dir>/prc-exprot`` would only hide that behind "no such file".
    """
    if not isinstance(raw, list) or not raw:
        got = "an empty list" if raw == [] else _kind(raw)
        ld.problem(path, f"expected a non-empty list of rule table names or files, got {got}")
        return (), False
    shipped = shipped_tables()
    named, ok = list[str](), True
    for index, item in enumerate(raw):
        at = f"{path}[{index}]"
        if isinstance(item, str) and item in shipped:
            named.append(item)
        elif isinstance(item, str) and "/" not in item and not item.endswith((".yaml", ".yml")):
            close = difflib.get_close_matches(item, shipped, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"shipped: {', '.join(shipped)}"
            ld.problem(
                at, f"no shipped table {item!r} ({hint}); name a file by a path or with .yaml"
            )
            ok = False
        else:
            try:
                named.append(str(ld.convert(_file(files.YAML_MAX), item, at)))
            except _ReportedError:
                ok = False
    return tuple(named), ok


def _compliance(raw: Any, ld: _Loader, path: str) -> ComplianceConfig:
    """The ``compliance:`` section. The rule tables and their overrides are loaded even when
    another key of the section is wrong, and those keys are checked even when a table is: every
    mistake at once (``ld.section`` alone would stop at the first wrong key)."""
    if not isinstance(raw, dict):
        raise ValueError(f"expected a mapping, got {_kind(raw)}")
    failed = False
    tables: tuple[str, ...] = DEFAULT_RULE_TABLES
    if raw.get("tables") is not None:
        tables, ok = _table_names(raw["tables"], ld, _join(path, "tables"))
        failed = not ok
    overrides = raw.get("overrides")
    if overrides is not None and not isinstance(overrides, dict):
        ld.problem(
            _join(path, "overrides"), f"expected a mapping of rule ids, got {_kind(overrides)}"
        )
        overrides, failed = None, True
    rules: RuleSet | None = None
    try:
        # The tables that are right are still loaded: their own mistakes, and overrides that
        # name no rule of theirs, are reported with the rest.
        if tables:
            rules = load_tables(
                tables, overrides, overrides_file=ld.label, overrides_key=_join(path, "overrides")
            )
    except RuleTableError as exc:
        ld.problems.extend(exc.problems)
    rest = {key: value for key, value in raw.items() if key not in ("tables", "overrides")}
    v = ld.section(rest, path, _COMPLIANCE)  # raises once it has recorded its own mistakes
    if failed or rules is None:
        raise _ReportedError
    return ComplianceConfig(
        tables=tables,
        rules=rules,
        ingress=v.get("ingress", "enforce"),
        year_timezone=v.get("year_timezone", "UTC"),
        zone=v.get("zone"),
    )


#: The keys of ``compliance:``; ``tables`` and ``overrides`` are read by :func:`_compliance`
#: itself (listed here so that a misspelt key is told its right name).
_COMPLIANCE = {
    "tables": _opt(lambda raw, _ld, _p: raw),
    "overrides": _opt(lambda raw, _ld, _p: raw),
    "ingress": _opt(_choice("enforce", "record")),
    "year_timezone": _opt(_timezone),
    "zone": _opt(_text()),
}
_LOG = {
    "level": _opt(_choice("debug", "info", "warning", "error")),
    "format": _opt(_choice("auto", "json", "text")),
}
_TOP = {
    "gateway": _req(_record(_IDENTITY, Identity)),
    "listen": _req(_record(_LISTEN, Listen)),
    "tls": _req(_record(_TLS, _build_tls)),
    "hsm": _req(_record(_HSM, _build_hsm)),
    "partners": _opt(_list_of(_record(_PARTNER, _build_partner))),
    "issuers": _opt(_list_of(_record(_ISSUER, _build_issuer))),
    "state_dir": _req(_path),
    "limits": _opt(_record(_LIMITS, _build_limits)),
    "log": _opt(_record(_LOG, LogConfig)),
    "keys": _opt(_record(_KEYS, _build_keys)),
    "compliance": _opt(_compliance),
    "retention": _opt(_record(_RETENTION, RetentionConfig)),
}


def _cross_check(doc: dict[Any, Any], ld: _Loader) -> None:
    """Uniqueness across list items, on the raw document so it runs even if an item is broken."""
    own = doc["gateway"].get("id") if isinstance(doc.get("gateway"), dict) else None
    ids: dict[str, int] = {}
    identities: dict[str, tuple[int, bool]] = {}
    for i, raw in _items(doc, "partners"):
        if not isinstance(pid := raw.get("id"), str):
            continue
        if pid == own:
            ld.problem(f"partners[{i}].id", f"{pid!r} is this gateway's own id")
        elif ids.setdefault(pid, i) != i:
            ld.problem(
                f"partners[{i}].id", f"duplicate partner id {pid!r} (see partners[{ids[pid]}])"
            )
        explicit = isinstance(raw.get("identity"), str)
        ident = _identity_key(raw["identity"] if explicit else pid)
        first, first_explicit = identities.setdefault(ident, (i, explicit))
        if first != i and (explicit or first_explicit):  # two equal ids are reported above
            ld.problem(
                f"partners[{i}].{'identity' if explicit else 'id'}",
                f"certificate identity {ident!r} is also partners[{first}]'s; it must be unique",
            )
    kids: dict[str, int] = {}
    for i, raw in _items(doc, "issuers"):
        if isinstance(kid := raw.get("kid"), str) and kids.setdefault(kid, i) != i:
            ld.problem(
                f"issuers[{i}].kid", f"duplicate issuer kid {kid!r} (see issuers[{kids[kid]}])"
            )


def _items(doc: dict[Any, Any], key: str) -> list[tuple[int, dict[Any, Any]]]:
    items = doc.get(key)
    items = items if isinstance(items, list) else []
    return [(i, raw) for i, raw in enumerate(items) if isinstance(raw, dict)]


# --- loading --------------------------------------------------------------------------------


#: Deeper nesting is refused: PyYAML composes nodes recursively, and a file of ``[[[[...``
#: would otherwise end in a RecursionError; a gateway.yaml needs fewer than ten levels.
MAX_YAML_DEPTH = 64


class _StrictLoader(yaml.SafeLoader):
    """``safe_load``'s loader, except that a key given twice is a mistake, not "last wins",
    and nesting deeper than ``MAX_YAML_DEPTH`` is a syntax error, not a RecursionError."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[str] = []
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"nested more than {MAX_YAML_DEPTH} levels deep",
                    self.peek_event().start_mark,  # type: ignore[no-untyped-call]
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[str] = set()
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if key.value in seen:
                    line = key.start_mark.line + 1
                    self.duplicates.append(f"line {line}: key {key.value!r} is given twice")
                seen.add(key.value)
        return super().construct_mapping(node, deep)


def _syntax_error(label: str, exc: Exception, text: str) -> str:
    """Position and reason only: PyYAML's own message quotes the line, which may be secret."""
    if isinstance(exc, yaml.reader.ReaderError) and isinstance(exc.character, int):
        # A control character: PyYAML refuses it before parsing and says only "position N".
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        return (
            f"{label}: line {line}, column {column}: invalid YAML: control character "
            f"U+{exc.character:04X} is not allowed (only tab, newline and printable text)"
        )
    if not isinstance(exc, yaml.MarkedYAMLError) or not (mark := exc.problem_mark):
        # PyYAML lets a bad timestamp (2024-13-01) escape as a bare ValueError.
        return f"{label}: not valid YAML: {exc if isinstance(exc, ValueError) else 'syntax error'}"
    started = exc.context_mark
    at = f" at line {started.line + 1}" if started and started.line != mark.line else ""
    context = f" ({exc.context}{at})" if exc.context else ""
    reason = f"{exc.problem or 'syntax error'}{context}"
    return f"{label}: line {mark.line + 1}, column {mark.column + 1}: invalid YAML: {reason}"


def load_config(path: str | Path) -> GatewayConfig:
    """Load and check the gateway's YAML file; every mistake is in one ``ConfigError``.

    Relative paths in the file are resolved against the file's directory, so that a config
    and the files next to it can be moved together.
    """
    label, source = str(path), Path(path).absolute()
    try:
        raw = files.read_bounded(source, files.YAML_MAX)
        text = raw.decode("utf-8")
    except files.FileMissingError:
        raise ConfigError(f"{label}: configuration file does not exist") from None
    except files.FileError as exc:
        raise ConfigError(f"{label}: cannot use the configuration file: {exc.why}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{label}: configuration file is not UTF-8 text") from None
    doc, duplicates = _parse(label, text)
    if doc is None:
        required = ", ".join(key for key, spec in _TOP.items() if spec.required)
        raise ConfigError(f"{label}: the file is empty; expected a mapping with {required}")
    if not isinstance(doc, dict):
        raise ConfigError(f"{label}: the top level must be a mapping, got {_kind(doc)}")
    ld = _Loader(label, source)
    ld.problems.extend(f"{label}: {duplicate}" for duplicate in duplicates)
    config = _load_document(doc, ld)
    return dataclasses.replace(config, sha256=hashlib.sha256(raw).hexdigest())


def load_config_document(doc: dict[Any, Any], path: str | Path) -> GatewayConfig:
    """A config from its parsed YAML ``doc`` as if read from ``path`` (relative paths resolve
    against its directory): ``xbgw check`` loads a file again without the entries that
    failed, so that one broken partner does not stop the HSM and TLS checks."""
    return _load_document(doc, _Loader(str(path), Path(path).absolute()))


def _load_document(doc: dict[Any, Any], ld: _Loader) -> GatewayConfig:
    config: GatewayConfig | None = None
    with contextlib.suppress(_ReportedError):
        config = _record(_TOP, _build_gateway)(doc, ld, "")
    _cross_check(doc, ld)
    if ld.problems or config is None:
        raise ConfigError(ld.problems)
    return config


def _parse(label: str, text: str) -> tuple[Any, list[str]]:
    """The YAML document and its duplicate keys; every YAML failure is a ``ConfigError``
    (building the loader too: PyYAML refuses a control character there)."""
    loader: _StrictLoader | None = None
    try:
        loader = _StrictLoader(text)
        return loader.get_single_data(), loader.duplicates
    except (yaml.YAMLError, ValueError) as exc:
        raise ConfigError(_syntax_error(label, exc, text)) from None
    finally:
        if loader is not None:
            loader.dispose()
