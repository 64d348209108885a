"""Key administration: what ``xbgw keys status|rotate|retire|destroy|rewrap`` do.

One service for both ways the verbs run: inside the daemon (through the local socket: its own
HSM session and ledger, no restart, transfers keep flowing) and offline with ``-c`` when the
daemon is stopped (the CLI builds the same service on the same state directory, holding the
state-directory lock so the two can never act at once). Both paths therefore refuse, report
and log the same way. With several nodes on one PostgreSQL ledger the verbs that change
key states or move data keys (rotate, retire, destroy, rewrap) also take the ledger's
key-state lock (``KeyRing.changing``): one node at a time, whichever node they run on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from gateway import tlskey
from gateway.config import GatewayConfig
from gateway.envelope import KeyHolder
from gateway.errors import XbgwError
from gateway.keyring import KeyRing
from gateway.keys import KeyRef, KeyVersion, Purpose
from gateway.ledger import Ledger
from gateway.spool import Spool

#: Stored data keys outside the ledger that still need a storage version (the wrapped TLS
#: key): a blocker string, or None.
ExtraBlocker = Callable[[Purpose, int], str | None]


@dataclass(frozen=True)
class KeyReport:
    """A key version as ``xbgw keys status`` shows it."""

    key: KeyVersion
    blockers: tuple[str, ...]  # why retire would refuse it now

    def ref(self, owner: str) -> str:
        return str(KeyRef(owner, self.key.purpose, self.key.version))


@dataclass(frozen=True)
class RewrapOutcome:
    """What a rewrap did (the engine's report, in the terms the CLI prints)."""

    to_version: int
    rewrapped: int
    already: int
    busy: tuple[str, ...]
    failed: tuple[str, ...]
    remaining: int


#: Called as ``progress(done, total, transfer_id)`` while a rewrap runs.
Progress = Callable[[int, int, str], None]
Rewrapper = Callable[[Progress], RewrapOutcome]


class KeyAdministration:
    """The key verbs over one :class:`KeyRing`."""

    def __init__(
        self,
        ring: KeyRing,
        rewrapper: Rewrapper,
        extra_blockers: Sequence[ExtraBlocker] = (),
    ) -> None:
        self.ring = ring
        self._rewrapper = rewrapper
        self._extra = tuple(extra_blockers)

    @property
    def owner(self) -> str:
        return self.ring.owner

    def _blockers(self, key: KeyVersion) -> tuple[str, ...]:
        reasons = list(self.ring.retire_blockers(key.purpose, key.version))
        if key.state.in_service:
            reasons += [r for check in self._extra if (r := check(key.purpose, key.version))]
        return tuple(reasons)

    def status(self) -> list[KeyReport]:
        self.ring.reload()
        return [KeyReport(key, self._blockers(key)) for key in self.ring.versions()]

    def due(self) -> list[Purpose]:
        return self.ring.due()

    def rotate(self, purposes: Sequence[Purpose] | None) -> list[KeyVersion]:
        """Rotate ``purposes``; None: those whose active version is older than the policy."""
        if purposes is None:
            return self.ring.rotate_due()
        return [self.ring.rotate(purpose) for purpose in purposes]

    def retire(self, purpose: Purpose, version: int) -> KeyVersion:
        extra = [r for check in self._extra if (r := check(purpose, version))]
        return self.ring.retire(purpose, version, extra)

    def destroy(self, purpose: Purpose, version: int) -> KeyVersion:
        return self.ring.destroy(purpose, version)

    def rewrap(self, on_progress: Progress) -> RewrapOutcome:
        """Under the key-state lock, so that with several nodes the data keys move to the
        storage version active now and no node retires or rotates storage meanwhile (the
        other verbs wait for it, up to ``KEY_STATES_LOCK_SECONDS``)."""
        with self.ring.changing():
            return self._rewrapper(on_progress)


def engine_rewrapper(
    *,
    ring: KeyRing,
    keys: KeyHolder,
    ledger: Ledger,
    spool: Spool,
    hold_inbound: Callable[[str], AbstractContextManager[None]],
    hold_outbound: Callable[[str], AbstractContextManager[None]],
    tls_key_file: Callable[[], Path] | None = None,
) -> Rewrapper:
    """The rewrap engine (``gateway.rewrap``) over one gateway's parts, as a Rewrapper; with
    ``tls_key_file`` (the current ``tls.private_key``), a wrapped TLS key is moved too and
    counted with the transfers."""
    from gateway.rewrap import rewrap

    def run(progress: Progress) -> RewrapOutcome:
        report = rewrap(
            me=ring.owner,
            ring=ring,
            keys=keys,
            ledger=ledger,
            spool=spool,
            hold_inbound=hold_inbound,
            hold_outbound=hold_outbound,
            on_progress=lambda p: progress(p.done, p.total, p.transfer_id),
        )
        failed = [f"{tid}: {why}" for tid, why in report.failed]
        rewrapped, already, remaining = report.rewrapped, report.already, report.remaining
        if tls_key_file is not None:
            path = tls_key_file()
            try:
                if tlskey.storage_version_of_tls_key(path) is not None:  # None: plaintext
                    ref = KeyRef(ring.owner, Purpose.STORAGE, report.to_version)
                    if tlskey.rewrap_tls_key(path, keys, ring.owner, ref):
                        rewrapped += 1
                    else:
                        already += 1
            except XbgwError as exc:
                failed.append(f"TLS private key {path}: {exc}")
                remaining += 1
        return RewrapOutcome(
            to_version=report.to_version,
            rewrapped=rewrapped,
            already=already,
            busy=tuple(report.busy),
            failed=tuple(failed),
            remaining=remaining,
        )

    return run


def gateway_key_administration(
    *,
    config: Callable[[], GatewayConfig],
    ring: KeyRing,
    keys: KeyHolder,
    ledger: Ledger,
    spool: Spool,
    hold_inbound: Callable[[str], AbstractContextManager[None]],
    hold_outbound: Callable[[str], AbstractContextManager[None]],
) -> KeyAdministration:
    """The key verbs of one gateway, the same for the daemon and the offline CLI: stored data
    in the ledger and spool, and the wrapped TLS key its (current) configuration names."""

    def tls_key_file() -> Path:
        return config().tls.private_key

    def tls_blocker(purpose: Purpose, version: int) -> str | None:
        return tlskey.retire_blocker(tls_key_file(), purpose, version)

    rewrapper = engine_rewrapper(
        ring=ring,
        keys=keys,
        ledger=ledger,
        spool=spool,
        hold_inbound=hold_inbound,
        hold_outbound=hold_outbound,
        tls_key_file=tls_key_file,
    )
    return KeyAdministration(ring, rewrapper, [tls_blocker])
