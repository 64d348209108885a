"""The PKCS#11 adapter: the only module that imports ``pkcs11``.

Why it looks like this (seen with SoftHSM 2.6.1 and python-pkcs11 0.10; the eight-thread
test in tests/integration/test_hsm.py checks every result):

* python-pkcs11 initialises the library without locking callbacks, and SoftHSM then is not
  thread-safe: it crashed, and once returned a wrong unwrapped key, with two threads. Every
  call into a library therefore runs under one lock per loaded library, whichever token or
  session it uses. gRPC handlers may call it from any thread.
* Login is per application, and closing the session that logged in logs every session out,
  so one logged-in session is kept and key handles are cached (a find costs ~110 us, a
  cached call nothing) -- but not for ever. A token that is removed, reset or unreachable
  kills the session and every handle; the next call then logs in again (and, if the token
  stays invisible, starts the library afresh: SoftHSM 2.6 never sees a token directory
  again that went away while it was loaded). The gateway thus recovers by itself when the
  HSM returns; until then calls fail at once with "the HSM is unreachable since ...".
* Every session object made here is destroyed at once, yet SoftHSM 2.6 frees its memory only
  in ``C_Finalize``: the library is started afresh every ``RECYCLE_AFTER_SESSION_OBJECTS``.
* Key objects are created only here, with explicit templates: private, sensitive, never
  extractable, not modifiable, not copyable, and only the capability of their purpose (every
  other capability, SIGN_RECOVER included, explicitly off: a token's defaults are not ours).
  Without ``CKA_MODIFIABLE`` false anyone with the PIN could add ``CKA_SIGN`` to the transport
  key with one ``C_SetAttributeValue`` and use it. A key version is its own object: label
  ``xbgw-<purpose>``, ``CKA_ID`` = purpose code byte + the version as 4 big-endian bytes
  (unique per key pair, so generic PKCS#11 tools pick the right key); keys made before that
  carry the bare 4-byte version and are still found.
* Foreign errors become :mod:`gateway.errors` types here, with messages a person can act on.

Secrets that must leave the HSM by design (the ECDH shared secret of an ECDH-ES unwrap, an
unwrapped data key) leave as short-lived session objects that are destroyed at once.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, TypeVar

import pkcs11
import pkcs11.exceptions as p11e
from asn1crypto.core import OctetString
from cryptography.hazmat.primitives.asymmetric import ec
from pkcs11 import KDF, Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11.util.ec import encode_named_curve_parameters

from gateway.errors import (
    HsmConfigError,
    HsmError,
    HsmPinError,
    KeyNotFoundError,
    UnwrapError,
)
from gateway.keys import MAX_VERSION, Purpose, version_id

P256_POINT_LEN = 65  # uncompressed X9.62 point
DIGEST_LEN = 32
MAX_WRAPPED_LEN = 1024
MIN_SECRET_LEN = 16
MAX_SECRET_LEN = 512

log = logging.getLogger("xbgw.hsm")
_T = TypeVar("_T")


# --- key information ------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyInfo:
    """A key version as the token reports it (attributes read from the HSM, not assumed)."""

    purpose: Purpose
    version: int
    key_class: str  # "private" or "secret"
    sensitive: bool
    always_sensitive: bool
    extractable: bool
    never_extractable: bool
    capabilities: tuple[str, ...]  # every capability attribute the token reports true
    public_point: bytes | None  # uncompressed P-256 point for EC keys
    modifiable: bool  # CKA_MODIFIABLE: capabilities could be added with the PIN
    copyable: bool | None  # CKA_COPYABLE; None where the token does not report it

    @property
    def safe(self) -> bool:
        """True when the key can never have left the HSM in clear."""
        return (
            self.sensitive
            and self.always_sensitive
            and not self.extractable
            and self.never_extractable
        )

    @property
    def extra_capabilities(self) -> tuple[str, ...]:
        """Capabilities beyond the one its purpose needs: a key that can do more than its job."""
        wanted = PURPOSE_CAPABILITIES[self.purpose]
        return tuple(name for name in self.capabilities if name not in wanted)

    @property
    def faults(self) -> list[str]:
        """What says this key was tampered with or made by another tool, for a person to read:
        it could have left the HSM, or it can do more than its purpose.

        A modifiable key's ``sign_recover`` is not counted: keys made before generation was
        locked carry SoftHSM's default there (the old template never turned it off), so it
        marks them as old, not as tampered; they are reported as modifiable instead.
        """
        extra = self.extra_capabilities
        if self.modifiable:
            extra = tuple(name for name in extra if name not in _OLD_TEMPLATE_DEFAULTS)
        found = []
        if not self.safe:
            found.append("could have left the HSM in clear (not sensitive or extractable)")
        if extra:
            found.append("has extra capability " + ", ".join(extra))
        return found

    @property
    def problems(self) -> list[str]:
        """Everything to report: not safe, every extra capability, modifiable (anyone with the
        PIN can widen it: keys made before generation was locked). Empty: nothing.

        ``copyable`` is reported but is no problem by itself: a copy of an unmodifiable key
        cannot be made modifiable (PKCS#11 2.40, 4.4.1), so it cannot gain a capability.
        """
        found = []
        if not self.safe:
            found.append("could have left the HSM in clear (not sensitive or extractable)")
        if self.extra_capabilities:
            found.append("has extra capability " + ", ".join(self.extra_capabilities))
        if self.modifiable:
            found.append("is modifiable (CKA_MODIFIABLE true: capabilities can be added)")
        return found


#: Every PKCS#11 capability attribute of a key object, in the order they are reported.
_CAPABILITY_ATTRS = {
    "sign": Attribute.SIGN,
    "sign_recover": Attribute.SIGN_RECOVER,
    "verify": Attribute.VERIFY,
    "verify_recover": Attribute.VERIFY_RECOVER,
    "encrypt": Attribute.ENCRYPT,
    "decrypt": Attribute.DECRYPT,
    "wrap": Attribute.WRAP,
    "unwrap": Attribute.UNWRAP,
    "derive": Attribute.DERIVE,
}

#: Capabilities keys made by the old, unlocked template carry by SoftHSM's default.
_OLD_TEMPLATE_DEFAULTS = frozenset({"sign_recover"})

#: The capabilities each purpose's private/secret key needs, and no more.
PURPOSE_CAPABILITIES: dict[Purpose, tuple[str, ...]] = {
    Purpose.TRANSPORT: ("derive",),
    Purpose.SIGNING: ("sign",),
    Purpose.STORAGE: ("wrap", "unwrap"),
}

# Locked: with CKA_MODIFIABLE true, C_SetAttributeValue adds capabilities with the PIN alone.
# SoftHSM 2.6 accepts both on generation and then refuses every C_SetAttributeValue.
_LOCKED: dict[Attribute, Any] = {Attribute.MODIFIABLE: False, Attribute.COPYABLE: False}
_ALL_OFF: dict[Attribute, Any] = {
    attr: False
    for attr in (
        Attribute.SIGN,
        Attribute.VERIFY,
        Attribute.ENCRYPT,
        Attribute.DECRYPT,
        Attribute.WRAP,
        Attribute.UNWRAP,
        Attribute.DERIVE,
    )
}
# PKCS#11 defines only some capability attributes on each side of a key pair (SoftHSM 2.6
# answers AttributeTypeInvalid for the others). EC private keys default to SIGN_RECOVER true.
_PRIVATE_OFF: dict[Attribute, Any] = {
    attr: False
    for attr in (
        Attribute.SIGN,
        Attribute.SIGN_RECOVER,
        Attribute.DECRYPT,
        Attribute.UNWRAP,
        Attribute.DERIVE,
    )
}
_PUBLIC_OFF: dict[Attribute, Any] = {
    attr: False
    for attr in (
        Attribute.VERIFY,
        Attribute.VERIFY_RECOVER,
        Attribute.ENCRYPT,
        Attribute.WRAP,
        Attribute.DERIVE,
    )
}

_SECRET_TEMPLATE: dict[Attribute, Any] = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    **_LOCKED,
}

_PUBLIC_TEMPLATE: dict[Attribute, Any] = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: False,
    **_LOCKED,
}

# The capability each purpose's private/secret key gets; everything else is off.
_PURPOSE_CAPABILITY: dict[Purpose, dict[Attribute, Any]] = {
    purpose: {_CAPABILITY_ATTRS[name]: True for name in names}
    for purpose, names in PURPOSE_CAPABILITIES.items()
}

# Ephemeral objects that carry a secret out of the HSM on purpose, destroyed after one read.
_EXPORTABLE_SESSION_SECRET: dict[Attribute, Any] = {
    Attribute.TOKEN: False,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: False,
    Attribute.EXTRACTABLE: True,
}


@dataclass(frozen=True)
class ObjectCounts:
    """Objects visible to this process's sessions (leak measurements)."""

    token: int
    session: int  # created and not destroyed: 0 between calls
    created_since_restart: int  # session objects made since the library last started


# --- the loaded module ----------------------------------------------------------------------

#: SoftHSM 2.6 keeps a ~190-byte shell of every session object it ever created, destroyed or
#: not, until ``C_Finalize`` (``SessionObjectStore::allObjects``): an ECDH, wrap or unwrap
#: leaves one. The module is therefore started afresh after this many (~1 MiB; ~4 ms here).
RECYCLE_AFTER_SESSION_OBJECTS = 5000
#: While the token is unreachable, calls fail at once instead of trying to log in again more
#: often than this (each try may re-initialise the module).
REOPEN_INTERVAL_SECONDS = 1.0

#: Errors that mean the session or the handles held are dead (token removed or reset, module
#: re-initialised): everything held is dropped and the next call logs in again.
_SESSION_LOST: tuple[type[p11e.PKCS11Error], ...] = (
    p11e.SessionHandleInvalid,
    p11e.SessionClosed,
    p11e.ObjectHandleInvalid,
    p11e.KeyHandleInvalid,
    p11e.UnwrappingKeyHandleInvalid,
    p11e.WrappingKeyHandleInvalid,
    p11e.UserNotLoggedIn,
    p11e.TokenNotPresent,
    p11e.TokenNotRecognised,
    p11e.SlotIDInvalid,
    p11e.DeviceRemoved,
    p11e.DeviceError,
    p11e.GeneralError,  # SoftHSM's answer once the token's directory went away
)

_PIN_REFUSED = (p11e.PinIncorrect, p11e.PinLocked, p11e.PinExpired)


def _session_lost(exc: p11e.PKCS11Error) -> bool:
    # A bare PKCS11Error is an unmapped return value, e.g. CKR_CRYPTOKI_NOT_INITIALIZED.
    return isinstance(exc, _SESSION_LOST) or type(exc) is p11e.PKCS11Error


class _Module:
    """One loaded PKCS#11 library and what every :class:`Hsm` on it shares.

    The lock serialises every call into the library (SoftHSM is not thread-safe as
    python-pkcs11 initialises it, whichever token or session a call uses). ``generation``
    counts initialisations: after ``C_Finalize`` every session and object handle of the
    process is dead and its number may be handed out again, so an :class:`Hsm` whose
    session is of an older generation forgets it without touching it.
    """

    def __init__(self, lib: Any) -> None:
        self.lib = lib
        self.lock = threading.RLock()
        self.generation = 0
        self.session_objects = 0  # created since the last initialisation

    def reinitialize(self) -> None:
        """``C_Finalize`` + ``C_Initialize``: the module re-reads its tokens and frees all."""
        self.generation += 1
        self.session_objects = 0
        if self.lib.initialized:
            with suppress(p11e.PKCS11Error):
                self.lib.finalize()
        self.lib.initialize()


class _TokenGoneError(Exception):
    """The token no longer answers (internal: becomes the 'unreachable' HsmError)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _describe(exc: p11e.PKCS11Error, token_label: str) -> str:
    if isinstance(exc, p11e.NoSuchToken):
        return f"token {token_label!r} is not present"
    if isinstance(exc, p11e.GeneralError):
        return "the PKCS#11 module reports GeneralError (for SoftHSM: token directory missing)"
    return f"the PKCS#11 module reports {type(exc).__name__}"


def _clock(wall: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(wall))


# --- the adapter ----------------------------------------------------------------------------


class Hsm:
    """One logged-in PKCS#11 session, shared safely by any number of threads.

    Construct with :meth:`open`; every misconfiguration is reported there, not at first use.
    After that the session is kept, but not for ever: when it or a cached handle dies (token
    removed, reset, unreachable) everything held is dropped and the next call logs in again,
    re-initialising the module if the token stays invisible (SoftHSM 2.6 never sees a token
    directory again that went away while it was loaded). Calls that can run twice safely
    (reads, ECDH, sign, wrap, unwrap) are retried once on a fresh session; key generation
    and destruction never are. The PIN is therefore kept in memory for the object's life.
    """

    def __init__(self, module: _Module, session: Any, token_label: str, pin: str) -> None:
        self._module = module
        self._lock = module.lock
        self._session: Any = session
        self._generation = module.generation
        self._pin = pin
        self._handles: dict[tuple[Purpose, int], Any] = {}
        self._public_keys: dict[tuple[Purpose, int], ec.EllipticCurvePublicKey] = {}
        self.token_label = token_label
        self.module_path = str(module.lib.so)
        self._closed = False
        self._lost_since: float | None = None  # wall clock of the first failure of an outage
        self._lost_reason = ""
        self._retry_at = 0.0  # monotonic: no login attempt before this
        self._refused: str | None = None  # the PIN was refused on a re-login: never again
        #: Called as ``observer(operation, seconds)`` after each HSM operation (metrics).
        self.observer: Callable[[str, float], None] | None = None

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, module_path: str, token_label: str, pin: str) -> Hsm:
        """Load ``module_path``, find the token ``token_label`` and log in with ``pin``."""
        if "softhsm" in os.path.basename(module_path).lower():
            _check_softhsm_conf()
        if not os.path.exists(module_path):
            raise HsmConfigError(
                f"PKCS#11 module {module_path} does not exist "
                "(install softhsm2, or set hsm.module to your vendor's library)"
            )
        try:
            module = _load_module(module_path)
        except p11e.GeneralError:
            raise HsmConfigError(
                f"PKCS#11 module {module_path} failed to initialise (for SoftHSM: check that "
                "SOFTHSM2_CONF names a readable config whose tokendir exists)"
            ) from None
        except p11e.PKCS11Error as exc:
            raise HsmConfigError(
                f"PKCS#11 module {module_path} could not be loaded ({exc or type(exc).__name__})"
            ) from None
        with module.lock:
            if not module.lib.initialized:  # a restart of the library failed earlier
                with suppress(p11e.PKCS11Error):
                    module.reinitialize()
            session = _first_login(module, module_path, token_label, pin)
            return cls(module, session, token_label, pin)

    def close(self) -> None:
        """Log out and close the session; the object is unusable afterwards."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._close_session_locked()
            self._pin = ""

    def __enter__(self) -> Hsm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- health ----------------------------------------------------------------------------

    def problem(self) -> str | None:
        """Why the HSM is unusable now, for a person to read; None while it works."""
        if self._refused is not None:
            return self._refused
        if self._lost_since is None:
            return None
        return self._unreachable_message()

    def ping(self) -> bool:
        """True if the token still answers and still holds a signing key (health checks).

        A real search, not the handle cache: a token that was removed, reset or emptied
        must turn the gateway NOT_SERVING rather than fail transfers one by one. A lost
        session is reopened here too, so a token that came back is used again.
        """
        try:
            return self._run(
                "ping",
                lambda: bool(
                    self._find_locked(
                        {
                            Attribute.LABEL: Purpose.SIGNING.label,
                            Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                        }
                    )
                ),
            )
        except HsmError:
            return False

    @property
    def library_restarts(self) -> int:
        """How often the library was started afresh in this process (recycling, recovery)."""
        return self._module.generation

    def count_objects(self) -> ObjectCounts:
        """What the token holds now, for leak checks: every session object should be gone."""

        def count() -> ObjectCounts:
            objects = list(self._session.get_objects({}))
            session = sum(1 for obj in objects if not obj[Attribute.TOKEN])
            return ObjectCounts(len(objects) - session, session, self._module.session_objects)

        return self._run("count", count)

    # -- serialisation, reconnection and error conversion ----------------------------------

    def _run(self, operation: str, action: Callable[[], _T], *, retry: bool = True) -> _T:
        """``action()`` under the module lock on a live session, foreign errors converted.

        ``retry``: the action may run a second time on a fresh session when the first one
        died under it; only for actions that change nothing on the token.
        """
        started = time.perf_counter()
        with self._lock:
            result = self._attempt(operation, action, retry)
        if self.observer is not None:
            self.observer(operation, time.perf_counter() - started)
        return result

    def _attempt(self, operation: str, action: Callable[[], _T], retry: bool) -> _T:
        if self._closed:
            raise HsmError("the HSM session is closed")
        self._recycle_if_due_locked()
        reason = ""
        for _ in range(2 if retry else 1):
            self._session_locked()  # a login that fails raises "the HSM is unreachable since"
            try:
                return action()
            except (HsmError, ValueError):
                raise
            except _TokenGoneError as gone:
                reason = gone.reason
            except p11e.PKCS11Error as exc:
                if not _session_lost(exc):
                    raise HsmError(f"HSM {operation} failed: {type(exc).__name__}") from None
                reason = f"{operation} failed with {type(exc).__name__}"
            self._drop_locked(reason)
        if not retry:
            raise HsmError(
                f"HSM {operation} was cut off: the session was lost ({reason}); "
                "check what is on the token ('xbgw keys list') before trying again"
            )
        # Logging in again worked, yet the call failed the same way on the new session.
        raise HsmError(f"HSM {operation} failed, on a new session too: {reason}")

    def _session_locked(self) -> Any:
        """The live session, logging in again first if it was dropped or outlived."""
        if self._refused is not None:
            raise HsmPinError(self._refused)
        if self._session is not None and self._generation == self._module.generation:
            return self._session
        self._forget_locked()  # an older generation's session is gone, not to be closed
        if time.monotonic() < self._retry_at:
            raise HsmError(self._unreachable_message())
        try:
            self._session = self._login_locked()
        except _TokenGoneError as gone:
            self._retry_at = time.monotonic() + REOPEN_INTERVAL_SECONDS
            self._mark_lost(gone.reason)
            raise HsmError(self._unreachable_message()) from None
        self._generation = self._module.generation
        if self._lost_since is not None:
            log.info(
                "HSM token %r answers again after %.0fs; logged in again",
                self.token_label,
                time.time() - self._lost_since,
            )
            self._lost_since = None
        return self._session

    def _login_locked(self) -> Any:
        for attempt in range(2):
            try:
                token = self._module.lib.get_token(token_label=self.token_label)
                return token.open(rw=True, user_pin=self._pin)
            except _PIN_REFUSED as exc:
                # Never retried: a retried wrong PIN can lock a real HSM.
                self._refused = (
                    f"HSM token {self.token_label!r} refused the PIN when logging in again "
                    f"({type(exc).__name__}); not retried -- fix the PIN and restart xbgw"
                )
                log.error("%s", self._refused)
                raise HsmPinError(self._refused) from None
            except p11e.PKCS11Error as exc:
                if attempt:
                    raise _TokenGoneError(_describe(exc, self.token_label)) from None
            # A token that went away and came back, or a session still logged in, is only
            # cleared by starting the module afresh (every Hsm on it logs in again).
            try:
                self._module.reinitialize()
            except p11e.PKCS11Error as exc:
                raise _TokenGoneError(_describe(exc, self.token_label)) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _drop_locked(self, reason: str) -> None:
        log.warning(
            "HSM session on token %r dropped with its key handles (%s); logging in again",
            self.token_label,
            reason,
        )
        self._close_session_locked()

    def _close_session_locked(self) -> None:
        if self._session is not None and self._generation == self._module.generation:
            with suppress(p11e.PKCS11Error):
                self._session.close()
        self._forget_locked()

    def _forget_locked(self) -> None:
        self._session = None
        self._handles.clear()
        self._public_keys.clear()

    def _mark_lost(self, reason: str) -> None:
        self._lost_reason = reason
        if self._lost_since is None:
            self._lost_since = time.time()
            log.error(
                "HSM token %r is unreachable (%s); calls fail until it answers again",
                self.token_label,
                reason,
            )

    def _unreachable_message(self) -> str:
        since = _clock(self._lost_since if self._lost_since is not None else time.time())
        return (
            f"the HSM is unreachable since {since} ({self._lost_reason}); xbgw logs in to "
            f"token {self.token_label!r} again by itself when it answers"
        )

    def _recycle_if_due_locked(self) -> None:
        """Start the module afresh now and then: see ``RECYCLE_AFTER_SESSION_OBJECTS``."""
        if self._module.session_objects < RECYCLE_AFTER_SESSION_OBJECTS or self._session is None:
            return
        self._close_session_locked()
        with suppress(p11e.PKCS11Error):  # the login that follows retries and reports
            self._module.reinitialize()

    def _find_locked(self, template: dict[Attribute, Any]) -> list[Any]:
        """Objects matching ``template``; an empty answer from a vanished token is a loss."""
        found = list(self._session.get_objects(template))
        if not found:
            self._check_token_locked()
        return found

    def _check_token_locked(self) -> None:
        """Raise ``_TokenGoneError`` if the token vanished (an empty search may mean that)."""
        try:
            self._module.lib.get_token(token_label=self.token_label)
        except p11e.PKCS11Error as exc:
            raise _TokenGoneError(_describe(exc, self.token_label)) from None

    def _session_object(self) -> None:
        self._module.session_objects += 1

    # -- key versions ----------------------------------------------------------------------

    def versions(self, purpose: Purpose) -> list[int]:
        """Versions of ``purpose`` on the token, ascending."""
        return self._run(
            "list",
            lambda: sorted(
                version
                for obj in self._find_locked(
                    {Attribute.LABEL: purpose.label, Attribute.CLASS: _key_class(purpose)}
                )
                if (version := _version_of(purpose, bytes(obj[Attribute.ID]))) is not None
            ),
        )

    def list_keys(self) -> list[KeyInfo]:
        """Every xbgw key version with the attributes the token reports for it."""
        infos = self._run("list", self._list_keys_locked)
        return sorted(infos, key=lambda info: (info.purpose.value, info.version))

    def _list_keys_locked(self) -> list[KeyInfo]:
        infos: list[KeyInfo] = []
        for purpose in Purpose:
            # Materialised first: PKCS#11 allows one find operation at a time.
            for obj in self._find_locked(
                {Attribute.LABEL: purpose.label, Attribute.CLASS: _key_class(purpose)}
            ):
                version = _version_of(purpose, bytes(obj[Attribute.ID]))
                if version is None:
                    continue
                point = None
                if purpose is not Purpose.STORAGE:
                    point = self._public_point_locked(purpose, version)
                infos.append(
                    KeyInfo(
                        purpose=purpose,
                        version=version,
                        key_class="secret" if purpose is Purpose.STORAGE else "private",
                        sensitive=bool(obj[Attribute.SENSITIVE]),
                        always_sensitive=bool(obj[Attribute.ALWAYS_SENSITIVE]),
                        extractable=bool(obj[Attribute.EXTRACTABLE]),
                        never_extractable=bool(obj[Attribute.NEVER_EXTRACTABLE]),
                        capabilities=_capabilities(obj),
                        public_point=point,
                        modifiable=bool(_attribute(obj, Attribute.MODIFIABLE, True)),
                        copyable=_attribute(obj, Attribute.COPYABLE, None),
                    )
                )
        return infos

    def generate(self, purpose: Purpose, version: int | None = None) -> int:
        """Create a new version of ``purpose`` (next after the highest) and return it."""
        existing = self.versions(purpose)
        if version is None:
            version = (existing[-1] + 1) if existing else 1
        if version in existing:
            raise ValueError(f"{purpose.label} version {version} already exists on the token")
        if not 1 <= version <= MAX_VERSION:
            raise ValueError(f"key version must be between 1 and {MAX_VERSION}, got {version}")
        key_id = key_object_id(purpose, version)

        def generate() -> None:
            if purpose is Purpose.STORAGE:
                self._session.generate_key(
                    KeyType.AES,
                    256,
                    id=key_id,
                    label=purpose.label,
                    store=True,
                    capabilities=MechanismFlag(0),
                    template={**_SECRET_TEMPLATE, **_ALL_OFF, **_PURPOSE_CAPABILITY[purpose]},
                )
                return
            params = self._session.create_domain_parameters(
                KeyType.EC,
                {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
                local=True,
            )
            params.generate_keypair(
                id=key_id,
                label=purpose.label,
                store=True,
                capabilities=MechanismFlag(0),
                public_template={**_PUBLIC_TEMPLATE, **_PUBLIC_OFF},
                private_template={
                    **_SECRET_TEMPLATE,
                    **_PRIVATE_OFF,
                    **_PURPOSE_CAPABILITY[purpose],
                },
            )

        self._run("generate", generate, retry=False)  # never twice: it may have made the key
        return version

    def destroy(self, purpose: Purpose, version: int) -> None:
        """Delete every object of one key version (private/secret and public halves)."""

        def destroy() -> None:
            objects = self._find_version_locked(purpose, version, None)
            if not objects:
                raise KeyNotFoundError(
                    f"key {purpose.label} version {version} is not on HSM token "
                    f"{self.token_label!r}"
                )
            for obj in objects:
                obj.destroy()
            self._handles.pop((purpose, version), None)
            self._public_keys.pop((purpose, version), None)

        self._run("destroy", destroy, retry=False)

    def _handle(self, purpose: Purpose, version: int) -> Any:
        """Cached handle of a private/secret key version; caller holds the lock."""
        key = (purpose, version)
        handle = self._handles.get(key)
        if handle is None:
            objects = self._find_version_locked(purpose, version, _key_class(purpose))
            if not objects:
                raise KeyNotFoundError(
                    f"key {purpose.label} version {version} is not on HSM token "
                    f"{self.token_label!r} (run 'xbgw keys list' to see what is there)"
                )
            if len(objects) > 1:
                raise KeyNotFoundError(
                    f"token {self.token_label!r} holds {len(objects)} objects for "
                    f"{purpose.label} version {version}; remove the duplicates"
                )
            handle = objects[0]
            self._handles[key] = handle
        return handle

    def _find_version_locked(
        self, purpose: Purpose, version: int, key_class: ObjectClass | None
    ) -> list[Any]:
        """The objects of one version: ``CKA_ID`` purpose + version, or the bare version of
        keys made before per-purpose ids (tokens in service keep working)."""
        found: list[Any] = []
        for key_id in (key_object_id(purpose, version), version_id(version)):
            template: dict[Attribute, Any] = {Attribute.LABEL: purpose.label, Attribute.ID: key_id}
            if key_class is not None:
                template[Attribute.CLASS] = key_class
            found.extend(self._session.get_objects(template))
        if not found:
            self._check_token_locked()
        return found

    def _public_point_locked(self, purpose: Purpose, version: int) -> bytes:
        objects = self._find_version_locked(purpose, version, ObjectClass.PUBLIC_KEY)
        if len(objects) != 1:
            raise KeyNotFoundError(
                f"public key {purpose.label} version {version} is not on HSM token "
                f"{self.token_label!r}"
            )
        point = OctetString.load(objects[0][Attribute.EC_POINT]).native
        return bytes(point)

    def public_key(self, purpose: Purpose, version: int) -> ec.EllipticCurvePublicKey:
        """The public half of an EC key version (transport or signing)."""
        if purpose is Purpose.STORAGE:
            raise ValueError("storage keys are symmetric and have no public key")
        cached = self._public_keys.get((purpose, version))
        if cached is not None:
            return cached
        point = self._run("public_key", lambda: self._public_point_locked(purpose, version))
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        self._public_keys[(purpose, version)] = key
        return key

    def check_versions(self, wanted: dict[Purpose, int]) -> None:
        """Fail now, with the reason, if any of the configured key versions is missing."""
        missing = []
        for purpose, version in wanted.items():
            try:
                self._run("find", functools.partial(self._handle, purpose, version))
            except KeyNotFoundError:
                missing.append(f"{purpose.label} v{version}")
        if missing:
            raise KeyNotFoundError(
                f"HSM token {self.token_label!r} lacks {', '.join(missing)} "
                "(run 'xbgw keys init' or 'xbgw keys rotate')"
            )

    # -- operations ------------------------------------------------------------------------
    #
    # Each session object made here (a derived or carrier key) is destroyed before the call
    # returns, and counted towards the module's next recycling.

    def ecdh(self, version: int, peer_point: bytes) -> bytes:
        """ECDH with transport key ``version`` and an uncompressed P-256 point: shared x."""
        if len(peer_point) != P256_POINT_LEN or peer_point[0] != 4:
            raise ValueError("peer point must be a 65-byte uncompressed P-256 point")
        # Reject points off the curve before they reach the HSM (invalid-curve attacks).
        try:
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), peer_point)
        except ValueError:
            raise ValueError("peer point is not on the P-256 curve") from None

        def derive() -> bytes:
            private = self._handle(Purpose.TRANSPORT, version)
            derived = private.derive_key(
                KeyType.GENERIC_SECRET,
                256,
                mechanism=Mechanism.ECDH1_DERIVE,
                mechanism_param=(KDF.NULL, None, peer_point),
                template=_EXPORTABLE_SESSION_SECRET,
            )
            self._session_object()
            try:
                return bytes(derived[Attribute.VALUE])
            finally:
                derived.destroy()

        return self._run("ecdh", derive)

    def sign_digest(self, version: int, digest: bytes) -> bytes:
        """ECDSA over a SHA-256 digest with signing key ``version``: raw ``r || s``."""
        if len(digest) != DIGEST_LEN:
            raise ValueError(f"digest must be {DIGEST_LEN} bytes, got {len(digest)}")
        return self._run(
            "sign",
            lambda: bytes(
                self._handle(Purpose.SIGNING, version).sign(digest, mechanism=Mechanism.ECDSA)
            ),
        )

    def sign(self, version: int, message: bytes) -> bytes:
        """ECDSA P-256 / SHA-256 over ``message`` (hashed here): raw ``r || s``."""
        return self.sign_digest(version, hashlib.sha256(message).digest())

    def wrap(self, version: int, secret: bytes) -> bytes:
        """Wrap ``secret`` under storage key ``version`` with RFC 5649 (AES-KWP)."""
        if not MIN_SECRET_LEN <= len(secret) <= MAX_SECRET_LEN:
            raise ValueError(
                f"secret to wrap must be {MIN_SECRET_LEN}-{MAX_SECRET_LEN} bytes, got {len(secret)}"
            )

        def wrap() -> bytes:
            wrapping = self._handle(Purpose.STORAGE, version)
            carrier = self._session.create_object(
                {
                    **_EXPORTABLE_SESSION_SECRET,
                    Attribute.CLASS: ObjectClass.SECRET_KEY,
                    Attribute.KEY_TYPE: KeyType.GENERIC_SECRET,
                    Attribute.VALUE: secret,
                }
            )
            self._session_object()
            try:
                return bytes(wrapping.wrap_key(carrier, mechanism=Mechanism.AES_KEY_WRAP_PAD))
            finally:
                carrier.destroy()

        return self._run("wrap", wrap)  # deterministic (RFC 5649): the same bytes if run twice

    def unwrap(self, version: int, wrapped: bytes) -> bytes:
        """Undo :meth:`wrap`; ``UnwrapError`` if the bytes were not wrapped by this key."""
        if not 24 <= len(wrapped) <= MAX_WRAPPED_LEN or len(wrapped) % 8:
            raise UnwrapError(f"wrapped key has impossible length {len(wrapped)}")

        def unwrap() -> bytes:
            unwrapping = self._handle(Purpose.STORAGE, version)
            try:
                carrier = unwrapping.unwrap_key(
                    ObjectClass.SECRET_KEY,
                    KeyType.GENERIC_SECRET,
                    wrapped,
                    mechanism=Mechanism.AES_KEY_WRAP_PAD,
                    template=_EXPORTABLE_SESSION_SECRET,
                )
            except (
                p11e.GeneralError,
                p11e.WrappedKeyInvalid,
                p11e.WrappedKeyLenRange,
                p11e.EncryptedDataInvalid,
            ):
                raise UnwrapError(
                    f"wrapped key does not unwrap under storage key version {version}"
                ) from None
            self._session_object()
            try:
                return bytes(carrier[Attribute.VALUE])
            finally:
                carrier.destroy()

        return self._run("unwrap", unwrap)


