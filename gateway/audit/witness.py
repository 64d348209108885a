"""Cross-witnessing: each gateway checks that its partners' audit logs only ever grow, and
co-signs what it checked.

Why: a gateway's own signed checkpoints prove nothing against the gateway itself -- its key
signs whatever history it is told to, so an operator who rewrites the log on disk can sign
the rewritten one too. A partner that keeps the newest checkpoint it saw of that log, and
takes a newer one only with an RFC 9162 consistency proof from it, makes a rewrite visible:
the rewritten log is smaller (a rollback), has another root at the same size, or cannot
prove that it extends what was seen (a fork). Each gateway witnesses each partner, and hands
its cosignature (C2SP tlog-cosignature form, :func:`gateway.audit.checkpoint.cosign`) of
what it verified back to that partner, so a gateway can show a third party that its log
was witnessed.

A round, per configured partner, every :data:`WITNESS_INTERVAL` seconds and on demand
(``xbgw witness run``):

1. ``GetCheckpoint(known_size)`` with the size of the stored checkpoint of that partner;
2. the note must verify under the partner's signing keys (one good signature, origin = the
   partner id: :func:`~gateway.audit.checkpoint.open_checkpoint`);
3. smaller than the stored one: rollback; the same size and another root: fork; larger and
   the consistency proof from the stored one fails: fork. Each is an **alarm** -- one ERROR
   line on ``xbgw.audit``, ``xbgw_witness_alarms_total{partner}``, the health service
   :data:`HEALTH_SERVICE` NOT_SERVING, a row in ``witness_alarms`` -- and from then on offers
   from the partner are refused (:func:`check_offers`) until an operator runs ``xbgw witness
   acknowledge PARTNER``, which takes the checkpoint that raised the alarm as the new base;
4. otherwise the checkpoint is stored and cosigned, and the cosignature sent back (``Cosign``).

Decisions:

* **Only what the partner signed can raise an alarm.** A note that does not verify (signed
  by a key this gateway does not know, a bad signature, another origin, malformed) says
  nothing about the partner's log: it is *rejected* -- a warning, nothing stored, no alarm.
  Before rejecting, the partner's key set is fetched once, so that a signing-key rotation
  this gateway has not followed yet is learnt rather than refused.
* **Unreachable is not an alarm**: a partner that does not answer, or refuses the request
  (an older gateway without these RPCs), is logged at WARNING and asked again next round.
* **First sight is trusted** (trust on first use): with nothing stored there is nothing to be
  consistent with -- RFC 9162 defines no proof from the empty tree.
* **Under alarm the partner is not asked again**: the alarm stands, with its checkpoint,
  until acknowledged; the next round must then extend that checkpoint.
* **No network call under a lock**: a round reads the stored base, talks to the partner, and
  stores only if the base is unchanged (``Ledger.store_partner_checkpoint``), so rounds of
  the timer and of ``xbgw witness run`` may overlap harmlessly.
* **Cosigned once** per checkpoint in a process (again only if it did not reach the partner):
  an idle partner does not cost an HSM signature a minute.

The serving side: ``GetCheckpoint`` answers with our newest signed checkpoint and a proof
from the size asked; ``Cosign`` keeps a partner's cosignature only if it is of a checkpoint of
our log (size and root), the line is by the calling partner and verifies under one of its
signing keys (``cosignatures``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.audit.checkpoint import (
    Checkpoint,
    CosignatureVerifier,
    EcdsaVerifier,
    NoteError,
    NoteSignature,
    add_signatures,
    cosign,
    cosignature_key_id,
    digest_signer,
    open_checkpoint,
    parse,
    verify_cosignature,
)
from gateway.audit.checkpointer import Checkpointer
from gateway.audit.merkle import EMPTY_ROOT, ProofError, verify_consistency
from gateway.audit.records import AuditRecord
from gateway.config import GatewayConfig, PartnerConfig
from gateway.errors import PartnerError, SignatureError, TransferError, XbgwError
from gateway.keys import KeyRef, Purpose
from gateway.ledger import Cosignature, Ledger, PartnerCheckpoint, WitnessAlarm
from gateway.partner_keys import RETIRED, PartnerKeys
from gateway.transfer import GatewayKeys

log = logging.getLogger("xbgw.audit")

#: Seconds between two rounds of the witness thread.
WITNESS_INTERVAL = 60.0
#: The gRPC health service that is NOT_SERVING while any partner is under alarm (the
#: gateway's own "" service stays SERVING: transfers with the other partners go on).
HEALTH_SERVICE = "xbgw.witness"


class WitnessError(XbgwError):
    """A witnessing request that cannot be served (a cosignature of something that is not our
    checkpoint, no alarm to acknowledge, witnessing not available)."""

    grpc_status = "FAILED_PRECONDITION"


class WitnessAlarmError(TransferError):
    """An offer from a partner whose audit log showed a fork or rollback: refused until an
    operator acknowledges the alarm (``xbgw witness acknowledge PARTNER``)."""

    grpc_status = "FAILED_PRECONDITION"


@dataclass(frozen=True)
class ServedCheckpoint:
    """A partner's answer to ``GetCheckpoint``: its signed note and a consistency proof."""

    note: str
    consistency: tuple[bytes, ...] = ()


