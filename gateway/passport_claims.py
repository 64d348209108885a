"""The claims of a data passport: the JWT claims and the terms of one transfer (the ``xbgw``
object), validated on construction so that an instance is always a valid set of terms.

Why a module of its own: the token format and its verification order (:mod:`gateway.passport`)
change rarely and must be read as one; the terms grow with every regime the gateway enforces.
The token module parses JSON and hands the objects here; nothing here touches bytes or keys.

Nine members every passport carries, and six compliance facts (issue #10) that are left out
at their defaults, so that a passport without them is byte for byte the format older
gateways read::

    "xbgw": {
      "sender": "lingang", "src": "CN-SH", "dst": "EU-DE",
      "classification": "important",  -- PRC data class (DSL Art. 21): core, important, general
      "pi": "personal",               -- PRC personal information: none, personal, sensitive
      "subjects": 1200,               -- 0 exactly when pi is none
      "purpose": "...", "legal_basis": "...", "byte_limit": 67108864,
      "exporter": "...",              -- the data handler             (default: the sender)
      "ciio": true,                   -- a CII operator               (default: false)
      "eu_class": "personal",         -- non-personal, personal, special (default: from pi)
      "categories": ["hr.payroll"],   -- for free-trade-zone lists    (default: none)
      "zone": "lingang",              -- the FTZ the data leaves from (default: none)
      "evidence": [                   --                              (default: none)
        {"kind": "cac-assessment", "reference": "CAC-2026-0042", "expires": 1864339200},
        {"kind": "gdpr-scc", "reference": "SCC-2026-7", "module": "2", "tia": "TIA-7"},
        {"kind": "exemption", "reference": "HR-2026-1", "article": "Provisions Art. 5(2)"}]
    }

* ``classification`` *is* the PRC class (``cn_class``) and ``pi`` the PRC PI level
  (``cn_pi``, PIPL Art. 28); neither is repeated under a second name. ``classification``
  used to be free-form: anything but ``core``, ``important`` or ``general`` is now refused,
  naming the three, because no rule could judge it.
* ``legal_basis`` stays the issuer's free-text statement (1-128 characters), recorded for
  audit; no rule reads it. Rules read ``evidence``.
* ``eu_class``, when given, must be the one :data:`EU_CLASS_OF_PI` maps ``pi`` to
  (none <-> non-personal, personal <-> personal, sensitive <-> special).
* ``exporter`` (1-128 characters) is what the yearly counters are kept by, so it must be in
  Unicode NFC and free of surrounding white space: one handler, one spelling.
* ``categories``: at most 64 distinct names of 1-64 characters of a-z 0-9 . - (starting
  with a letter or digit). ``zone``: 1-32 characters of a-z 0-9 -, starting with a letter.
* ``evidence``: at most 16 distinct entries, each a ``kind`` (:data:`EVIDENCE_KINDS`) and a
  ``reference`` (1-128 printable ASCII characters), and optionally ``expires`` (Unix
  seconds), ``article`` (the exemption or derogation claimed: required for ``exemption``
  and ``gdpr-derogation``, refused for other kinds), and ``module`` ("1" to "4", Decision
  2021/914) and ``tia`` (the transfer impact assessment), both only for ``gdpr-scc``.
  Whether evidence is *enough* -- unexpired, of the kind a rule needs -- is the rule table's
  decision, not the issuer's: a passport the policy will refuse can still be issued.
* Optional members are left out when they do not apply; ``null`` is refused.
* **Older passports** (without the compliance facts) are read with the defaults above:
  exporter = the sender gateway, not a CIIO, ``eu_class`` from ``pi``, no categories, zone
  or evidence. The rule tables then refuse whatever needs evidence -- the safe outcome.

:func:`compliance_terms` turns verified terms into the passport's share of the facts a
compliance decision is made on (:class:`gateway.compliance.facts.TransferFacts`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from gateway.errors import PassportClaimsError
from gateway.keys import check_gateway_id

if TYPE_CHECKING:  # imported where used: gateway.compliance builds on this module
    from gateway.compliance.facts import Direction, Evidence, TransferFacts

DEFAULT_MAX_LIFETIME_SECONDS: Final = 7 * 24 * 3600
MAX_LIFETIME_CEILING_SECONDS: Final = 30 * 24 * 3600  # a passport authorises one transfer
MAX_TIME: Final = 2**33  # seconds since the epoch (year 2242): rejects absurd or negative times
MAX_BYTE_LIMIT: Final = 2**50
MAX_SUBJECTS: Final = 2**53 - 1  # the largest integer every JSON implementation keeps exactly
MAX_PURPOSE_CHARS: Final = 256
MAX_LEGAL_BASIS_CHARS: Final = 128
MAX_EXPORTER_CHARS: Final = 128
MAX_CATEGORIES: Final = 64
MAX_EVIDENCE: Final = 16
MAX_REFERENCE_CHARS: Final = 128  # evidence reference and tia
MAX_ARTICLE_CHARS: Final = 64

# The vocabularies of gateway.compliance.facts (tests pin them equal). Kept here, not
# imported: gateway.compliance reads passports, so this module must not need it to load.
PI_CATEGORIES: Final = ("none", "personal", "sensitive")  #: CN_PI
CN_CLASSES: Final = ("core", "important", "general")
EU_CLASSES: Final = ("non-personal", "personal", "special")
EVIDENCE_KINDS: Final = (
    "cac-assessment",
    "pi-standard-contract",
    "pi-certification",
    "exemption",
    "ftz-procedure",
    "gdpr-scc",
    "gdpr-bcr",
    "gdpr-derogation",
)
#: The GDPR class a PRC personal-information level corresponds to (and ``eu_class`` must be).
EU_CLASS_OF_PI: Final[Mapping[str, str]] = MappingProxyType(
    {"none": "non-personal", "personal": "personal", "sensitive": "special"}
)
#: Evidence kinds that name the article claimed, and the SCC kind with a module and a TIA.
ARTICLE_KINDS: Final = ("exemption", "gdpr-derogation")
SCC_KIND: Final = "gdpr-scc"
SCC_MODULES: Final = ("1", "2", "3", "4")

# Transfer ids become spool file names: no leading dot (no ".", ".."), no slash.
_JTI = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_JURISDICTION = re.compile(r"[A-Z]{2}(-[A-Z0-9]{1,3})?")
_ZONE = re.compile(r"[a-z][a-z0-9-]{0,31}")
_CATEGORY = re.compile(r"[a-z0-9][a-z0-9.-]{0,63}")
_PRINTABLE_ASCII = re.compile(r"[ -~]*")
# Control, format (bidi overrides, zero-width), surrogate and line/paragraph separators: text
# claims are shown in the CLI and written to audit records, where these would mislead.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})

_CLAIMS: Final = frozenset({"iss", "jti", "iat", "nbf", "exp", "aud", "xbgw"})
_OPTIONAL_CLAIMS: Final = frozenset({"sub"})
_XBGW_CLAIMS: Final = frozenset(
    {
        "sender",
        "src",
        "dst",
        "classification",
        "pi",
        "subjects",
        "purpose",
        "legal_basis",
        "byte_limit",
    }
)
_XBGW_OPTIONAL: Final = frozenset(
    {"exporter", "ciio", "eu_class", "categories", "zone", "evidence"}
)
_EVIDENCE_MEMBERS: Final = frozenset({"kind", "reference"})
_EVIDENCE_OPTIONAL: Final = frozenset({"expires", "article", "module", "tia"})


# --- claims ---------------------------------------------------------------------------------


#: Between the issuer's id and the name it gives a transfer in ``jti``. Gateway ids never hold
#: an underscore, so the issuer of a transfer id is everything before its first one.
JTI_SEPARATOR: Final = "_"


def scoped_jti(iss: str, name: str) -> str:
    """The transfer id issuer ``iss`` gives the transfer it calls ``name``.

    Why: a passport is spent once per transfer id, and a receiver may trust several issuers.
    Were ids free, one issuer's passport could spend (or block) an id another issuer had
    chosen; an id that begins with its issuer's own id is unique across issuers by
    construction, and every verifier checks the prefix against the signing key's owner. A
    ``name`` that already carries this issuer's prefix is taken as the whole id.
    """
    prefix = iss + JTI_SEPARATOR
    return name if name.startswith(prefix) and len(name) > len(prefix) else prefix + name


def short_repr(value: object, limit: int = 40) -> str:
    """``repr`` cut to ``limit`` characters: messages name a bad value without echoing a blob."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _claim_error(name: str, problem: str) -> PassportClaimsError:
    return PassportClaimsError(f"passport claim {name!r} {problem}")