_MODULES: dict[str, _Module] = {}
_MODULES_LOCK = threading.Lock()


def _load_module(module_path: str) -> _Module:
    # python-pkcs11 initialises a library once per process; keep one _Module per path.
    with _MODULES_LOCK:
        module = _MODULES.get(module_path)
        if module is None:
            module = _Module(pkcs11.lib(module_path))
            _MODULES[module_path] = module
        return module


def _first_login(module: _Module, module_path: str, token_label: str, pin: str) -> Any:
    """The session of :meth:`Hsm.open`, every failure a configuration error a person can fix."""
    lib = module.lib
    try:
        token = lib.get_token(token_label=token_label)
    except p11e.NoSuchToken:
        labels = _token_labels(lib)
        found = ", ".join(repr(label) for label in labels) if labels else "none"
        raise HsmConfigError(
            f"HSM token {token_label!r} not found in {module_path}; tokens present: {found}"
        ) from None
    except p11e.GeneralError:
        raise HsmConfigError(
            f"PKCS#11 module {module_path} failed to initialise "
            "(for SoftHSM: check that SOFTHSM2_CONF names a readable config "
            "whose tokendir exists)"
        ) from None
    except p11e.PKCS11Error as exc:
        raise HsmConfigError(f"cannot reach token {token_label!r}: {type(exc).__name__}") from None
    try:
        return token.open(rw=True, user_pin=pin)
    except p11e.PinIncorrect:
        raise HsmPinError(f"wrong PIN for HSM token {token_label!r}") from None
    except p11e.PinLocked:
        raise HsmPinError(
            f"the user PIN of HSM token {token_label!r} is locked; the security "
            "officer must reset it"
        ) from None
    except p11e.UserAlreadyLoggedIn:
        raise HsmConfigError(
            f"HSM token {token_label!r} is already logged in by this process; "
            "open it once and share the Hsm object"
        ) from None
    except p11e.PKCS11Error as exc:
        raise HsmConfigError(
            f"cannot log in to HSM token {token_label!r}: {type(exc).__name__}"
        ) from None


