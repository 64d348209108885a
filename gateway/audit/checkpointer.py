"""Signing checkpoints of the audit log: at most about a second after it grows, and at once
when a receipt needs one.

Why batched: a checkpoint costs one HSM signature and two durable SQLite commits. Signing
one per event would put that on every transfer; under load one checkpoint covers every leaf
appended since the last, so the cost per transfer falls as the load rises. A caller that must
hand out a proof (the receiver answering Finish) asks :meth:`Checkpointer.covering`, which
wakes the signer and waits for the first checkpoint that includes its leaf -- the waits of
concurrent finishes are served by one signature.

Each checkpoint is recorded with its root in a durable transaction *before* it is signed
(``Ledger.begin_checkpoint``): that commit fsyncs every leaf it covers, so a signed
checkpoint never covers a leaf a power loss could take back. The note is the C2SP
tlog-checkpoint text (origin = the gateway id) signed with the active signing key (ECDSA
P-256, signed-note type 0x02); see :mod:`gateway.audit.checkpoint`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.audit.checkpoint import Checkpoint, NoteError, digest_signer, key_id, sign_note
from gateway.errors import XbgwError
from gateway.keys import KeyRef, Purpose
from gateway.ledger import Ledger
from gateway.transfer import GatewayKeys

log = logging.getLogger("xbgw.audit")

#: The longest a grown log waits for its checkpoint.
CHECKPOINT_INTERVAL_SECONDS = 1.0


@dataclass(frozen=True)
class SignedCheckpoint:
    size: int
    root: bytes
    note: str


class Checkpointer:
    """Signs checkpoints in a thread of its own; thread-safe."""

    def __init__(
        self,
        me: str,
        ledger: Ledger,
        keys: GatewayKeys,
        signing_version: Callable[[], int],
        interval: float = CHECKPOINT_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._me = me
        self._ledger = ledger
        self._keys = keys
        self._signing_version = signing_version
        self._interval = interval
        self._clock = clock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._signed = threading.Condition()
        latest = ledger.latest_checkpoint()
        self._latest = None if latest is None else SignedCheckpoint(*latest)
        self._thread: threading.Thread | None = None
        self._key_ids: dict[int, int] = {}

    @property
    def latest(self) -> SignedCheckpoint | None:
        with self._signed:
            return self._latest

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="audit-checkpoints", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Sign what is left, then stop (the last leaves get their checkpoint)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()

    def covering(self, leaf: int, timeout: float = 10.0) -> SignedCheckpoint | None:
        """The first checkpoint that includes ``leaf``, waiting for it (None after
        ``timeout``: the receipt then goes without a proof, and the next one covers it)."""
        deadline = time.monotonic() + timeout
        with self._signed:
            while self._latest is None or self._latest.size <= leaf:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._wake.set()
                self._signed.wait(left)
            return self._latest

    def sign_now(self) -> SignedCheckpoint:
        """Checkpoint the log as it is now (a no-op if the newest already covers it)."""
        size, root = self._ledger.begin_checkpoint()
        latest = self.latest
        if latest is not None and latest.size >= size:
            return latest
        version = self._signing_version()
        signer = digest_signer(self._keys, KeyRef(self._me, Purpose.SIGNING, version))
        body = Checkpoint(self._me, size, root).body()
        note = sign_note(body, self._me, self._key_id(version), signer)
        self._ledger.finish_checkpoint(size, note, int(self._clock()))
        signed = SignedCheckpoint(size, root, note)
        with self._signed:
            if self._latest is None or self._latest.size < size:
                self._latest = signed
            self._signed.notify_all()
        log.debug("checkpoint signed", extra={"outcome": f"size {size}"})
        return signed

    def _key_id(self, version: int) -> int:
        """The note key ID of our signing key ``version``: a hash of its public key, which a
        version never changes, so it is worked out once per version."""
        found = self._key_ids.get(version)
        if found is None:
            found = key_id(self._me, self._keys.public_key(Purpose.SIGNING, version))
            self._key_ids[version] = found
        return found

    def _run(self) -> None:
        failing = ""  # the error of the last failed round: one log line per run of failures
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            # Read before signing: a stop() that comes while a checkpoint is being signed may
            # follow leaves that checkpoint does not cover -- one more round signs them.
            stopping = self._stop.is_set()
            try:
                latest = self.latest
                if self._ledger.audit_size() > (0 if latest is None else latest.size):
                    self.sign_now()
                    if failing:
                        log.info("audit checkpoint signed again after: %s", failing)
                        failing = ""
            except (XbgwError, NoteError) as exc:
                # The HSM (a malformed signature from it too) or the disk: again at the next
                # tick -- logged when the reason changes, not every second of an HSM outage.
                if str(exc) != failing:
                    log.error("audit checkpoint not signed: %s", exc)
                failing = str(exc)
            if stopping:
                return
