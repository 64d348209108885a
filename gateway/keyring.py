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

Every step is one log line on ``xbgw.keys`` with the key reference and its new state.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from gateway.audit.records import AuditRecord
from gateway.config import KeysConfig
from gateway.errors import ConfigError, KeyLifecycleError, KeyNotFoundError
from gateway.keys import CurrentKeys, HasVersions, KeyRef, KeyState, KeyVersion, Purpose
from gateway.ledger import Ledger

if TYPE_CHECKING:  # the HSM adapter loads pkcs11; the ring itself must not need it
    from gateway.hsm import KeyInfo

log = logging.getLogger("xbgw.keys")


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
        self._adopt(pinned)
        self._versions: list[KeyVersion] = []
        self.reload()

    # -- reading ---------------------------------------------------------------------------

    def reload(self) -> None:
        """Read the states again (after another process changed them)."""
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
            self._versions = versions
            self._current = CurrentKeys(
                transport=active[Purpose.TRANSPORT].version,
                signing=active[Purpose.SIGNING].version,
                storage=active[Purpose.STORAGE].version,
            )

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
        with self._lock:
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
            self.reload()
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
        with self._lock:
            reasons = [*self.retire_blockers(purpose, version), *extra_blockers]
            if reasons:
                raise KeyLifecycleError(
                    f"{self._ref(purpose, version)} cannot be retired: " + "; ".join(reasons)
                )
            self._ledger.set_key_state(purpose, version, KeyState.RETIRED, int(self._clock()))
            self.reload()
        self._logged("key retired", purpose, version, KeyState.RETIRED)
        retired = self.find(purpose, version)
        assert retired is not None
        return retired

    def destroy(self, purpose: Purpose, version: int) -> KeyVersion:
        """Delete the HSM object of a retired version (irreversible)."""
        with self._lock:
            found = self.find(purpose, version)
            if found is None or found.state is not KeyState.RETIRED:
                state = "not a version of this gateway" if found is None else found.state.value
                raise KeyLifecycleError(
                    f"{self._ref(purpose, version)} is {state}; only a retired version can be "
                    f"destroyed (xbgw keys retire {purpose.value} {version})"
                )
            if version in self._admin.versions(purpose):
                self._admin.destroy(purpose, version)
            self._ledger.set_key_state(purpose, version, KeyState.DESTROYED, int(self._clock()))
            self.reload()
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


def _span(seconds: int) -> str:
    if seconds >= 86_400:
        return f"{seconds / 86_400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds} s"


def _when(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
