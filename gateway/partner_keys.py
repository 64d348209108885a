"""What this gateway knows of each partner's keys, learnt through a chain of custody that starts
at the signing key pinned for the partner in ``gateway.yaml``.

Why: a partner rotates its keys on its own schedule. Pinned once and never followed, its new
signing key would make its receipts fail here while it has committed the data (the transfer
stuck at "sending"), and its new transport key would be used only after a cache ran out. So
the pinned key is the *root* of trust, not the only key: the partner's key set, signed by its
active signing key and endorsed by the replaced ones (``documents``), lets this gateway follow
each rotation from a key it already trusts -- with no configuration change, and with every
step recorded in the ledger (``partner_keys``, ``partner_key_sets``).

* **Root.** ``partners.<id>.signing_key``. The file holds no version; it is learnt from the
  first blob (key set, receipt, manifest) the key verifies, and recorded with source
  ``config``.
* **Following.** A key set is accepted only through a signing key this gateway trusts: one
  the partner's newest accepted key set still lists in service, or the configured key. Every
  key it lists is recorded with source ``key set vN`` (learnt from a key set that signing
  version N of the partner vouched for); a version it no longer lists is marked ``retired``.
  A new active signing version moves the pin and logs one line on ``xbgw.keys``.
* **History.** A receipt or manifest is verified under the version its ``kid`` names. A
  version the partner has retired still verifies documents (retiring stops new signatures;
  it does not revoke old ones -- a receipt the partner stored before may come back on a
  resend), but it no longer vouches for a key set, which would extend trust. A version not
  learnt yet is tried under the configured key while that key's version is unknown, else
  the key set is fetched once; then it is refused.
* **Rollback.** A key set issued before the newest one accepted is refused: a replayed key
  set must not take back a rotation. One issued further ahead of this gateway's clock than
  ``limits.passport_leeway_seconds`` is refused too, or it would lock out the real ones.
* **Re-pin.** A configured key that is not in the chain learnt so far (an operator replaced
  it) starts a fresh chain from it: everything learnt of the partner's keys is dropped, with
  one warning. This is how an operator revokes a chain (a key that leaked) and recovers from
  a partner that rotated without endorsing. A configured key already in the chain (the
  operator caught up with a rotation this gateway followed) changes nothing.
* **Cache.** The newest accepted key set serves for ``keys.key_set_refresh`` seconds;
  :meth:`PartnerKeys.forget` drops it (the partner refused an offer as sealed to a stale key).
  The chain read from the ledger (the keys learnt, their parsed public keys) is kept too,
  because every receipt, manifest and key set lookup needs it -- a ledger read and a point
  parse per transfer on each side otherwise. It is dropped by everything that writes what
  it holds (all of which is here: learning a key, a key set, a re-pin), by a fetch and by
  a reload, and re-read when the configured key is another object (a reload). On a ledger
  shared by several nodes it is not kept: another node may learn a key meanwhile.

One per gateway, shared by the sender (key sets, receipts) and the receiver (manifests);
thread-safe. The ledger holds the state; memory holds only the caches above.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from cryptography.hazmat.primitives.asymmetric import ec

from gateway.config import GatewayConfig, PartnerConfig
from gateway.documents import (
    EndorsedKeySet,
    KeySet,
    open_endorsed_key_set,
    public_point,
    signing_kid,
)
from gateway.errors import PartnerError, SignatureError
from gateway.keys import KeyRef, KeyState, Purpose
from gateway.ledger import Ledger
from gateway.signed import Signed, verify

log = logging.getLogger("xbgw.keys")

#: Fetches a partner's served key set (``PartnerLink.key_set``).
KeySetFetch = Callable[[PartnerConfig], Signed]

CONFIG_SOURCE = "config"
RETIRED = KeyState.RETIRED.value
_VOUCHES = frozenset({KeyState.ACTIVE.value, KeyState.VERIFY_ONLY.value})


@dataclass(frozen=True)
class PartnerKey:
    """One key version of a partner, as this gateway learnt it."""

    ref: KeyRef
    public_point: bytes
    state: str  # as the partner last listed it; "retired": no longer listed
    learned_at: int
    source: str  # "config", or "key set vN": from a key set the partner's signing vN vouched for

    @cached_property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        """Parsed once per object (a cached chain verifies many documents with it)."""
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), self.public_point)

    @property
    def origin(self) -> str:
        """Where the key came from, for a message."""
        if self.source == CONFIG_SOURCE:
            return "pinned in gateway.yaml"
        voucher = self.source.removeprefix("key set v")
        return f"learnt from a key set vouched for by {self.ref.owner}/signing/{voucher}"


@dataclass(frozen=True)
class _Chain:
    """A partner's signing keys learnt so far, and the configured root."""

    partner: str
    signing: dict[int, PartnerKey]
    transport: dict[int, PartnerKey]
    config_key: ec.EllipticCurvePublicKey
    config_point: bytes
    config_version: int | None  # the configured key's version, once learnt

    def vouching(self, kid: KeyRef) -> ec.EllipticCurvePublicKey | None:
        """The key trusted to vouch for a key set signed as ``kid``: a version in service, or
        the configured key while its version is unknown."""
        known = self.signing.get(kid.version)
        if known is not None:
            return known.public_key if known.state in _VOUCHES else None
        return self.config_key if self.config_version is None else None

    def describe(self) -> str:
        """What this gateway trusts now, for a message."""
        trusted = [f"{k.ref} ({k.origin})" for k in self.signing.values() if k.state in _VOUCHES]
        if self.config_version is None:
            trusted.append(f"the key pinned in gateway.yaml for {self.partner}")
        return ", ".join(trusted) or "no key of it"


