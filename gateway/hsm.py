"""The PKCS#11 adapter: the only module that imports ``pkcs11``.

Why it looks like this (see FIELD-NOTES.md):

* python-pkcs11 initialises the library without locking callbacks, and SoftHSM then is not
  thread-safe: it crashed, and once returned a wrong unwrapped key, with two threads. Every
  call into the library therefore runs under one lock held by this object. gRPC handlers may
  call it from any thread.
* Login is per application, and closing the session that logged in logs every session out,
  so one long-lived logged-in session is kept for the life of the object; key handles are
  cached (a find costs ~110 us, a cached call nothing).
* Key objects are created only here, with explicit templates: private, sensitive, never
  extractable, and only the capability of their purpose. A key version is its own object:
  label ``xbgw-<purpose>``, ``CKA_ID`` = the version as 4 big-endian bytes.
* Foreign errors become :mod:`gateway.errors` types here, with messages a person can act on.

Secrets that must leave the HSM by design (the ECDH shared secret of an ECDH-ES unwrap, an
unwrapped data key) leave as short-lived session objects that are destroyed at once.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

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
    capabilities: tuple[str, ...]
    public_point: bytes | None  # uncompressed P-256 point for EC keys

    @property
    def safe(self) -> bool:
        """True when the key can never have left the HSM in clear."""
        return (
            self.sensitive
            and self.always_sensitive
            and not self.extractable
            and self.never_extractable
        )


_CAPABILITY_ATTRS = {
    "sign": Attribute.SIGN,
    "verify": Attribute.VERIFY,
    "derive": Attribute.DERIVE,
    "encrypt": Attribute.ENCRYPT,
    "decrypt": Attribute.DECRYPT,
    "wrap": Attribute.WRAP,
    "unwrap": Attribute.UNWRAP,
}

_ALL_OFF: dict[Attribute, Any] = {attr: False for attr in _CAPABILITY_ATTRS.values()}
# PKCS#11 defines only some capability attributes on each side of a key pair.
_PRIVATE_OFF: dict[Attribute, Any] = {
    attr: False for attr in (Attribute.SIGN, Attribute.DECRYPT, Attribute.UNWRAP, Attribute.DERIVE)
}
_PUBLIC_OFF: dict[Attribute, Any] = {
    attr: False for attr in (Attribute.VERIFY, Attribute.ENCRYPT, Attribute.WRAP, Attribute.DERIVE)
}

_SECRET_TEMPLATE: dict[Attribute, Any] = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
}

_PUBLIC_TEMPLATE: dict[Attribute, Any] = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: False,
}

# The capability each purpose's private/secret key gets; everything else is off.
_PURPOSE_CAPABILITY: dict[Purpose, dict[Attribute, Any]] = {
    Purpose.TRANSPORT: {Attribute.DERIVE: True},
    Purpose.SIGNING: {Attribute.SIGN: True},
    Purpose.STORAGE: {Attribute.WRAP: True, Attribute.UNWRAP: True},
}

# Ephemeral objects that carry a secret out of the HSM on purpose, destroyed after one read.
_EXPORTABLE_SESSION_SECRET: dict[Attribute, Any] = {
    Attribute.TOKEN: False,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: False,
    Attribute.EXTRACTABLE: True,
}


# --- the adapter ----------------------------------------------------------------------------


class Hsm:
    """One logged-in PKCS#11 session, shared safely by any number of threads.

    Construct with :meth:`open`; every misconfiguration is reported there, not at first use.
    """

    def __init__(self, session: Any, token_label: str, module_path: str) -> None:
        self._session = session
        self._lock = threading.RLock()
        self._handles: dict[tuple[Purpose, int], Any] = {}
        self._public_keys: dict[tuple[Purpose, int], ec.EllipticCurvePublicKey] = {}
        self.token_label = token_label
        self.module_path = module_path
        self._closed = False
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
            lib = _load_library(module_path)
        except p11e.GeneralError:
            raise HsmConfigError(
                f"PKCS#11 module {module_path} failed to initialise (for SoftHSM: check that "
                "SOFTHSM2_CONF names a readable config whose tokendir exists)"
            ) from None
        except p11e.PKCS11Error as exc:
            raise HsmConfigError(
                f"PKCS#11 module {module_path} could not be loaded ({exc or type(exc).__name__})"
            ) from None
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
            raise HsmConfigError(
                f"cannot reach token {token_label!r}: {type(exc).__name__}"
            ) from None
        try:
            session = token.open(rw=True, user_pin=pin)
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
        return cls(session, token_label, module_path)

    def close(self) -> None:
        """Log out and close the session; the object is unusable afterwards."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._handles.clear()
            with suppress(p11e.PKCS11Error):
                self._session.close()

    def __enter__(self) -> Hsm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- serialisation and error conversion ------------------------------------------------

    @contextmanager
    def _call(self, operation: str) -> Iterator[None]:
        started = time.perf_counter()
        with self._lock:
            if self._closed:
                raise HsmError("the HSM session is closed")
            try:
                yield
            except (HsmError, ValueError):
                raise
            except p11e.PKCS11Error as exc:
                raise HsmError(f"HSM {operation} failed: {type(exc).__name__}") from None
        if self.observer is not None:
            self.observer(operation, time.perf_counter() - started)

    # -- key versions ----------------------------------------------------------------------

    def versions(self, purpose: Purpose) -> list[int]:
        """Versions of ``purpose`` on the token, ascending."""
        with self._call("list"):
            return sorted(
                int.from_bytes(obj[Attribute.ID], "big")
                for obj in self._session.get_objects(
                    {Attribute.LABEL: purpose.label, Attribute.CLASS: _key_class(purpose)}
                )
            )

    def list_keys(self) -> list[KeyInfo]:
        """Every xbgw key version with the attributes the token reports for it."""
        infos: list[KeyInfo] = []
        with self._call("list"):
            for purpose in Purpose:
                # Materialise the search first: PKCS#11 allows one find operation at a time.
                found = list(
                    self._session.get_objects(
                        {Attribute.LABEL: purpose.label, Attribute.CLASS: _key_class(purpose)}
                    )
                )
                for obj in found:
                    version = int.from_bytes(obj[Attribute.ID], "big")
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
                            capabilities=_capabilities(obj, purpose),
                            public_point=point,
                        )
                    )
        return sorted(infos, key=lambda info: (info.purpose.value, info.version))

    def generate(self, purpose: Purpose, version: int | None = None) -> int:
        """Create a new version of ``purpose`` (next after the highest) and return it."""
        existing = self.versions(purpose)
        if version is None:
            version = (existing[-1] + 1) if existing else 1
        if version in existing:
            raise ValueError(f"{purpose.label} version {version} already exists on the token")
        if not 1 <= version <= MAX_VERSION:
            raise ValueError(f"key version must be between 1 and {MAX_VERSION}, got {version}")
        key_id = version_id(version)
        with self._call("generate"):
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
            else:
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
        return version

    def destroy(self, purpose: Purpose, version: int) -> None:
        """Delete every object of one key version (private/secret and public halves)."""
        with self._call("destroy"):
            objects = list(
                self._session.get_objects(
                    {Attribute.LABEL: purpose.label, Attribute.ID: version_id(version)}
                )
            )
            if not objects:
                raise KeyNotFoundError(
                    f"key {purpose.label} version {version} is not on HSM token "
                    f"{self.token_label!r}"
                )
            for obj in objects:
                obj.destroy()
            self._handles.pop((purpose, version), None)
            self._public_keys.pop((purpose, version), None)

    def _handle(self, purpose: Purpose, version: int) -> Any:
        """Cached handle of a private/secret key version; caller holds the lock."""
        key = (purpose, version)
        handle = self._handles.get(key)
        if handle is None:
            objects = list(
                self._session.get_objects(
                    {
                        Attribute.LABEL: purpose.label,
                        Attribute.ID: version_id(version),
                        Attribute.CLASS: _key_class(purpose),
                    }
                )
            )
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

    def _public_point_locked(self, purpose: Purpose, version: int) -> bytes:
        objects = list(
            self._session.get_objects(
                {
                    Attribute.LABEL: purpose.label,
                    Attribute.ID: version_id(version),
                    Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                }
            )
        )
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
        with self._call("public_key"):
            point = self._public_point_locked(purpose, version)
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        self._public_keys[(purpose, version)] = key
        return key

    def check_versions(self, wanted: dict[Purpose, int]) -> None:
        """Fail now, with the reason, if any of the configured key versions is missing."""
        missing = []
        for purpose, version in wanted.items():
            try:
                with self._call("find"):
                    self._handle(purpose, version)
            except KeyNotFoundError:
                missing.append(f"{purpose.label} v{version}")
        if missing:
            raise KeyNotFoundError(
                f"HSM token {self.token_label!r} lacks {', '.join(missing)} "
                "(run 'xbgw keys init' or 'xbgw keys rotate')"
            )

    # -- operations ------------------------------------------------------------------------

    def ecdh(self, version: int, peer_point: bytes) -> bytes:
        """ECDH with transport key ``version`` and an uncompressed P-256 point: shared x."""
        if len(peer_point) != P256_POINT_LEN or peer_point[0] != 4:
            raise ValueError("peer point must be a 65-byte uncompressed P-256 point")
        # Reject points off the curve before they reach the HSM (invalid-curve attacks).
        try:
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), peer_point)
        except ValueError:
            raise ValueError("peer point is not on the P-256 curve") from None
        with self._call("ecdh"):
            private = self._handle(Purpose.TRANSPORT, version)
            derived = private.derive_key(
                KeyType.GENERIC_SECRET,
                256,
                mechanism=Mechanism.ECDH1_DERIVE,
                mechanism_param=(KDF.NULL, None, peer_point),
                template=_EXPORTABLE_SESSION_SECRET,
            )
            try:
                return bytes(derived[Attribute.VALUE])
            finally:
                derived.destroy()

    def sign_digest(self, version: int, digest: bytes) -> bytes:
        """ECDSA over a SHA-256 digest with signing key ``version``: raw ``r || s``."""
        if len(digest) != DIGEST_LEN:
            raise ValueError(f"digest must be {DIGEST_LEN} bytes, got {len(digest)}")
        with self._call("sign"):
            private = self._handle(Purpose.SIGNING, version)
            return bytes(private.sign(digest, mechanism=Mechanism.ECDSA))

    def sign(self, version: int, message: bytes) -> bytes:
        """ECDSA P-256 / SHA-256 over ``message`` (hashed here): raw ``r || s``."""
        return self.sign_digest(version, hashlib.sha256(message).digest())

    def wrap(self, version: int, secret: bytes) -> bytes:
        """Wrap ``secret`` under storage key ``version`` with RFC 5649 (AES-KWP)."""
        if not MIN_SECRET_LEN <= len(secret) <= MAX_SECRET_LEN:
            raise ValueError(
                f"secret to wrap must be {MIN_SECRET_LEN}-{MAX_SECRET_LEN} bytes, got {len(secret)}"
            )
        with self._call("wrap"):
            wrapping = self._handle(Purpose.STORAGE, version)
            carrier = self._session.create_object(
                {
                    **_EXPORTABLE_SESSION_SECRET,
                    Attribute.CLASS: ObjectClass.SECRET_KEY,
                    Attribute.KEY_TYPE: KeyType.GENERIC_SECRET,
                    Attribute.VALUE: secret,
                }
            )
            try:
                return bytes(wrapping.wrap_key(carrier, mechanism=Mechanism.AES_KEY_WRAP_PAD))
            finally:
                carrier.destroy()

    def unwrap(self, version: int, wrapped: bytes) -> bytes:
        """Undo :meth:`wrap`; ``UnwrapError`` if the bytes were not wrapped by this key."""
        if not 24 <= len(wrapped) <= MAX_WRAPPED_LEN or len(wrapped) % 8:
            raise UnwrapError(f"wrapped key has impossible length {len(wrapped)}")
        with self._call("unwrap"):
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
            try:
                return bytes(carrier[Attribute.VALUE])
            finally:
                carrier.destroy()

    def ping(self) -> bool:
        """True if the token still answers and still holds a signing key (health checks).

        A real search, not the handle cache: a token that was removed, reset or emptied
        must turn the gateway NOT_SERVING rather than fail transfers one by one.
        """
        try:
            with self._call("ping"):
                found = list(
                    self._session.get_objects(
                        {
                            Attribute.LABEL: Purpose.SIGNING.label,
                            Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                        }
                    )
                )
                return bool(found)
        except HsmError:
            return False


_LIBRARIES: dict[str, Any] = {}
_LIBRARIES_LOCK = threading.Lock()


def _load_library(module_path: str) -> Any:
    # python-pkcs11 initialises a module once per process; keep one object per path.
    with _LIBRARIES_LOCK:
        lib = _LIBRARIES.get(module_path)
        if lib is None:
            lib = pkcs11.lib(module_path)
            _LIBRARIES[module_path] = lib
        return lib


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


def _capabilities(obj: Any, purpose: Purpose) -> tuple[str, ...]:
    names = (
        ("wrap", "unwrap", "encrypt", "decrypt", "sign", "verify", "derive")
        if purpose is Purpose.STORAGE
        else ("sign", "decrypt", "unwrap", "derive")
    )
    return tuple(name for name in names if obj[_CAPABILITY_ATTRS[name]])


def _key_class(purpose: Purpose) -> ObjectClass:
    return ObjectClass.SECRET_KEY if purpose is Purpose.STORAGE else ObjectClass.PRIVATE_KEY
