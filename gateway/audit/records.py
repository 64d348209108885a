"""Audit records: what the gateway's Merkle log holds, one leaf each.

Why canonical JSON: an auditor must be able to recompute a leaf hash from the record with
any JSON tool, and two implementations must never disagree on the bytes. So a record is a
flat JSON object with sorted keys, no white space, ASCII only (``json.dumps(...,
sort_keys=True, separators=(",", ":"), ensure_ascii=True)``), integers for times (Unix
seconds) and sizes, lowercase hex for digests. The leaf is ``SHA-256(0x00 || record)``
(RFC 9162 §2.1).

What a record never holds: payload bytes, personal data, secrets. Only identifiers
(transfer ids, gateway ids, key references), digests, sizes, times, outcomes, rule ids and
articles. A refusal's reason is kept as the rule ids and the error type, not free text a
partner could fill.

Every record has ``v`` (format version, 1), ``gw`` (the gateway whose log it is), ``kind``
(one of :data:`KINDS`) and ``at``; the other members depend on the kind and are listed with
it below.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

VERSION: Final = 1

#: Every kind of record, with the members it carries besides v, gw, kind and at.
KINDS: Final[Mapping[str, tuple[str, ...]]] = {
    # the receiving side
    "offer.accepted": ("transfer_id", "partner", "passport_digest", "rules"),
    "offer.refused": ("transfer_id", "partner", "error", "status", "rules"),
    "transfer.committed": (
        "transfer_id",
        "partner",
        "passport_digest",
        "manifest_digest",
        "plaintext_sha256",
        "plaintext_size",
        "receipt_digest",
        "receipt_key",
    ),
    "transfer.refused": ("transfer_id", "partner", "error"),
    "inbox.acknowledged": ("transfer_id",),
    # cause: "operator" (xbgw inbox delete) or the retention rule ("fetched", "acknowledged",
    # "unfetched"); the ledger row and its receipt stay
    "inbox.deleted": ("transfer_id", "cause"),
    # either side (direction "in" or "out"); "by": the gateway whose operator cancelled it.
    # The operator's words stay in the ledger: the record holds their SHA-256 only (free text
    # may name people, and a partner fills it for a cancel of its own transfer).
    "transfer.cancelled": ("transfer_id", "partner", "direction", "by", "reason_sha256"),
    # unfinished past its passport's exp ("passport_exp", 0: not known) + retention grace
    "transfer.expired": ("transfer_id", "partner", "direction", "passport_exp"),
    # a partner's upload or finish ("call") refused: its passport's exp + leeway had passed
    "call.refused": ("transfer_id", "partner", "call", "error", "status", "passport_exp"),
    # the sending side
    "transfer.delivered": (
        "transfer_id",
        "partner",
        "passport_digest",
        "manifest_digest",
        "plaintext_sha256",
        "plaintext_size",
        "receipt_digest",
        "receipt_key",
    ),
    # keys, configuration, administration
    "key.changed": ("key", "state"),
    "config.reloaded": ("config_sha256",),
    # witnessing partners' logs (gateway.audit.witness)
    "witness.alarm": ("partner", "reason", "size"),
    "witness.acknowledged": ("partner",),
    "admin.fetch": ("transfer_id",),
}


class AuditRecordError(ValueError):
    """A record that is not what its kind says (a programming error, caught in tests)."""


Value = str | int | bool | None | list[str]


@dataclass(frozen=True)
class AuditRecord:
    """One event, before it is written (the log adds ``gw`` and the leaf index)."""

    kind: str
    at: int
    members: Mapping[str, Value] = field(default_factory=dict)

    def __post_init__(self) -> None:
        wanted = KINDS.get(self.kind)
        if wanted is None:
            raise AuditRecordError(f"unknown audit record kind {self.kind!r}")
        if set(self.members) != set(wanted):
            missing = sorted(set(wanted) - set(self.members))
            extra = sorted(set(self.members) - set(wanted))
            raise AuditRecordError(
                f"audit record {self.kind}: missing {missing or 'nothing'}, "
                f"unexpected {extra or 'nothing'}"
            )

    def encode(self, gateway: str) -> bytes:
        """The canonical bytes of this record in ``gateway``'s log."""
        document: dict[str, Value] = {
            **self.members,
            "v": VERSION,
            "gw": gateway,
            "kind": self.kind,
            "at": self.at,
        }
        return json.dumps(
            document, sort_keys=True, separators=(",", ":"), ensure_ascii=True
        ).encode("ascii")


def decode(record: bytes) -> dict[str, object]:
    """A stored record as a mapping (for ``xbgw audit tail`` and ``export``); it must be the
    canonical form of itself, or it was not written by this code."""
    try:
        document = json.loads(record)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AuditRecordError(f"not a JSON audit record: {exc}") from None
    if not isinstance(document, dict):
        raise AuditRecordError("an audit record is a JSON object")
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    if canonical.encode("ascii") != record:
        raise AuditRecordError("the audit record is not in canonical form")
    return document


def hex_digest(digest: bytes) -> str:
    return digest.hex()
