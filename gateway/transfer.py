"""The vocabulary the two sides of a transfer share, free of gRPC and of the HSM.

Why a module of its own: the sender, the receiver, the ledger, both servicers and the CLI all
speak of transfer states, segments and resume points. Defined here once, each of them maps
to its own representation (a SQLite column, a protobuf enum, a table on a terminal) in one
place, and the sender can talk to "a partner" through :class:`PartnerLink` whether that is a
mutual-TLS gRPC channel (``partner_link.py``) or a receiver in the same process (the tests'
loopback).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from gateway.config import PartnerConfig
from gateway.envelope import KeyHolder
from gateway.errors import FETCH_A_FRESH_KEY_SET, STORAGE_FULL, PartnerError
from gateway.keys import HasVersions
from gateway.signed import DigestSigner, Signed


class GatewayKeys(KeyHolder, DigestSigner, HasVersions, Protocol):
    """What the sender and the receiver need of the HSM: ECDH with our transport keys, wrap
    and unwrap under our storage keys, signing, and which versions exist. ``hsm.Hsm`` is one;
    the tests' ``SoftwareHsm`` another."""


class TransferState(StrEnum):
    """Where a transfer stands, on either side; the value is what the ledger stores."""

    RECEIVING = "receiving"  # receiver: offered and accepted; segments arriving or resumable
    COMMITTED = "committed"  # receiver: manifest checked, data committed, receipt signed
    REFUSED = "refused"  # receiver: refused for good (byte limit, manifest); passport spent
    SENDING = "sending"  # sender: in progress or resumable
    DELIVERED = "delivered"  # sender: the partner's receipt verified and recorded
    CANCELLED = "cancelled"  # either side: an operator gave it up (xbgw cancel); final
    EXPIRED = "expired"  # either side: unfinished past its passport's exp + retention grace

    @property
    def ended(self) -> bool:
        """Cancelled or expired: final, its data gone; nothing more is sent or taken for it."""
        return self in (TransferState.CANCELLED, TransferState.EXPIRED)


class SegmentIn:
    """One encrypted segment as it travels: ``ciphertext`` is segment ``index`` of a stream."""

    __slots__ = ("ciphertext", "final", "index", "transfer_id")

    def __init__(self, transfer_id: str, index: int, final: bool, ciphertext: bytes) -> None:
        self.transfer_id = transfer_id
        self.index = index
        self.final = final
        self.ciphertext = ciphertext


@dataclass(frozen=True)
class OfferResult:
    """The receiver's answer to an offer: where the sender must resume."""

    transfer_id: str
    next_segment: int
    received_bytes: int
    resumed: bool
    committed: bool = False  # delivered before and the receipt was lost: only Finish remains


@dataclass(frozen=True)
class CommitProof:
    """Where a commit is in the receiver's audit log: its canonical record, leaf index, a
    signed checkpoint (C2SP note text) and the inclusion proof under that checkpoint."""

    record: bytes
    leaf: int
    checkpoint: str
    inclusion: tuple[bytes, ...]


@dataclass(frozen=True)
class FinishResult:
    """The answer to Finish: the signed receipt, and (when a checkpoint covered the commit in
    time) the proof that the commit is in the receiver's log."""

    receipt: Signed
    proof: CommitProof | None = None


@dataclass(frozen=True)
class UploadResult:
    next_segment: int
    received_bytes: int
    final_received: bool


@dataclass(frozen=True)
class TransferStatus:
    """What a partner will say about one of our transfers (``GetTransfer``)."""

    transfer_id: str
    state: TransferState
    next_segment: int
    received_bytes: int
    receipt: Signed | None


class PartnerLink(Protocol):
    """The sender's view of a partner gateway: the five partner calls, in domain types.

    Implementations raise :class:`gateway.errors.PartnerError` (see :func:`refused_by`) for
    anything the partner refused or that did not reach it, so the sender handles one error
    type whatever carries the calls.
    """

    def key_set(self, partner: PartnerConfig) -> Signed:
        """The partner's key set as served: a ``documents.EndorsedKeySet`` (a ``Signed`` with
        the endorsements of its verify-only signing keys), or a plain ``Signed`` from a link or
        partner that carries none."""
        ...

    def offer(self, partner: PartnerConfig, passport: str, header: bytes) -> OfferResult: ...

    def upload(self, partner: PartnerConfig, segments: Iterator[SegmentIn]) -> UploadResult: ...

    def finish(
        self, partner: PartnerConfig, transfer_id: str, manifest: Signed
    ) -> FinishResult: ...

    def deliver(
        self,
        partner: PartnerConfig,
        passport: str,
        header: bytes,
        segment: SegmentIn,
        manifest: Signed,
    ) -> FinishResult | None:
        """A transfer of one segment in one call (offer, upload and finish on the partner, in
        that order); its answer is Finish's. None if the partner has no such call (an older
        gateway): the link remembers that, so the sender falls back to the three calls at no
        further cost. A refusal is worded as the step's own (:data:`DELIVER_STEPS`), so the
        sender handles it as it handles that call's."""
        ...

    def status(self, partner: PartnerConfig, transfer_id: str) -> TransferStatus: ...

    def cancel(self, partner: PartnerConfig, transfer_id: str, reason: str) -> TransferState:
        """Tell the partner we gave the transfer up; the state it holds it in afterwards
        (CANCELLED, or EXPIRED or REFUSED if it had ended before)."""
        ...