def _check_int(name: str, value: object, low: int, high: int) -> int:
    # type() rather than isinstance(): bool is an int subclass, and true is not a number.
    if type(value) is not int:
        raise _claim_error(name, f"must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise _claim_error(name, f"must be from {low} to {high}, got {value}")
    return value


def _check_str(name: str, value: object) -> str:
    if type(value) is not str:
        raise _claim_error(name, f"must be a string, got {type(value).__name__}")
    return value


def _check_pattern(name: str, value: object, pattern: re.Pattern[str], form: str) -> str:
    text = _check_str(name, value)
    if not pattern.fullmatch(text):
        raise _claim_error(name, f"must be {form}, got {short_repr(text)}")
    return text


def _check_gateway(name: str, value: object) -> str:
    text = _check_str(name, value)
    try:
        return check_gateway_id(text)
    except ValueError:
        raise _claim_error(
            name, f"must be a gateway id (1-63 characters of a-z 0-9 . -), got {short_repr(text)}"
        ) from None


def _check_text(name: str, value: object, max_chars: int) -> str:
    text = _check_str(name, value)
    if not 1 <= len(text) <= max_chars:
        raise _claim_error(name, f"must be 1 to {max_chars} characters, got {len(text)}")
    if not text.strip():
        raise _claim_error(name, "must not be blank")
    for char in text:
        if unicodedata.category(char) in _FORBIDDEN_CATEGORIES:
            raise _claim_error(name, f"must not contain the character U+{ord(char):04X}")
    return text


def _members(
    name: str, value: object, required: frozenset[str], optional: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """``value`` as a JSON object with exactly the ``required`` and some ``optional`` members."""
    prefix = f"{name}." if name else ""
    if not isinstance(value, dict):
        what = f"passport claim {name!r}" if name else "passport claims"
        raise PassportClaimsError(f"{what} must be a JSON object, got {type(value).__name__}")
    unknown = sorted(str(key) for key in value if key not in required | optional)
    if unknown:
        raise _claim_error(prefix + unknown[0], "is not allowed (unknown member)")
    missing = sorted(required - value.keys())
    if missing:
        raise _claim_error(prefix + missing[0], "is missing")
    return value


def _check_ascii(name: str, value: object, max_chars: int) -> str:
    """A reference or article: 1..``max_chars`` printable ASCII characters, not blank."""
    text = _check_str(name, value)
    if not 1 <= len(text) <= max_chars:
        raise _claim_error(
            name, f"must be 1 to {max_chars} printable ASCII characters, got {len(text)}"
        )
    if not _PRINTABLE_ASCII.fullmatch(text):
        bad = next(char for char in text if not " " <= char <= "~")
        raise _claim_error(
            name, f"must be printable ASCII (U+0020 to U+007E), got the character U+{ord(bad):04X}"
        )
    if not text.strip():
        raise _claim_error(name, "must not be blank")
    return text


def _check_choice(name: str, value: object, choices: tuple[str, ...], what: str = "") -> str:
    text = _check_str(name, value)
    if text not in choices:
        raise _claim_error(
            name, f"must be one of {', '.join(choices)}{what}, got {short_repr(text)}"
        )
    return text


def _check_list(name: str, value: object, max_items: int) -> tuple[Any, ...]:
    """A JSON array (a list or tuple in memory) of at most ``max_items`` entries, as a tuple."""
    if not isinstance(value, list | tuple):
        raise _claim_error(name, f"must be a list, got {type(value).__name__}")
    if len(value) > max_items:
        raise _claim_error(name, f"must have at most {max_items} entries, got {len(value)}")
    return tuple(value)


def _no_nulls(prefix: str, obj: Mapping[str, Any], optional: frozenset[str]) -> None:
    """Optional members are left out when they do not apply: ``null`` is not a value."""
    for key in sorted(optional & obj.keys()):
        if obj[key] is None:
            raise _claim_error(f"{prefix}.{key}", "must be left out, not null")


@dataclass(frozen=True)
class EvidenceClaim:
    """One ``xbgw.evidence`` entry: evidence the issuer vouches exists (see the module doc).

    Validated as part of :class:`XbgwClaims` (its messages name the entry's index).
    """

    kind: str  #: one of EVIDENCE_KINDS
    reference: str  #: assessment number, filing id, certificate id, ...; printable ASCII
    expires: int | None = None  #: Unix seconds; None: does not expire
    article: str | None = None  #: the exemption or derogation claimed
    module: str | None = None  #: SCC module, "1".."4" (Decision 2021/914)
    tia: str | None = None  #: transfer impact assessment reference (with SCCs)

    def check(self, name: str) -> None:
        """``PassportClaimsError`` naming ``name`` (e.g. ``xbgw.evidence[1]``) and the member."""
        kind = _check_choice(f"{name}.kind", self.kind, EVIDENCE_KINDS)
        _check_ascii(f"{name}.reference", self.reference, MAX_REFERENCE_CHARS)
        if self.expires is not None:
            if type(self.expires) is not int:
                raise _claim_error(
                    f"{name}.expires",
                    f"must be an integer (Unix seconds), got {type(self.expires).__name__}",
                )
            if not 0 <= self.expires <= MAX_TIME:
                raise _claim_error(
                    f"{name}.expires",
                    f"must be from 0 to {MAX_TIME} (Unix seconds), got {self.expires}",
                )
        if self.article is not None:
            if kind not in ARTICLE_KINDS:
                raise _claim_error(
                    f"{name}.article",
                    f"is not allowed for kind {kind} (only for {', '.join(ARTICLE_KINDS)})",
                )
            _check_ascii(f"{name}.article", self.article, MAX_ARTICLE_CHARS)
        elif kind in ARTICLE_KINDS:
            raise _claim_error(f"{name}.article", f"is missing: kind {kind} names the article")
        for member, value in (("module", self.module), ("tia", self.tia)):
            if value is not None and kind != SCC_KIND:
                raise _claim_error(
                    f"{name}.{member}", f"is not allowed for kind {kind} (only for {SCC_KIND})"
                )
        if self.module is not None:
            _check_choice(
                f"{name}.module", self.module, SCC_MODULES, " (the SCC module, Decision 2021/914)"
            )
        if self.tia is not None:
            _check_ascii(f"{name}.tia", self.tia, MAX_REFERENCE_CHARS)

    def to_json(self) -> dict[str, Any]:
        """The JSON object; members that are ``None`` are left out."""
        obj: dict[str, Any] = {"kind": self.kind, "reference": self.reference}
        for member in ("expires", "article", "module", "tia"):
            value = getattr(self, member)
            if value is not None:
                obj[member] = value
        return obj

    @classmethod
    def from_json(cls, value: object, name: str) -> EvidenceClaim:
        """Validate one decoded evidence object found at claim path ``name``."""
        obj = _members(name, value, _EVIDENCE_MEMBERS, _EVIDENCE_OPTIONAL)
        _no_nulls(name, obj, _EVIDENCE_OPTIONAL)
        evidence = cls(**obj)
        evidence.check(name)
        return evidence


@dataclass(frozen=True)
class XbgwClaims:
    """The ``xbgw`` object: the terms of one transfer, as the issuer authorised it.

    Values are validated on construction, so an instance is always a valid set of terms.
    The compliance facts after ``byte_limit`` are optional (see the module docstring for
    their defaults); ``categories`` and ``evidence`` may be given as lists and are kept as
    tuples.
    """

    sender: str  #: gateway id of the sending gateway
    src: str  #: source jurisdiction, e.g. "CN-SH"
    dst: str  #: destination jurisdiction, e.g. "EU-DE"
    classification: str  #: the PRC data class (cn_class): one of CN_CLASSES
    pi: str  #: the PRC personal-information level (cn_pi): one of PI_CATEGORIES
    subjects: int  #: number of data subjects; 0 exactly when pi is "none"
    purpose: str  #: purpose of the transfer, 1-256 characters
    legal_basis: str  #: free text recorded for audit, e.g. "CAC-SC-2026-0042"; 1-128 characters
    byte_limit: int  #: most plaintext bytes the transfer may carry, 1 .. 2**50
    exporter: str | None = None  #: the data handler; None: the sender gateway
    ciio: bool = False  #: the exporter is a critical-information-infrastructure operator
    eu_class: str | None = None  #: GDPR class (EU_CLASSES); None: EU_CLASS_OF_PI[pi]
    categories: tuple[str, ...] = ()  #: data categories, for free-trade-zone lists
    zone: str | None = None  #: the free-trade zone the data is exported from
    evidence: tuple[EvidenceClaim, ...] = ()  #: evidence references

    def __post_init__(self) -> None:
        _check_gateway("xbgw.sender", self.sender)
        jurisdiction = "a jurisdiction like CN-SH or EU-DE (^[A-Z]{2}(-[A-Z0-9]{1,3})?$)"
        _check_pattern("xbgw.src", self.src, _JURISDICTION, jurisdiction)
        _check_pattern("xbgw.dst", self.dst, _JURISDICTION, jurisdiction)
        _check_choice(
            "xbgw.classification",
            self.classification,
            CN_CLASSES,
            " (the PRC data class, DSL Art. 21)",
        )
        pi = _check_choice("xbgw.pi", self.pi, PI_CATEGORIES)
        subjects = _check_int("xbgw.subjects", self.subjects, 0, MAX_SUBJECTS)
        # The category and the count must tell the same story: a rule on "sensitive" data or
        # on a subject-count threshold must not be dodged by an inconsistent pair.
        if pi == "none" and subjects != 0:
            raise _claim_error("xbgw.subjects", f"must be 0 when xbgw.pi is none, got {subjects}")
        if pi != "none" and subjects == 0:
            raise _claim_error("xbgw.subjects", f"must be at least 1 when xbgw.pi is {pi}")
        _check_text("xbgw.purpose", self.purpose, MAX_PURPOSE_CHARS)
        _check_text("xbgw.legal_basis", self.legal_basis, MAX_LEGAL_BASIS_CHARS)
        _check_int("xbgw.byte_limit", self.byte_limit, 1, MAX_BYTE_LIMIT)
        self._check_compliance_facts(pi)

    def _check_compliance_facts(self, pi: str) -> None:
        if self.exporter is not None:
            exporter = _check_text("xbgw.exporter", self.exporter, MAX_EXPORTER_CHARS)
            if exporter != exporter.strip():
                raise _claim_error("xbgw.exporter", "must not begin or end with white space")
            if not unicodedata.is_normalized("NFC", exporter):
                raise _claim_error(
                    "xbgw.exporter",
                    "must be in Unicode NFC form (counters are kept per exporter: one spelling)",
                )
        if type(self.ciio) is not bool:
            raise _claim_error(
                "xbgw.ciio", f"must be true or false, got {type(self.ciio).__name__}"
            )
        if self.eu_class is not None:
            eu_class = _check_choice("xbgw.eu_class", self.eu_class, EU_CLASSES)
            if eu_class != EU_CLASS_OF_PI[pi]:
                mapping = ", ".join(f"{cn} <-> {eu}" for cn, eu in EU_CLASS_OF_PI.items())
                raise _claim_error(
                    "xbgw.eu_class",
                    f"is {eu_class!r}, but xbgw.pi {pi!r} maps to {EU_CLASS_OF_PI[pi]!r} "
                    f"({mapping})",
                )
        categories = _check_list("xbgw.categories", self.categories, MAX_CATEGORIES)
        seen: dict[str, int] = {}
        for i, category in enumerate(categories):
            name = f"xbgw.categories[{i}]"
            _check_pattern(
                name,
                category,
                _CATEGORY,
                "1-64 characters of a-z 0-9 . -, starting with a letter or digit",
            )
            if category in seen:
                raise _claim_error(name, f"repeats xbgw.categories[{seen[category]}] ({category})")
            seen[category] = i
        object.__setattr__(self, "categories", categories)
        if self.zone is not None:
            _check_pattern(
                "xbgw.zone",
                self.zone,
                _ZONE,
                "1-32 characters of a-z 0-9 -, starting with a letter",
            )
        evidence = _check_list("xbgw.evidence", self.evidence, MAX_EVIDENCE)
        references: dict[tuple[str, str], int] = {}
        for i, item in enumerate(evidence):
            name = f"xbgw.evidence[{i}]"
            if not isinstance(item, EvidenceClaim):
                raise _claim_error(name, f"must be EvidenceClaim, got {type(item).__name__}")
            item.check(name)
            key = (item.kind, item.reference)
            if key in references:
                raise _claim_error(
                    name, f"repeats xbgw.evidence[{references[key]}] ({item.kind} {item.reference})"
                )
            references[key] = i
        object.__setattr__(self, "evidence", evidence)

    @property
    def cn_class(self) -> str:
        """The PRC data class: the ``classification`` claim."""
        return self.classification

    @property
    def cn_pi(self) -> str:
        """The PRC personal-information level: the ``pi`` claim."""
        return self.pi

    def to_json(self) -> dict[str, Any]:
        """The ``xbgw`` JSON object; compliance facts at their defaults are left out."""
        obj: dict[str, Any] = {
            "sender": self.sender,
            "src": self.src,
            "dst": self.dst,
            "classification": self.classification,
            "pi": self.pi,
            "subjects": self.subjects,
            "purpose": self.purpose,
            "legal_basis": self.legal_basis,
            "byte_limit": self.byte_limit,
        }
        if self.exporter is not None:
            obj["exporter"] = self.exporter
        if self.ciio:
            obj["ciio"] = True
        if self.eu_class is not None:
            obj["eu_class"] = self.eu_class
        if self.categories:
            obj["categories"] = list(self.categories)
        if self.zone is not None:
            obj["zone"] = self.zone
        if self.evidence:
            obj["evidence"] = [item.to_json() for item in self.evidence]
        return obj

    @classmethod
    def from_json(cls, value: object) -> XbgwClaims:
        """Validate a decoded ``xbgw`` object; ``PassportClaimsError`` names the bad member."""
        obj = _members("xbgw", value, _XBGW_CLAIMS, _XBGW_OPTIONAL)
        _no_nulls("xbgw", obj, _XBGW_OPTIONAL)
        optional = {name: obj[name] for name in _XBGW_OPTIONAL & obj.keys()}
        if "categories" in optional:
            _check_list("xbgw.categories", optional["categories"], MAX_CATEGORIES)
        if "evidence" in optional:
            # Bounded before any entry is looked at; entries are validated where they are.
            entries = _check_list("xbgw.evidence", optional["evidence"], MAX_EVIDENCE)
            optional["evidence"] = tuple(
                EvidenceClaim.from_json(entry, f"xbgw.evidence[{i}]")
                for i, entry in enumerate(entries)
            )
        return cls(**{name: obj[name] for name in _XBGW_CLAIMS}, **optional)


@dataclass(frozen=True)
class PassportClaims:
    """The payload of a passport. Validated on construction (except the lifetime policy).

    The lifetime limit (``exp - nbf``) is a policy setting, not a property of the claims, so
    it is checked by :meth:`check_lifetime`, which :meth:`from_json`, :func:`issue` and
    :class:`PassportVerifier` call with their configured maximum.
    """

    iss: str  #: issuer: the gateway id that owns the signing key
    #: transfer id, 1-64 characters of A-Z a-z 0-9 . _ -: ``<iss>_<name>`` (:func:`scoped_jti`)
    jti: str
    iat: int  #: issued at, seconds since the epoch
    nbf: int  #: not valid before
    exp: int  #: not valid at or after
    aud: str  #: receiving gateway id
    xbgw: XbgwClaims
    sub: str | None = None  #: SHA-256 of the data set, lower-case hex; None when not known

    def __post_init__(self) -> None:
        _check_gateway("iss", self.iss)
        _check_pattern(
            "jti",
            self.jti,
            _JTI,
            "1-64 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit",
        )
        if not self.jti.startswith(self.iss + JTI_SEPARATOR) or len(self.jti) == len(self.iss) + 1:
            raise _claim_error(
                "jti",
                f"must be the issuer's id, '_' and a name ({self.iss}_...), so that no issuer "
                f"can take another's transfer ids; got {short_repr(self.jti)}",
            )
        for name in ("iat", "nbf", "exp"):
            _check_int(name, getattr(self, name), 0, MAX_TIME)
        if self.exp <= self.nbf:
            raise _claim_error("exp", f"({self.exp}) must be later than nbf ({self.nbf})")
        _check_gateway("aud", self.aud)
        if self.sub is not None:
            _check_pattern("sub", self.sub, _SHA256_HEX, "64 lower-case hex digits (SHA-256)")
        if not isinstance(self.xbgw, XbgwClaims):
            raise _claim_error("xbgw", f"must be XbgwClaims, got {type(self.xbgw).__name__}")

    @property
    def lifetime(self) -> int:
        """Seconds the passport is valid for: ``exp - nbf``."""
        return self.exp - self.nbf

    def check_lifetime(self, max_lifetime_seconds: int = DEFAULT_MAX_LIFETIME_SECONDS) -> None:
        """``PassportClaimsError`` if the passport is valid for longer than allowed."""
        check_max_lifetime(max_lifetime_seconds)
        if self.lifetime > max_lifetime_seconds:
            raise _claim_error(
                "exp",
                f"gives a lifetime (exp - nbf) of {self.lifetime} s, longer than the "
                f"maximum of {max_lifetime_seconds} s",
            )

    def to_json(self) -> dict[str, Any]:
        """The JSON payload object; ``sub`` is left out when it is ``None``."""
        obj: dict[str, Any] = {
            "iss": self.iss,
            "jti": self.jti,
            "iat": self.iat,
            "nbf": self.nbf,
            "exp": self.exp,
            "aud": self.aud,
            "xbgw": self.xbgw.to_json(),
        }
        if self.sub is not None:
            obj["sub"] = self.sub
        return obj

    @classmethod
    def from_json(
        cls, value: object, *, max_lifetime_seconds: int = DEFAULT_MAX_LIFETIME_SECONDS
    ) -> PassportClaims:
        """Validate a decoded payload object; ``PassportClaimsError`` names the bad claim.

        Unknown members are refused at both levels; ``sub``, when present, must be a string
        (absent, not ``null``, when the data set digest is unknown).
        """
        obj = _members("", value, _CLAIMS, _OPTIONAL_CLAIMS)
        claims = cls(
            iss=obj["iss"],
            jti=obj["jti"],
            iat=obj["iat"],
            nbf=obj["nbf"],
            exp=obj["exp"],
            aud=obj["aud"],
            xbgw=XbgwClaims.from_json(obj["xbgw"]),
            sub=_check_str("sub", obj["sub"]) if "sub" in obj else None,
        )
        claims.check_lifetime(max_lifetime_seconds)
        return claims


def check_max_lifetime(value: object) -> int:
    if type(value) is not int or not 1 <= value <= MAX_LIFETIME_CEILING_SECONDS:
        raise ValueError(
            f"max_lifetime_seconds must be an integer from 1 to {MAX_LIFETIME_CEILING_SECONDS}, "
            f"got {short_repr(value)}"
        )
    return value


# --- compliance terms -----------------------------------------------------------------------


@dataclass(frozen=True)
class ComplianceTerms:
    """What a passport contributes to a compliance decision, defaults applied.

    Field names are those of :class:`gateway.compliance.facts.TransferFacts`; the rest of a
    decision's facts -- direction, time, the two gateways and the exporter's yearly counts --
    come from the gateway (:meth:`facts`).
    """

    passport_src: str
    passport_dst: str
    zone: str | None
    exporter: str
    ciio: bool
    cn_class: str
    cn_pi: str
    eu_class: str
    subjects: int
    categories: tuple[str, ...]
    purpose: str
    evidence: tuple[Evidence, ...]
    byte_limit: int

    def facts(
        self,
        *,
        direction: Direction,
        now: int,
        sender: str,
        receiver: str,
        sender_jurisdiction: str,
        receiver_jurisdiction: str,
        year_subjects: int,
        year_sensitive: int,
    ) -> TransferFacts:
        """These terms with what the gateway supplies: the facts one decision is made on."""
        from gateway.compliance.facts import TransferFacts

        return TransferFacts(
            direction=direction,
            now=now,
            sender=sender,
            receiver=receiver,
            sender_jurisdiction=sender_jurisdiction,
            receiver_jurisdiction=receiver_jurisdiction,
            passport_src=self.passport_src,
            passport_dst=self.passport_dst,
            zone=self.zone,
            exporter=self.exporter,
            ciio=self.ciio,
            cn_class=self.cn_class,
            cn_pi=self.cn_pi,
            eu_class=self.eu_class,
            subjects=self.subjects,
            categories=self.categories,
            purpose=self.purpose,
            evidence=self.evidence,
            byte_limit=self.byte_limit,
            year_subjects=year_subjects,
            year_sensitive=year_sensitive,
        )


def compliance_terms(terms: XbgwClaims) -> ComplianceTerms:
    """The compliance facts of verified passport terms, with the documented defaults for
    what an older passport leaves out: exporter = the sender gateway, not a CIIO, ``eu_class``
    from ``pi`` (:data:`EU_CLASS_OF_PI`), no categories, zone or evidence.
    """
    from gateway.compliance.facts import Evidence

    if not isinstance(terms, XbgwClaims):
        raise TypeError(f"terms must be XbgwClaims, not {type(terms).__name__}")
    return ComplianceTerms(
        passport_src=terms.src,
        passport_dst=terms.dst,
        zone=terms.zone,
        exporter=terms.exporter if terms.exporter is not None else terms.sender,
        ciio=terms.ciio,
        cn_class=terms.classification,
        cn_pi=terms.pi,
        eu_class=terms.eu_class if terms.eu_class is not None else EU_CLASS_OF_PI[terms.pi],
        subjects=terms.subjects,
        categories=terms.categories,
        purpose=terms.purpose,
        evidence=tuple(
            Evidence(
                kind=item.kind,
                reference=item.reference,
                expires=item.expires,
                article=item.article,
                module=item.module,
                tia=item.tia,
            )
            for item in terms.evidence
        ),
        byte_limit=terms.byte_limit,
    )
