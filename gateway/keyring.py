"""This gateway's key versions and their lives: which version does new work, which versions
still open or verify old work, and the steps security teams take -- rotate, retire, destroy.

Why the states live in the ledger and not on the token: a PKCS#11 object has no notion of
"the version partners should use now" or "replaced on this date"; the newest object on the
token is not necessarily the one in use (a rotation may have been interrupted, a version
created by hand). The ledger is durable, shared by the daemon and the offline CLI, and
written in the same fsync discipline as the transfers that depend on the keys.

* **Adoption.** A ledger without key states (a gateway from before key lifecycle, or a fresh
  one after ``xbgw keys init``) adopts what the token holds: the version pinned by
  ``hsm.keys`` or else the highest becomes active, the others are replaced (decrypt-only or
  verify-only). After that the ledger decides; a version found on the token that the ledger
  does not know is recorded as pending and never used until rotated to.
* **Rotate** is resumable: the new version is recorded pending first, then made in the HSM
  (unless a crash left it made already), then activated -- one transaction moves the old
  active version to decrypt-only/verify-only and the new one to active.
* **Retire** is refused, with every reason, while anything still needs the version: stored
  data keys wrapped to a storage version (``xbgw keys rewrap`` moves them), transfers being
  received that were offered to a transport version, a grace period not yet over (partners
  still sealing to the old transport key or checking receipts under the old signing key).
* **Destroy** deletes the HSM object of a retired version; nothing can use it afterwards.
* **Locked attributes.** At start the daemon checks every version in service as the token
  reports it (:meth:`KeyRing.check_attributes`). A key that could have left the HSM, or can
  do more than its purpose, is refused whatever its state: that is a tampered or foreign key.
  A *modifiable* key (made before keys were generated locked, or by another tool) is refused
  while it is active -- new work only under keys no one can widen; ``xbgw keys rotate``
  replaces it -- and only warned about while replaced, so that old data stays readable until
  it is rewrapped and the version retired.

* **Several nodes.** Nodes sharing one PostgreSQL ledger (and one token's key objects) share
  the key states; each ring keeps its own view. :class:`KeyFollower` compares that view with
  the ledger every ``FOLLOW_SECONDS`` (one read of the small ``key_versions`` table: the
  rows are their own change detector, no counter to keep right), and :meth:`KeyRing.opens`
  asks at once when a message names a version newer than any it knows -- a partner sealing
  to a transport version rotated on another node moments ago. A change is adopted, checked
  on this node's token (SoftHSM's file store: a session sees objects another process made or
  destroyed at its next search, measured; no re-login needed) and logged once. The steps
  that change states take the ledger's key-state lock (``Ledger.key_states_locked``) and
  work on the states as they are then, so two nodes rotating at once make two successive
  versions, never two active ones.

Every step is one log line on ``xbgw.keys`` with the key reference and its new state.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

from gateway.audit.records import AuditRecord
from gateway.config import KeysConfig
from gateway.errors import ConfigError, KeyLifecycleError, KeyNotFoundError, XbgwError
from gateway.keys import CurrentKeys, HasVersions, KeyRef, KeyState, KeyVersion, Purpose
from gateway.ledger import Ledger

if TYPE_CHECKING:  # the HSM adapter loads pkcs11; the ring itself must not need it
    from gateway.hsm import KeyInfo

log = logging.getLogger("xbgw.keys")

#: How often a daemon compares its key states with the ledger's (other nodes' changes).
FOLLOW_SECONDS = 2.0


class KeyAdmin(HasVersions, Protocol):
    """What key lifecycle needs of the HSM: list, make and destroy versions."""

    def generate(self, purpose: Purpose, version: int | None = None) -> int: ...

    def destroy(self, purpose: Purpose, version: int) -> None: ...


class KeyRing:
    """The key versions of one gateway; thread-safe; the daemon's and the CLI's one view."""

    def __init__(
        self,
        owner: str,
        ledger: Ledger,
        admin: KeyAdmin,
        policy: KeysConfig | None = None,
        *,
        pinned: Mapping[Purpose, int] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.owner = owner
        self._ledger = ledger
        self._admin = admin
        self.policy = policy or KeysConfig()
        self._clock = clock
        self._lock = threading.RLock()
        self._versions: list[KeyVersion] = []
        # Reads of the ledger are numbered when they start and applied in that order: a slow
        # read never puts back states older than one applied after it (see _refresh).
        self._reads_started = 0
        self._read_applied = 0
        with self._ledger.key_states_locked():
            self._adopt(pinned)
        self._refresh()

    # -- reading ---------------------------------------------------------------------------

    def reload(self) -> None:
        """Read the states again (after another process or node changed them)."""
        self.follow()

    def follow(self) -> list[str]:
        """Adopt what another node (or process) changed in the ledger's key states: the
        view is replaced, the versions newly in service are looked for on this node's
        token, and one INFO line lists the changes. Returns them ("transport v3 active",
        ...); empty when nothing changed -- the cost then is one read of a small table."""
        changed = self._refresh()
        if not changed:
            return []
        phrases = [f"{v.purpose.value} v{v.version} {v.state.value}" for v in changed]
        log.info(
            "key states changed on another node: %s",
            ", ".join(phrases),
            extra={"outcome": "followed"},
        )
        self._check_on_token([v for v in changed if v.state.in_service])
        return phrases

    def _refresh(self) -> list[KeyVersion]:
        """Read the states from the ledger and make them this ring's view; the versions
        that are new or changed state, the active ones first."""
        with self._lock:
            self._reads_started += 1
            ticket = self._reads_started
        versions = self._ledger.key_versions()
        active = {v.purpose: v for v in versions if v.state is KeyState.ACTIVE}
        missing = [p for p in Purpose if p not in active]
        if missing:
            names = ", ".join(p.value for p in missing)
            raise KeyNotFoundError(
                f"no active {names} key in the key state of {self.owner} "
                f"(run 'xbgw keys rotate {missing[0].value}')"
            )
        with self._lock:
            # A read that started later saw every commit this one saw (READ COMMITTED, and
            # SQLite's one connection): if one was applied already, this one is not newer.
            if ticket <= self._read_applied:
                return []
            self._read_applied = ticket
            before = {(v.purpose, v.version): v.state for v in self._versions}
            self._versions = versions
            self._current = CurrentKeys(
                transport=active[Purpose.TRANSPORT].version,
                signing=active[Purpose.SIGNING].version,
                storage=active[Purpose.STORAGE].version,
            )
        changed = [v for v in versions if before.get((v.purpose, v.version)) is not v.state]
        return sorted(changed, key=lambda v: v.state is not KeyState.ACTIVE)

    def _check_on_token(self, versions: Sequence[KeyVersion]) -> None:
        """Log an error for each version now in service that this node's token lacks
        (another node's token is not this one's): its work here would fail."""
        for purpose in {v.purpose for v in versions}:
            try:
                on_token = set(self._admin.versions(purpose))
            except XbgwError as exc:
                log.warning("cannot list the %s keys on the token: %s", purpose.value, exc)
                continue
            for version in versions:
                if version.purpose is purpose and version.version not in on_token:
                    ref = self._ref(purpose, version.version)
                    log.error(
                        "key %s is %s in the shared key states but not on this node's HSM "
                        "token: work that needs it fails here (do the nodes share one token?)",
                        ref,
                        version.state.value,
                        extra={"key_ref": ref, "outcome": "missing"},
                    )

    @contextmanager
    def changing(self) -> Iterator[None]:
        """One key-state change at a time across the nodes (the ledger's key-state lock),
        starting from the states as they are now, not as this ring last saw them."""
        with self._ledger.key_states_locked():
            self.follow()
            yield

    def current(self) -> CurrentKeys:
        """The active version of each purpose: what new work uses."""
        with self._lock:
            return self._current

    @property
    def transport(self) -> int:
        return self.current().transport

    @property
    def signing(self) -> int:
        return self.current().signing

    @property
    def storage(self) -> int:
        return self.current().storage

    def versions(self, purpose: Purpose | None = None) -> list[KeyVersion]:
        with self._lock:
            return [v for v in self._versions if purpose is None or v.purpose is purpose]

    def find(self, purpose: Purpose, version: int) -> KeyVersion | None:
        return next((v for v in self.versions(purpose) if v.version == version), None)

    def in_service(self, purpose: Purpose) -> list[int]:
        """Versions that still open or verify (active and replaced): what a key set lists."""
        return [v.version for v in self.versions(purpose) if v.state.in_service]

    def opens(self, purpose: Purpose, version: int) -> bool:
        """Whether ``version`` is in service; a version newer than any this ring knows is
        asked of the ledger at once (made on another node since the last look)."""
        found = self.find(purpose, version)
        if found is None and version > max((v.version for v in self.versions(purpose)), default=0):
            self.follow()
            found = self.find(purpose, version)
        return found is not None and found.state.in_service

    def due(self, now: float | None = None) -> list[Purpose]:
        """Purposes whose active version is older than ``keys.rotate_every``."""
        now = self._clock() if now is None else now
        due = []
        for purpose in Purpose:
            active = self.find(purpose, self.current().as_dict()[purpose])
            since = active.activated_at if active and active.activated_at else 0
            if now - since >= self.policy.rotate_every[purpose]:
                due.append(purpose)
        return due

    def check_attributes(self, infos: Iterable[KeyInfo]) -> None:
        """Refuse keys in service that are not locked to their one capability (module doc).

        ``infos`` is what the token reports now (``Hsm.list_keys``). Raises ``ConfigError``
        with one line naming every refused key and how to get rid of it; logs a warning for
        each modifiable replaced version.
        """
        reported = {(info.purpose, info.version): info for info in infos}
        refused = []
        for version in self.versions():
            info = reported.get((version.purpose, version.version))
            if not version.state.in_service or info is None or not info.problems:
                continue
            ref = self._ref(version.purpose, version.version)
            hard = info.faults
            if hard:
                refused.append(
                    f"{ref} {' and '.join(hard)} (rotate it away: 'xbgw keys rotate "
                    f"{version.purpose.value}', then retire and destroy it)"
                )
            elif version.state is KeyState.ACTIVE:
                refused.append(
                    f"{ref} is modifiable: made before keys were locked, its capabilities can "
                    f"be widened with the PIN (replace it: 'xbgw keys rotate "
                    f"{version.purpose.value} -c CONFIG' while the daemon is stopped)"
                )
            else:
                log.warning(
                    "key %s (%s) is modifiable: made before keys were locked; retire it once "
                    "nothing needs it ('xbgw keys retire %s %d')",
                    ref,
                    version.state.value,
                    version.purpose.value,
                    version.version,
                    extra={"key_ref": ref, "outcome": "modifiable"},
                )
        if refused:
            raise ConfigError("HSM key attributes refused: " + "; ".join(refused))

    # -- lifecycle steps -------------------------------------------------------------------

    def rotate(self, purpose: Purpose) -> KeyVersion:
        """Make a new version of ``purpose`` active; the active one becomes decrypt-only
        (verify-only for signing). Resumes an interrupted rotation."""
        with self.changing(), self._lock:
            return self._rotate(purpose)

    def rotate_due(self) -> list[KeyVersion]:
        """Rotate the purposes that are due (``due``), judged under the key-state lock: the
        schedule run on two nodes at once rotates each purpose once, not twice."""
        with self.changing(), self._lock:
            return [self._rotate(purpose) for purpose in self.due()]

    def _rotate(self, purpose: Purpose) -> KeyVersion:
        """``rotate``, with the key-state lock and the ring's lock held."""
        now = int(self._clock())
        # From the ledger, not this ring's view: a rotation that failed in this process
        # after recording its pending version left it there only.
        recorded = [v for v in self._ledger.key_versions() if v.purpose is purpose]
        pending = [v for v in recorded if v.state is KeyState.PENDING]
        if pending:
            version = pending[-1].version
        else:
            known = [v.version for v in recorded]
            on_token = self._admin.versions(purpose)
            version = max([*known, *on_token, 0]) + 1
            self._ledger.add_key_version(purpose, version, KeyState.PENDING, now)
        if version not in self._admin.versions(purpose):
            self._admin.generate(purpose, version)
        previous = self.current().as_dict()[purpose]
        self._ledger.activate_key_version(purpose, version, now)
        self._refresh()
        self._logged("key rotated", purpose, version, KeyState.ACTIVE, f"replaces v{previous}")
        made = self.find(purpose, version)
        assert made is not None
        return made

    def retire_blockers(self, purpose: Purpose, version: int) -> list[str]:
        """Every reason ``version`` cannot be retired now (empty: it can)."""
        found = self.find(purpose, version)
        if found is None:
            return [f"{self._ref(purpose, version)} is not a key version of this gateway"]
        if found.state is KeyState.ACTIVE:
            return [
                f"{self._ref(purpose, version)} is the active version; rotate {purpose.value} first"
            ]
        if found.state in (KeyState.RETIRED, KeyState.DESTROYED):
            return [f"{self._ref(purpose, version)} is already {found.state.value}"]
        if found.state is KeyState.PENDING:
            return []
        reasons = []
        grace = self.policy.grace[purpose]
        since = found.deactivated_at or found.created_at
        left = since + grace - int(self._clock())
        if left > 0:
            reasons.append(
                f"its grace period (keys.grace.{purpose.value}) runs {_span(left)} more, "
                f"until {_when(since + grace)}"
            )
        if purpose is Purpose.STORAGE:
            users = self._ledger.storage_version_users(version)
            if users:
                reasons.append(
                    f"{users} stored data key(s) are still wrapped to it (run 'xbgw keys rewrap')"
                )
        if purpose is Purpose.TRANSPORT:
            offers = self._ledger.open_offers_to_transport(version)
            if offers:
                reasons.append(f"{offers} transfer(s) offered to it are still being received")
        return reasons

    def retire(
        self, purpose: Purpose, version: int, extra_blockers: Sequence[str] = ()
    ) -> KeyVersion:
        """Take a replaced version out of service; ``KeyLifecycleError`` says why not."""
        with self.changing(), self._lock:
            reasons = [*self.retire_blockers(purpose, version), *extra_blockers]
            if reasons:
                raise KeyLifecycleError(
                    f"{self._ref(purpose, version)} cannot be retired: " + "; ".join(reasons)
                )
            self._ledger.set_key_state(purpose, version, KeyState.RETIRED, int(self._clock()))
            self._refresh()
        self._logged("key retired", purpose, version, KeyState.RETIRED)
        retired = self.find(purpose, version)
        assert retired is not None
        return retired

    def destroy(self, purpose: Purpose, version: int) -> KeyVersion:
        """Delete the HSM object of a retired version (irreversible)."""
        with self.changing(), self._lock:
            found = self.find(purpose, version)
            if found is None or found.state is not KeyState.RETIRED:
                state = "not a version of this gateway" if found is None else found.state.value
                raise KeyLifecycleError(
                    f"{self._ref(purpose, version)} is {state}; only a retired version can be "
                    f"destroyed (xbgw keys retire {purpose.value} {version})"
                )
            users = self._ledger.storage_version_users(version) if purpose is Purpose.STORAGE else 0
            if users:  # wrapped by a node that had not yet seen the version replaced
                raise KeyLifecycleError(
                    f"{self._ref(purpose, version)} cannot be destroyed: {users} stored data "
                    "key(s) were wrapped to it after all; run 'xbgw keys rewrap', then destroy"
                )
            if version in self._admin.versions(purpose):
                self._admin.destroy(purpose, version)
            self._ledger.set_key_state(purpose, version, KeyState.DESTROYED, int(self._clock()))
            self._refresh()
        self._logged("key destroyed", purpose, version, KeyState.DESTROYED)
        destroyed = self.find(purpose, version)
        assert destroyed is not None
        return destroyed

    # -- helpers ---------------------------------------------------------------------------

    def _adopt(self, pinned: Mapping[Purpose, int] | None) -> None:
        """Record what the token holds that the ledger does not know (see the module doc)."""
        known = self._ledger.key_versions()
        now = int(self._clock())
        for purpose in Purpose:
            on_token = self._admin.versions(purpose)
            mine = {v.version for v in known if v.purpose is purpose}
            if not any(v.purpose is purpose and v.state is KeyState.ACTIVE for v in known):
                # Not adopted yet, or an adoption cut short: each version is its own row and
                # the active one is written last, so without it the adoption is done (again;
                # the rows already written are kept).
                if not on_token:
                    raise KeyNotFoundError(
                        f"the HSM token has no {purpose.label} key (run 'xbgw keys init')"
                    )
                active = (pinned or {}).get(purpose, on_token[-1])
                if active not in on_token:
                    raise KeyNotFoundError(
                        f"hsm.keys pins {purpose.label} v{active}, which is not on the token "
                        f"(versions there: {on_token})"
                    )
                for version in sorted(on_token, key=lambda v: v == active):  # active last
                    if version in mine:
                        continue
                    state = KeyState.ACTIVE if version == active else KeyState.replaced(purpose)
                    self._ledger.add_key_version(purpose, version, state, now)
                    self._logged("key adopted", purpose, version, state)
                continue
            for version in on_token:
                if version not in mine:
                    self._ledger.add_key_version(purpose, version, KeyState.PENDING, now)
                    self._logged(
                        "key found on the token but not in the key state: pending, unused",
                        purpose,
                        version,
                        KeyState.PENDING,
                        level=logging.WARNING,
                    )

    def _ref(self, purpose: Purpose, version: int) -> str:
        return str(KeyRef(self.owner, purpose, version))

    def _logged(
        self,
        what: str,
        purpose: Purpose,
        version: int,
        state: KeyState,
        note: str = "",
        level: int = logging.INFO,
    ) -> None:
        log.log(
            level,
            "%s: %s%s",
            what,
            self._ref(purpose, version),
            f" ({note})" if note else "",
            extra={"key_ref": self._ref(purpose, version), "outcome": state.value},
        )
        record = AuditRecord(
            "key.changed",
            int(self._clock()),
            {"key": self._ref(purpose, version), "state": state.value},
        )
        self._ledger.append_audit(record.encode(self.owner))


class KeyFollower:
    """A thread of its own that keeps a daemon's ring on the shared key states: every
    ``period`` seconds ``KeyRing.follow``. A ledger that does not answer is logged once
    (and once when it answers again); the ring keeps its last view meanwhile."""

    def __init__(self, ring: KeyRing, period: float = FOLLOW_SECONDS) -> None:
        self._ring = ring
        self._period = period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="xbgw-keys-follow", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        failing = ""
        while not self._stop.wait(self._period):
            try:
                self._ring.follow()
            except XbgwError as exc:
                if str(exc) != failing:
                    failing = str(exc)
                    log.warning(
                        "cannot follow the key states in the ledger (trying every %gs; "
                        "this node keeps the states it knows): %s",
                        self._period,
                        exc,
                    )
                continue
            if failing:
                failing = ""
                log.info("following the key states in the ledger again")


def _span(seconds: int) -> str:
    if seconds >= 86_400:
        return f"{seconds / 86_400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds} s"


def _when(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