def _token_labels(lib: Any) -> list[str]:
    try:
        labels = (str(token.label).strip() for token in lib.get_tokens())
        return sorted(label for label in labels if label)
    except p11e.PKCS11Error:
        return []


def _check_softhsm_conf() -> None:
    conf = os.environ.get("SOFTHSM2_CONF")
    if conf is None:
        if not os.path.exists("/etc/softhsm/softhsm2.conf"):
            raise HsmConfigError(
                "SOFTHSM2_CONF is not set and /etc/softhsm/softhsm2.conf does not exist; "
                "point SOFTHSM2_CONF at a config (template in hsm/softhsm2.conf.in)"
            )
        return
    if not os.path.isfile(conf):
        raise HsmConfigError(f"SOFTHSM2_CONF names {conf}, which does not exist")


def key_object_id(purpose: Purpose, version: int) -> bytes:
    """``CKA_ID`` of a key version made now: purpose code byte + 4-byte big-endian version.

    Unique per key pair across purposes: with the bare version every purpose's v1 had the
    same id, and generic PKCS#11 tools (which pair and pick keys by id) took the wrong one.
    """
    return bytes([purpose.code]) + version_id(version)


def _version_of(purpose: Purpose, key_id: bytes) -> int | None:
    """The version a ``CKA_ID`` names for ``purpose``: ours, or the bare version of old keys.

    None for an id with another purpose's code: not this purpose's key whatever its label.
    """
    if len(key_id) == 5:
        if key_id[0] != purpose.code:
            return None
        return int.from_bytes(key_id[1:], "big")
    return int.from_bytes(key_id, "big")


def _attribute(obj: Any, attr: Attribute, missing: Any) -> Any:
    """An attribute's value, or ``missing`` where the object type does not define it."""
    try:
        return obj[attr]
    except p11e.AttributeTypeInvalid:
        return missing


def _capabilities(obj: Any) -> tuple[str, ...]:
    """Every capability attribute the object reports true (undefined ones count as off)."""
    return tuple(name for name, attr in _CAPABILITY_ATTRS.items() if _attribute(obj, attr, False))


def _key_class(purpose: Purpose) -> ObjectClass:
    return ObjectClass.SECRET_KEY if purpose is Purpose.STORAGE else ObjectClass.PRIVATE_KEY