# What each call is called in messages to the operator ("partner X refused the offer ...").
CALL_NAMES = {
    "key_set": "the key-set request",
    "offer": "the offer",
    "upload": "the upload",
    "finish": "the manifest",
    "deliver": "the one-call delivery",
    "status": "the status request",
    "cancel": "the cancel",
}


#: The steps of a Deliver call, as its refusals name them: a partner sets the trailing
#: metadata ``DELIVER_STEP_KEY`` to the step that refused, and the sender's message and
#: handling are that call's (``stale_transport_key``, a refusal before recording, ...).
DELIVER_STEPS = ("offer", "upload", "finish")
DELIVER_STEP_KEY = "xbgw-step"


def refused_by(partner: str, call: str, status: str, details: str) -> PartnerError:
    """The one wording of "the partner said no" for every link (status: a gRPC code name).
    The partner's "this gateway's storage is full: ..." reads "partner X's storage is full:
    ..." here: said by us, "this gateway" would blame the wrong side."""
    if status == "RESOURCE_EXHAUSTED" and details.startswith(STORAGE_FULL):
        whose = f"partner {partner}'s storage is full"
        return PartnerError(f"{whose}{details[len(STORAGE_FULL) :]}", status)
    return PartnerError(
        f"partner {partner} refused {CALL_NAMES[call]} ({status}): {details}", status
    )


def stale_transport_key(error: PartnerError) -> bool:
    """True if ``error`` is a partner's refusal of an offer sealed to a transport key it does
    not accept (``TransportKeyNotAcceptedError`` on its side): fetch its key set again.

    The wire carries a status and a message only; both must match -- the status, that it is
    the offer that was refused, and the words the refusal ends with -- so that no other
    refusal (a passport, a policy, a conflict) is taken for a stale key."""
    text = str(error)
    return (
        error.grpc_status == "FAILED_PRECONDITION"
        and f" refused {CALL_NAMES['offer']} (FAILED_PRECONDITION): " in text
        and text.rstrip().endswith(FETCH_A_FRESH_KEY_SET)
    )


def unreachable(partner: str, call: str, details: str) -> PartnerError:
    """The one wording of "the partner could not be reached" for every link."""
    return PartnerError(f"partner {partner} is unreachable during {CALL_NAMES[call]}: {details}")


# --- what is worth waiting for --------------------------------------------------------------

#: Statuses that say nothing was decided: the partner could not be reached, or did not answer
#: in time. Every partner call is safe to repeat (a new offer answers where to resume; Finish
#: is idempotent), so these are retried within the send's wait.
TRANSIENT_STATUSES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"})

#: The words of the partner's "busy, come back shortly" refusals, as they reach us: too
#: many requests from this gateway in flight (``PartnerBusyError``, RESOURCE_EXHAUSTED), its
#: one-writer guard while an older stream of the same transfer still runs there after a
#: reconnect (``TransferConflictError`` from the receiver's ``busy``, FAILED_PRECONDITION),
#: and a node of a several-node partner that lost the transfer's lease to another node
#: (``LeaseLostError``, ABORTED, ``gateway.ledger_leases``): the transfer goes on there, from
#: its durable point, at the next offer. Any other refusal with these statuses (a byte limit,
#: a full disk, a conflict) is final.
BUSY_WORDS = {
    "RESOURCE_EXHAUSTED": " requests in flight, its limit ",
    "FAILED_PRECONDITION": " is busy on another stream; ",
    "ABORTED": " lost the transfer's lease to another node ",
}


def transient(error: PartnerError) -> bool:
    """True if ``error`` may go away by itself -- unreachable, timed out, or busy -- so the
    same call is worth making again after a pause; False for a refusal (never retried)."""
    if error.grpc_status in TRANSIENT_STATUSES:
        return True
    words = BUSY_WORDS.get(error.grpc_status)
    return words is not None and words in str(error)
