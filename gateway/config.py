"""The gateway's one YAML file, turned into frozen, typed dataclasses.

A misconfigured gateway must fail at load, never at first use: a typo in a partner's endpoint
found when the first transfer to it is attempted is an outage with a confusing cause. So
loading checks everything it can without the HSM or the network -- types, ranges, formats,
files that must exist, keys that must parse, cross references -- and reports *every* mistake
in one :class:`~gateway.errors.ConfigError`, one line each, as ``file: key.path: reason``.
An operator fixes the file once instead of once per restart.

The shape and the values are checked by pydantic models (:mod:`gateway.config_schema`, which
also gives the file's JSON Schema for editors); this module turns the checked document into
the frozen dataclasses the rest of the gateway uses, and adds what spans list items
(duplicate ids). Secrets are never values: a PIN or passphrase is a *source* (file, env,
systemd credential) and a secret-bearing value is never echoed in a message.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from gateway import config_schema as schema
from gateway import files
from gateway.compliance import RuleSet, load_tables
from gateway.config_schema import (
    DAY,
    DEFAULT_RULE_TABLES,
    DEFAULT_SEGMENT_SIZE,
    FD_SOCKET_SUFFIX,
    FRAME_OVERHEAD,
    MAX_CONNECTIONS,
    MAX_MESSAGE_BYTES,
    MAX_SEGMENT_SIZE,
    MIN_SEGMENT_SIZE,
    Address,
)
from gateway.errors import ConfigError
from gateway.keys import KeyRef, Purpose
from gateway.secrets import PinSource

__all__ = [
    "DAY",
    "DEFAULT_RULE_TABLES",
    "DEFAULT_SEGMENT_SIZE",
    "FD_SOCKET_SUFFIX",
    "FRAME_OVERHEAD",
    "MAX_CONNECTIONS",
    "MAX_MESSAGE_BYTES",
    "MAX_SEGMENT_SIZE",
    "MAX_YAML_DEPTH",
    "MIN_SEGMENT_SIZE",
    "Address",
    "ComplianceConfig",
    "GatewayConfig",
    "HsmConfig",
    "Identity",
    "IssuerConfig",
    "KeysConfig",
    "Limits",
    "Listen",
    "LogConfig",
    "PartnerConfig",
    "RetentionConfig",
    "TlsConfig",
    "load_config",
    "load_config_document",
]

# --- the typed result -----------------------------------------------------------------------


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
    health: Address | None = None  # None: no plaintext health listener for a balancer


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
    #: TCP connections one transfer to this partner is striped over (1: one, as before).
    #: On a long path each connection carries at most its TCP window per round trip.
    connections: int = 1


@dataclass(frozen=True)
class IssuerConfig:
    """A trusted passport issuer: the JWS ``kid`` and the P-256 key it must verify with."""

    kid: KeyRef
    public_key_path: Path
    public_key: ec.EllipticCurvePublicKey


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
class StateConfig:
    """Where the ledger is kept (``state:``): None -- the SQLite file in ``state_dir``; or a
    PostgreSQL URL (no password in it) shared by several nodes, its password read from
    ``password`` when the ledger is opened."""

    database: str | None = None
    password: PinSource | None = None
    lease_seconds: int = 15  # a transfer lease's life on a shared database (ledger_leases)


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
    state: StateConfig = field(default_factory=StateConfig)
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


def _identity_key(identity: str) -> str:
    return identity if ":" in identity else identity.lower()  # DNS names ignore case


# --- from the checked document to the typed result -------------------------------------------


def _build(doc: schema.Document, source: Path) -> GatewayConfig:
    """The frozen result; every value in ``doc`` is already checked (and files parsed)."""
    tls, hsm = doc.tls, doc.hsm
    passphrase = tls.private_key_passphrase
    return GatewayConfig(
        path=source,
        gateway=Identity(doc.gateway.id, doc.gateway.jurisdiction, doc.gateway.description),
        listen=Listen(
            doc.listen.partner, doc.listen.local_socket, doc.listen.metrics, doc.listen.health
        ),
        tls=TlsConfig(
            tls.certificate.path, tls.private_key, passphrase.source() if passphrase else None
        ),
        hsm=HsmConfig(
            module=hsm.module,
            token=hsm.token,
            pin=hsm.pin.source(),
            softhsm_conf=hsm.softhsm_conf,
            key_versions=hsm.keys.versions() if hsm.keys else None,
            restart_after_seconds=hsm.restart_after_seconds,
        ),
        state_dir=doc.state_dir,
        partners=tuple(_partner(p) for p in doc.partners),
        issuers=tuple(
            IssuerConfig(i.kid, i.public_key.path, i.public_key.key) for i in doc.issuers
        ),
        limits=_limits(doc.limits) if doc.limits else Limits(),
        log=LogConfig(doc.log.level, doc.log.format) if doc.log else LogConfig(),
        keys=_keys(doc.keys) if doc.keys else KeysConfig(),
        compliance=_compliance(doc.compliance) if doc.compliance else ComplianceConfig(),
        retention=(
            RetentionConfig(**doc.retention.model_dump()) if doc.retention else RetentionConfig()
        ),
        state=(
            StateConfig(
                doc.state.database,
                doc.state.password.source() if doc.state.password else None,
                doc.state.lease_seconds,
            )
            if doc.state
            else StateConfig()
        ),
    )


def _partner(p: schema.Partner) -> PartnerConfig:
    return PartnerConfig(
        id=p.id,
        endpoint=p.endpoint,
        jurisdiction=p.jurisdiction,
        ca=p.ca.path,
        ca_pem=p.ca.pem,
        identity=p.identity or p.id,
        signing_key=p.signing_key.path,
        signing_public_key=p.signing_key.key,
        max_transfer_bytes=p.max_transfer_bytes,
        connections=p.connections,
    )


def _limits(v: schema.Limits) -> Limits:
    """By default the message limit is one segment plus framing (the model checked it fits)."""
    values = v.model_dump()
    if values["max_message_bytes"] is None:
        values["max_message_bytes"] = v.segment_size + FRAME_OVERHEAD
    return Limits(**values)


def _keys(v: schema.Keys) -> KeysConfig:
    """Purposes not named keep their defaults."""
    base = KeysConfig()
    return KeysConfig(
        rotate_every=base.rotate_every | (v.rotate_every.given() if v.rotate_every else {}),
        grace=base.grace | (v.grace.given() if v.grace else {}),
        key_set_refresh=v.key_set_refresh,
    )


def _compliance(v: schema.Compliance) -> ComplianceConfig:
    assert v.rules is not None  # loaded whenever the tables were right
    return ComplianceConfig(
        tables=tuple(v.tables),
        rules=v.rules,
        ingress=v.ingress,
        year_timezone=v.year_timezone,
        zone=v.zone,
    )


def _cross_check(doc: dict[Any, Any], label: str) -> list[str]:
    """Uniqueness across list items, on the raw document so it runs even if an item is broken."""
    problems: list[str] = []

    def problem(path: str, reason: str) -> None:
        problems.append(f"{label}: {path}: {reason}")

    own = doc["gateway"].get("id") if isinstance(doc.get("gateway"), dict) else None
    ids: dict[str, int] = {}
    identities: dict[str, tuple[int, bool]] = {}
    for i, raw in _items(doc, "partners"):
        if not isinstance(pid := raw.get("id"), str):
            continue
        if pid == own:
            problem(f"partners[{i}].id", f"{pid!r} is this gateway's own id")
        elif ids.setdefault(pid, i) != i:
            problem(f"partners[{i}].id", f"duplicate partner id {pid!r} (see partners[{ids[pid]}])")
        explicit = isinstance(raw.get("identity"), str)
        ident = _identity_key(raw["identity"] if explicit else pid)
        first, first_explicit = identities.setdefault(ident, (i, explicit))
        if first != i and (explicit or first_explicit):  # two equal ids are reported above
            problem(
                f"partners[{i}].{'identity' if explicit else 'id'}",
                f"certificate identity {ident!r} is also partners[{first}]'s; it must be unique",
            )
    kids: dict[str, int] = {}
    for i, raw in _items(doc, "issuers"):
        if isinstance(kid := raw.get("kid"), str) and kids.setdefault(kid, i) != i:
            problem(f"issuers[{i}].kid", f"duplicate issuer kid {kid!r} (see issuers[{kids[kid]}])")
    return problems


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
        required = ", ".join(schema.required_keys())
        raise ConfigError(f"{label}: the file is empty; expected a mapping with {required}")
    if not isinstance(doc, dict):
        raise ConfigError(f"{label}: the top level must be a mapping, got {schema.kind(doc)}")
    config = _load_document(doc, label, source, [f"{label}: {d}" for d in duplicates])
    return dataclasses.replace(config, sha256=hashlib.sha256(raw).hexdigest())


def load_config_document(doc: dict[Any, Any], path: str | Path) -> GatewayConfig:
    """A config from its parsed YAML ``doc`` as if read from ``path`` (relative paths resolve
    against its directory): ``xbgw check`` loads a file again without the entries that
    failed, so that one broken partner does not stop the HSM and TLS checks."""
    return _load_document(doc, str(path), Path(path).absolute(), [])


def _load_document(
    doc: dict[Any, Any], label: str, source: Path, problems: list[str]
) -> GatewayConfig:
    """Every check in one pass: the models (files included), then the cross-checks."""
    checked: schema.Document | None = None
    try:
        checked = schema.validate(doc, label, source.parent)
    except pydantic.ValidationError as exc:
        problems = [*problems, *schema.problems(exc, label, doc)]
    problems = [*problems, *_cross_check(doc, label)]
    if problems or checked is None:
        raise ConfigError(problems)
    return _build(checked, source)


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