@dataclass(frozen=True)
class _Cached:
    at: float
    key_set: KeySet
    root: bytes  # the configured key it was accepted under: another one invalidates it


class PartnerKeys:
    """Partners' keys: verify their signed documents, fetch and follow their key sets."""

    def __init__(
        self,
        config: GatewayConfig,
        ledger: Ledger,
        fetch: KeySetFetch | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``fetch`` (a link's ``key_set``) may be None where no partner can be reached: then
        only what the ledger holds and the configured keys verify."""
        self._config = config
        self._ledger = ledger
        self._fetch_served = fetch
        self._clock = clock
        self._cache: dict[str, _Cached] = {}
        #: Each partner's chain as last read from the ledger (see "Cache" in the module doc);
        #: read and written under the partner's lock.
        self._chains: dict[str, _Chain] = {}
        self._keep_chains = not ledger.shared
        self._locks: dict[str, threading.RLock] = {}
        self._guard = threading.Lock()

    def reconfigure(self, config: GatewayConfig) -> None:
        """Adopt a reloaded configuration (refresh period, clock leeway). A partner whose
        pinned key changed is noticed at its next use (see "Re-pin" in the module doc)."""
        self._config = config
        with self._guard:
            self._chains = {}

    # -- reading ---------------------------------------------------------------------------

    def known(self, partner_id: str) -> list[PartnerKey]:
        """Every key version of ``partner_id`` learnt (signing and transport), by version."""
        return [
            PartnerKey(KeyRef(partner_id, purpose, version), point, state, at, source)
            for purpose, version, point, state, at, source in self._ledger.partner_keys(partner_id)
        ]

    def pinned(self, partner_id: str) -> PartnerKey | None:
        """The signing key ``partner_id`` signs with now, as far as this gateway knows."""
        return next(
            (
                k
                for k in self.known(partner_id)
                if k.ref.purpose is Purpose.SIGNING and k.state == KeyState.ACTIVE.value
            ),
            None,
        )

    def signing_keys(self, partner: PartnerConfig) -> list[ec.EllipticCurvePublicKey]:
        """Every signing key of ``partner`` learnt, in any state (a checkpoint may predate a
        rotation), by version -- else the configured one: what its audit checkpoints may be
        signed with. From the kept chain, its keys parsed once."""
        with self._lock(partner.id):
            chain = self._chain(partner)
        return [k.public_key for k in chain.signing.values()] or [partner.signing_public_key]

    # -- verifying documents ---------------------------------------------------------------

    def verify(
        self,
        partner: PartnerConfig,
        blob: Signed,
        what: str,
        *,
        refetch_on_failure: bool = False,
    ) -> KeyRef:
        """Check that ``partner`` signed ``blob`` (a ``what``: receipt, manifest); return the
        key that did. Raises :class:`SignatureError` naming the key otherwise.

        The version the ``kid`` names is looked up in the history; a version not learnt yet
        makes one fetch of the key set (``refetch_on_failure``: so does a signature that does
        not verify under a known version) before the blob is refused.
        """
        kid = signing_kid(blob, partner.id, what)
        with self._lock(partner.id):
            chain = self._chain(partner)
            problem, known = self._try(chain, blob, kid, what)
            if problem is not None and self._chains.pop(partner.id, None) is chain:
                # A kept chain: the ledger may hold more by now (another view of it learnt a
                # key), so judge again on what it holds before fetching or refusing.
                chain = self._chain(partner)
                problem, known = self._try(chain, blob, kid, what)
            if problem is None:
                return kid
            if known and not refetch_on_failure:
                raise SignatureError(problem)
            if self._fetch_served is None:
                raise SignatureError(problem)
            try:
                self._fetch(partner)
            except (SignatureError, PartnerError) as exc:
                raise SignatureError(
                    f"{problem}; the key set of {partner.id}, fetched to learn its keys, "
                    f"did not help: {exc}"
                ) from None
            again, _ = self._try(self._chain(partner), blob, kid, what)
            if again is None:
                return kid
            raise SignatureError(again)

    def _try(self, chain: _Chain, blob: Signed, kid: KeyRef, what: str) -> tuple[str | None, bool]:
        """(None, _) if ``blob`` verifies under what ``chain`` holds for ``kid``; else the
        problem, and whether the version was known."""
        known = chain.signing.get(kid.version)
        if known is not None:
            try:
                verify(blob, known.public_key, chain.partner, what)
            except SignatureError as exc:
                return f"{exc} ({kid}, {known.origin})", True
            return None, True
        if chain.config_version is None:
            try:
                verify(blob, chain.config_key, chain.partner, what)
            except SignatureError as exc:
                return (
                    f"{exc} (signed by {kid}, a version this gateway has not learnt, and not "
                    "by the key pinned in gateway.yaml)",
                    False,
                )
            self._learn_root(chain, kid.version, KeyState.ACTIVE.value)
            return None, False
        versions = ", ".join(str(k.ref) for k in chain.signing.values()) or "none"
        return (
            f"{what} is signed by {kid}, a version of {chain.partner} this gateway has not "
            f"learnt (it knows {versions})",
            False,
        )

    # -- key sets --------------------------------------------------------------------------

    def key_set(self, partner: PartnerConfig) -> KeySet:
        """``partner``'s key set: the one accepted last while it is fresh
        (``keys.key_set_refresh``), else fetched, verified and followed."""
        with self._lock(partner.id):
            chain = self._chain(partner)
            cached = self._cache.get(partner.id)
            if cached is not None and cached.root == chain.config_point:
                age = self._clock() - cached.at
                if 0 <= age < self._config.keys.key_set_refresh:
                    return cached.key_set
            return self._fetch(partner)

    def forget(self, partner_id: str) -> None:
        """Drop the cached key set of ``partner_id``: the next use fetches it again."""
        with self._lock(partner_id):
            self._cache.pop(partner_id, None)

    def _fetch(self, partner: PartnerConfig) -> KeySet:
        """Fetch, verify and record ``partner``'s key set (under its lock)."""
        if self._fetch_served is None:
            raise SignatureError(f"this gateway has no link to fetch the key set of {partner.id}")
        served = self._fetch_served(partner)
        self._chains.pop(partner.id, None)  # read what the ledger holds now
        chain = self._chain(partner)
        what = f"key set of {partner.id}"
        endorsements = served.endorsements if isinstance(served, EndorsedKeySet) else ()
        kids = [signing_kid(blob, partner.id, what) for blob in (served, *endorsements)]
        if all(chain.vouching(kid) is None for kid in kids):
            signers = ", ".join(str(kid) for kid in kids)
            raise SignatureError(
                f"the {what} is signed by {signers}, none of which this gateway trusts (it "
                f"trusts {chain.describe()}); if {partner.id} replaced its signing key without "
                "endorsing the new one with a key trusted here, pin its new key in "
                f"gateway.yaml (partners: {partner.id}: signing_key)"
            )
        key_set, voucher = open_endorsed_key_set(served, partner.id, chain.vouching)
        self._check(chain, key_set)
        self._record(chain, key_set, voucher)
        self._cache[partner.id] = _Cached(self._clock(), key_set, chain.config_point)
        return key_set

    def _check(self, chain: _Chain, key_set: KeySet) -> None:
        """Refuse a key set that is too new, takes back a newer one, or changes a key."""
        partner = chain.partner
        what = f"the key set of {partner}"
        now = int(self._clock())
        leeway = self._config.limits.passport_leeway_seconds
        if key_set.issued_at > now + leeway:
            raise SignatureError(
                f"{what} was issued at {_when(key_set.issued_at)}, "
                f"{key_set.issued_at - now} s ahead of this gateway's clock (more than "
                f"limits.passport_leeway_seconds, {leeway} s); check both clocks"
            )
        last = self._ledger.partner_key_set_issued(partner)
        if last is not None and key_set.issued_at < last:
            raise SignatureError(
                f"{what} was issued at {_when(key_set.issued_at)}, before the one this "
                f"gateway accepted already (issued at {_when(last)}): refused as a rollback"
            )
        if last is not None and key_set.issued_at == last:
            # Same second as the newest accepted: a replay from before a rotation made within
            # that second must not take it back either.
            for purpose, known, active in (
                (Purpose.SIGNING, chain.signing, key_set.signing_version),
                (Purpose.TRANSPORT, chain.transport, key_set.current_version),
            ):
                newest = max(
                    (v for v, k in known.items() if k.state == KeyState.ACTIVE.value), default=0
                )
                if active and active < newest:
                    raise SignatureError(
                        f"{what} names {purpose.value} v{active} active, but this gateway "
                        f"already follows v{newest}: refused as a rollback"
                    )
        for known, listed in (
            (chain.signing, key_set.signing_keys),
            (chain.transport, key_set.keys),
        ):
            for version, public in listed.items():
                had = known.get(version)
                if had is not None and had.public_point != public_point(public):
                    raise SignatureError(
                        f"{what} lists {had.ref} with another public key than the one "
                        f"{had.origin}; a key version never changes: refused"
                    )

    def _record(self, chain: _Chain, key_set: KeySet, voucher: KeyRef) -> None:
        """Write what ``key_set`` teaches (after every check passed)."""
        partner = chain.partner
        self._chains.pop(partner, None)  # what follows changes it
        at = int(self._clock())
        listed_signing = key_set.states(Purpose.SIGNING)
        if chain.config_version is None:  # the configured key vouched: now its version is known
            state = listed_signing.get(voucher.version, KeyState.ACTIVE).value
            self._learn_root(chain, voucher.version, state)
        before = next(
            (v for v, k in chain.signing.items() if k.state == KeyState.ACTIVE.value),
            chain.config_version if chain.config_version is not None else voucher.version,
        )
        source = f"key set v{voucher.version}"
        for purpose, listed, states, known in (
            (Purpose.SIGNING, key_set.signing_keys, listed_signing, chain.signing),
            (Purpose.TRANSPORT, key_set.keys, key_set.states(Purpose.TRANSPORT), chain.transport),
        ):
            if purpose is Purpose.SIGNING and not listed:
                continue  # a key set from before key states: it says nothing of signing keys
            for version, state in states.items():
                self._ledger.learn_partner_key(
                    partner,
                    purpose,
                    version,
                    public_point(listed[version]),
                    state.value,
                    source,
                    at,
                )
            for version, had in known.items():
                if version not in listed and had.state != RETIRED:
                    self._ledger.learn_partner_key(
                        partner, purpose, version, had.public_point, RETIRED, had.source, at
                    )
        self._ledger.record_partner_key_set(partner, key_set.issued_at, at)
        if key_set.signing_keys and key_set.signing_version != before:
            followed = KeyRef(partner, Purpose.SIGNING, key_set.signing_version)
            how = "signed by it" if voucher == followed else f"endorsed by {voucher}"
            log.info(
                "partner signing key followed: %s (%s)",
                followed,
                how,
                extra={"partner": partner, "key_ref": str(followed)},
            )

    # -- the chain -------------------------------------------------------------------------

    def _chain(self, partner: PartnerConfig) -> _Chain:
        """What is learnt of ``partner`` (under its lock): the chain kept from the last read
        while nothing it holds was written and the configured key is the same object, else
        read from the ledger."""
        kept = self._chains.get(partner.id)
        if kept is not None and kept.config_key is partner.signing_public_key:
            return kept
        chain = self._read_chain(partner)
        if self._keep_chains:
            self._chains[partner.id] = chain
        return chain

    def _read_chain(self, partner: PartnerConfig) -> _Chain:
        """What is learnt of ``partner``, from the ledger; a fresh chain if re-pinned."""
        config_point = public_point(partner.signing_public_key)
        learnt = self.known(partner.id)
        signing = {k.ref.version: k for k in learnt if k.ref.purpose is Purpose.SIGNING}
        if signing and all(k.public_point != config_point for k in signing.values()):
            self._ledger.forget_partner_keys(partner.id)
            self._cache.pop(partner.id, None)
            log.warning(
                "partner signing key re-pinned: the key in gateway.yaml for %s is none of "
                "the keys learnt of it (%s); that chain is dropped and a new one starts from "
                "the configured key",
                partner.id,
                ", ".join(str(k.ref) for k in signing.values()),
                extra={"partner": partner.id},
            )
            learnt, signing = [], {}
        return _Chain(
            partner=partner.id,
            signing=signing,
            transport={k.ref.version: k for k in learnt if k.ref.purpose is Purpose.TRANSPORT},
            config_key=partner.signing_public_key,
            config_point=config_point,
            config_version=next(
                (v for v, k in signing.items() if k.public_point == config_point), None
            ),
        )

    def _learn_root(self, chain: _Chain, version: int, state: str) -> None:
        """The configured key verified a blob signed as ``version``: record it as that."""
        ref = KeyRef(chain.partner, Purpose.SIGNING, version)
        self._chains.pop(chain.partner, None)
        self._ledger.learn_partner_key(
            chain.partner,
            Purpose.SIGNING,
            version,
            chain.config_point,
            state,
            CONFIG_SOURCE,
            int(self._clock()),
        )
        log.info(
            "partner signing key pinned: %s (the key in gateway.yaml)",
            ref,
            extra={"partner": chain.partner, "key_ref": str(ref)},
        )

    def _lock(self, partner_id: str) -> threading.RLock:
        """One lock per partner: a fetch (a network call) holds up no other partner."""
        with self._guard:
            lock = self._locks.get(partner_id)
            if lock is None:
                lock = self._locks[partner_id] = threading.RLock()
            return lock


def _when(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