class WitnessLink(Protocol):
    """The two partner calls of witnessing (``GrpcPartnerLink`` is one); both raise
    :class:`~gateway.errors.PartnerError` for anything refused or not delivered."""

    def checkpoint(self, partner: PartnerConfig, known_size: int) -> ServedCheckpoint: ...

    def cosign(self, partner: PartnerConfig, checkpoint: str, cosignature: str) -> None: ...


class Outcome(StrEnum):
    """What one round did for one partner."""

    COSIGNED = "cosigned"  # a new checkpoint verified, stored, cosigned and handed back
    STORED = "stored"  # verified and stored; the cosignature was not signed or not delivered
    UNCHANGED = "unchanged"  # the checkpoint already verified and cosigned
    ALARM = "alarm"  # a fork or rollback: an alarm was raised now
    ALARMED = "alarmed"  # under an alarm not acknowledged yet: not asked
    UNREACHABLE = "unreachable"  # no answer, or the request refused: again next round
    REJECTED = "rejected"  # the note did not verify: nothing stored, no alarm
    SKIPPED = "skipped"  # another round stored a checkpoint meanwhile


@dataclass(frozen=True)
class Witnessed:
    """One partner's outcome of a round."""

    partner: str
    outcome: Outcome
    size: int | None = None
    detail: str = ""


@dataclass(frozen=True)
class PartnerWitnessState:
    """What this gateway holds of one partner's log."""

    partner: str
    checkpoint: PartnerCheckpoint | None
    alarm: WitnessAlarm | None


@dataclass(frozen=True)
class WitnessReport:
    """``xbgw witness status``: each partner's stored checkpoint and alarm, and who
    witnessed our own log (each witness's newest cosignature, and our newest cosigned
    checkpoint as a note carrying every cosignature of it)."""

    gateway: str
    partners: tuple[PartnerWitnessState, ...]
    cosignatures: tuple[Cosignature, ...]
    cosigned_checkpoint: str


class Witness:
    """Witnesses the partners' logs (a thread of its own, and rounds on demand) and serves
    the witnessing RPCs of our own log; thread-safe."""

    def __init__(
        self,
        config: Callable[[], GatewayConfig],
        ledger: Ledger,
        keys: GatewayKeys,
        signing_version: Callable[[], int],
        partner_keys: PartnerKeys,
        link: WitnessLink | None = None,
        checkpointer: Checkpointer | None = None,
        *,
        on_alarm: Callable[[str], None] | None = None,
        on_change: Callable[[frozenset[str]], None] | None = None,
        clock: Callable[[], float] = time.time,
        interval: float = WITNESS_INTERVAL,
    ) -> None:
        """``link``: None serves only (no rounds); ``checkpointer``: None witnesses only.
        ``on_alarm(partner)``: once per alarm raised (the metric); ``on_change(alarmed)``:
        after each round and acknowledgement, with the partners under alarm (health)."""
        self._config = config
        self._ledger = ledger
        self._keys = keys
        self._signing_version = signing_version
        self._partner_keys = partner_keys
        self._link = link
        self._checkpointer = checkpointer
        self._on_alarm = on_alarm
        self._on_change = on_change
        self._clock = clock
        self._interval = interval
        self._delivered: dict[str, tuple[int, bytes]] = {}  # cosignatures handed back
        self._guard = threading.Lock()  # _delivered only; never held over a call
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def me(self) -> str:
        return self._config().id

    # -- the thread ------------------------------------------------------------------------

    def start(self) -> None:
        self._changed()
        self._thread = threading.Thread(target=self._run, name="audit-witness", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end: it finishes the partner it is at (close the link to cut
        its call short), then :meth:`join`."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.round()
            except XbgwError as exc:  # the ledger: again next round
                log.error("witness round failed: %s", exc)
            except Exception:  # a bug must not end witnessing silently: say so, go on
                log.exception("witness round failed")

    # -- witnessing partners ---------------------------------------------------------------

    def round(self, partners: Iterable[str] = ()) -> list[Witnessed]:
        """Witness ``partners`` (ids; none: every configured partner) now."""
        config = self._config()
        wanted = list(partners)
        chosen = [config.partner(p) for p in wanted] if wanted else list(config.partners)
        done = []
        for partner in chosen:
            if self._stop.is_set():
                break
            done.append(self.witness(partner))
        self._changed()
        return done

    def witness(self, partner: PartnerConfig) -> Witnessed:
        """One partner's round (see the module doc)."""
        ledger = self._ledger
        alarm = ledger.witness_alarm(partner.id)
        if alarm is not None:
            return Witnessed(partner.id, Outcome.ALARMED, alarm.size, alarm.reason)
        if self._link is None:
            raise WitnessError("this gateway has no link to its partners to witness them")
        base = ledger.partner_checkpoint(partner.id)
        try:
            served = self._link.checkpoint(partner, 0 if base is None else base.size)
        except PartnerError as exc:
            log.warning(
                "partner %s not witnessed this round: %s",
                partner.id,
                exc,
                extra={"partner": partner.id, "outcome": Outcome.UNREACHABLE.value},
            )
            return Witnessed(partner.id, Outcome.UNREACHABLE, detail=str(exc))
        try:
            checkpoint = self._open(partner, served.note)
        except NoteError as exc:
            detail = f"its checkpoint does not verify, so it proves nothing (no alarm): {exc}"
            log.warning(
                "partner %s not witnessed this round: %s",
                partner.id,
                detail,
                extra={"partner": partner.id, "outcome": Outcome.REJECTED.value},
            )
            return Witnessed(partner.id, Outcome.REJECTED, detail=detail)
        problem = _inconsistency(base, checkpoint, served.consistency)
        if problem is not None:
            return self._alarm(partner, checkpoint, served.note, problem)
        if base is None or base.size != checkpoint.size:
            stored = ledger.store_partner_checkpoint(
                PartnerCheckpoint(
                    partner.id,
                    checkpoint.size,
                    checkpoint.root_hash,
                    served.note,
                    int(self._clock()),
                ),
                None if base is None else (base.size, base.root),
            )
            if not stored:
                detail = "another round stored a checkpoint of it meanwhile"
                return Witnessed(partner.id, Outcome.SKIPPED, checkpoint.size, detail)
        return self._cosign(partner, checkpoint, served.note)

    def _open(self, partner: PartnerConfig, note: str) -> Checkpoint:
        """The checkpoint of ``note`` if the partner signed it; once more after fetching its
        key set (a rotation not followed yet) before giving up."""
        try:
            return open_checkpoint(note, self._log_keys(partner), origin=partner.id).checkpoint
        except NoteError as first:
            try:
                self._partner_keys.forget(partner.id)
                self._partner_keys.key_set(partner)
            except (SignatureError, PartnerError) as exc:
                raise NoteError(f"{first} (its key set did not help: {exc})") from None
            return open_checkpoint(note, self._log_keys(partner), origin=partner.id).checkpoint

    def _log_keys(self, partner: PartnerConfig) -> list[EcdsaVerifier]:
        return [EcdsaVerifier(partner.id, key) for key in self.signing_keys(partner)]

    def signing_keys(self, partner: PartnerConfig) -> list[ec.EllipticCurvePublicKey]:
        """The partner's signing keys in service as learnt (``PartnerKeys``), or the key
        pinned in the configuration while none is learnt; one of each."""
        learnt = [
            k.public_key
            for k in self._partner_keys.known(partner.id)
            if k.ref.purpose is Purpose.SIGNING and k.state != RETIRED
        ]
        unique: dict[bytes, ec.EllipticCurvePublicKey] = {}
        for key in learnt or [partner.signing_public_key]:
            spki = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
            unique.setdefault(spki, key)
        return list(unique.values())

    def _alarm(
        self, partner: PartnerConfig, checkpoint: Checkpoint, note: str, reason: str
    ) -> Witnessed:
        alarm = WitnessAlarm(
            partner.id,
            int(self._clock()),
            reason,
            checkpoint.size,
            checkpoint.root_hash,
            note,
            None,
        )
        record = AuditRecord(
            "witness.alarm",
            alarm.raised_at,
            {"partner": partner.id, "reason": reason.split(":", 1)[0], "size": checkpoint.size},
        )
        if self._ledger.raise_witness_alarm(alarm, record.encode(self.me)):
            log.error(
                "witness alarm: the audit log of %s shows a %s; its offers are refused until "
                "an operator runs `xbgw witness acknowledge %s`",
                partner.id,
                reason,
                partner.id,
                extra={"partner": partner.id, "reason": reason, "outcome": "alarm"},
            )
            if self._on_alarm is not None:
                self._on_alarm(partner.id)
        with self._guard:
            self._delivered.pop(partner.id, None)
        return Witnessed(partner.id, Outcome.ALARM, checkpoint.size, reason)

    def _cosign(self, partner: PartnerConfig, checkpoint: Checkpoint, note: str) -> Witnessed:
        """Cosign ``checkpoint`` (stored: verified) and hand the cosignature back, unless that
        was done already in this process."""
        assert self._link is not None
        seen = (checkpoint.size, checkpoint.root_hash)
        with self._guard:
            if self._delivered.get(partner.id) == seen:
                return Witnessed(partner.id, Outcome.UNCHANGED, checkpoint.size)
        try:
            line = self.cosignature(checkpoint).line()
        except (XbgwError, NoteError) as exc:  # the HSM: the next round signs again
            log.error("cosignature of the checkpoint of %s not signed: %s", partner.id, exc)
            detail = f"stored; not cosigned: {exc}"
            return Witnessed(partner.id, Outcome.STORED, checkpoint.size, detail)
        if self._stop.is_set():
            return Witnessed(partner.id, Outcome.STORED, checkpoint.size, "stopping")
        try:
            self._link.cosign(partner, note, line)
        except PartnerError as exc:
            log.warning(
                "cosignature of the checkpoint of %s not delivered: %s",
                partner.id,
                exc,
                extra={"partner": partner.id, "outcome": Outcome.STORED.value},
            )
            detail = f"stored; the cosignature was not delivered: {exc}"
            return Witnessed(partner.id, Outcome.STORED, checkpoint.size, detail)
        with self._guard:
            self._delivered[partner.id] = seen
        log.info(
            "witnessed %s at size %d",
            partner.id,
            checkpoint.size,
            extra={"partner": partner.id, "outcome": Outcome.COSIGNED.value},
        )
        return Witnessed(partner.id, Outcome.COSIGNED, checkpoint.size)

    def cosignature(self, checkpoint: Checkpoint) -> NoteSignature:
        """Our cosignature of ``checkpoint``, now, with the active signing key."""
        me = self.me
        version = self._signing_version()
        public = self._keys.public_key(Purpose.SIGNING, version)
        signer = digest_signer(self._keys, KeyRef(me, Purpose.SIGNING, version))
        key_id = cosignature_key_id(me, public)
        return cosign(checkpoint, int(self._clock()), me, key_id, signer)

    def acknowledge(self, partner_id: str) -> WitnessAlarm:
        """Close ``partner_id``'s alarm: its offers are accepted again, and the checkpoint
        that raised the alarm is the base its next one must extend."""
        now = int(self._clock())
        record = AuditRecord("witness.acknowledged", now, {"partner": partner_id})
        alarm = self._ledger.acknowledge_witness_alarm(partner_id, now, record.encode(self.me))
        if alarm is None:
            raise WitnessError(f"partner {partner_id} is not under a witness alarm")
        with self._guard:
            self._delivered.pop(partner_id, None)
        log.warning(
            "witness alarm of %s acknowledged; its checkpoint of size %d is the new base and "
            "its offers are accepted again",
            partner_id,
            alarm.size,
            extra={"partner": partner_id, "reason": alarm.reason, "outcome": "acknowledged"},
        )
        self._changed()
        return alarm

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(frozenset(a.partner for a in self._ledger.witness_alarms()))

    # -- serving our own log ---------------------------------------------------------------

    def serve_checkpoint(self, known_size: int) -> ServedCheckpoint:
        """``GetCheckpoint``: our newest signed checkpoint, and a consistency proof to it
        from ``known_size`` (none from 0, nor from a size not smaller than it)."""
        if self._checkpointer is None:
            raise WitnessError("this gateway does not serve checkpoints of its audit log")
        signed = self._checkpointer.latest or self._checkpointer.sign_now()
        proof: list[bytes] = []
        if 0 < known_size < signed.size:
            proof = self._ledger.audit_consistency(known_size, signed.size)
        return ServedCheckpoint(signed.note, tuple(proof))

    def accept_cosignature(self, peer: PartnerConfig, note: str, line: str) -> Cosignature:
        """``Cosign``: keep ``peer``'s cosignature ``line`` of our checkpoint ``note``."""
        me = self.me
        try:
            checkpoint, _ = parse(note)
            signature = NoteSignature.from_line(line)
        except NoteError as exc:
            raise WitnessError(f"cosignature refused: {exc}") from None
        size = checkpoint.size
        if checkpoint.origin != me or not self._ours(checkpoint):
            raise WitnessError(
                f"cosignature refused: the checkpoint of {checkpoint.origin!r} at size {size} "
                f"is not one of the audit log of {me}"
            )
        if signature.name != peer.id:
            raise SignatureError(
                f"cosignature refused: it is by {signature.name!r}, but the connection is "
                f"from partner {peer.id!r}"
            )
        verifier = self._cosigner(peer, signature) or self._cosigner(peer, signature, True)
        if verifier is None:
            raise SignatureError(
                f"cosignature refused: key {signature} is not a signing key of {peer.id} "
                "this gateway knows"
            )
        leeway = self._config().limits.passport_leeway_seconds
        try:
            at = verify_cosignature(
                checkpoint, signature, verifier, not_after=int(self._clock()) + leeway
            )
        except NoteError as exc:
            raise SignatureError(f"cosignature refused: {exc}") from None
        kept = Cosignature(size, peer.id, signature.line(), at)
        self._ledger.add_cosignature(kept)
        log.info(
            "audit log cosigned by %s at size %d",
            peer.id,
            size,
            extra={"partner": peer.id, "outcome": "cosigned"},
        )
        return kept

    def _ours(self, checkpoint: Checkpoint) -> bool:
        """Is ``checkpoint`` (no extension lines) a tree head of our log?"""
        if checkpoint.extensions or checkpoint.size > self._ledger.audit_size():
            return False
        try:
            return self._ledger.audit_root(checkpoint.size) == checkpoint.root_hash
        except LookupError:  # a node missing: not a tree head we can vouch for
            return False

    def _cosigner(
        self, peer: PartnerConfig, signature: NoteSignature, refresh: bool = False
    ) -> CosignatureVerifier | None:
        if refresh:
            try:
                self._partner_keys.forget(peer.id)
                self._partner_keys.key_set(peer)
            except (SignatureError, PartnerError):
                return None
        verifiers = [CosignatureVerifier(peer.id, k) for k in self.signing_keys(peer)]
        return next((v for v in verifiers if v.key_id == signature.key_id), None)

    # -- reporting -------------------------------------------------------------------------

    def report(self) -> WitnessReport:
        """What ``xbgw witness status`` shows."""
        config = self._config()
        ledger = self._ledger
        stored = {c.partner: c for c in ledger.partner_checkpoints()}
        alarms = {a.partner: a for a in ledger.witness_alarms()}
        names = [p.id for p in config.partners]
        names += sorted((stored.keys() | alarms.keys()) - set(names))
        partners = tuple(PartnerWitnessState(p, stored.get(p), alarms.get(p)) for p in names)
        newest = ledger.cosignatures()
        return WitnessReport(config.id, partners, tuple(newest), self._cosigned_note(newest))

    def _cosigned_note(self, newest: Sequence[Cosignature]) -> str:
        """Our newest cosigned checkpoint with every cosignature of it appended."""
        if not newest:
            return ""
        size = max(c.size for c in newest)
        note = self._ledger.checkpoint_note(size)
        if note is None:
            return ""
        lines = [NoteSignature.from_line(c.line) for c in self._ledger.cosignatures(size)]
        try:
            return add_signatures(note, lines)
        except NoteError:
            return note


def _inconsistency(
    base: PartnerCheckpoint | None, checkpoint: Checkpoint, proof: Sequence[bytes]
) -> str | None:
    """Why ``checkpoint`` cannot follow ``base`` (a rollback or a fork), or None."""
    if base is None:
        return None
    size, root = checkpoint.size, checkpoint.root_hash
    if size < base.size:
        return f"rollback: a checkpoint of size {size} after one of size {base.size}"
    if size == base.size:
        if root != base.root:
            return (
                f"fork: a checkpoint of size {size} with root {root.hex()[:16]}, not the root "
                f"{base.root.hex()[:16]} seen before"
            )
        return None
    if base.size == 0 and base.root == EMPTY_ROOT:
        return None  # every tree extends the empty one
    try:
        verify_consistency(base.size, size, base.root, root, list(proof))
    except ProofError as exc:
        return f"fork: no proof that size {size} extends the size {base.size} seen before ({exc})"
    return None


def check_offers(ledger: Ledger, me: str, partner: str) -> None:
    """Refuse an offer from ``partner`` while it is under a witness alarm."""
    alarm = ledger.witness_alarm(partner)
    if alarm is not None:
        raise WitnessAlarmError(alarm_refusal(me, alarm))


def alarm_refusal(me: str, alarm: WitnessAlarm) -> str:
    """The refusal of an offer from a partner under alarm: why, and the verb that ends it."""
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(alarm.raised_at))
    return (
        f"{me} refuses offers from {alarm.partner}: witnessing its audit log found a "
        f"{alarm.reason} (at {when}); an operator of {me} must check it and run "
        f"`xbgw witness acknowledge {alarm.partner}`"
    )
