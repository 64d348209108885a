"""XBGW-TLSKEY-1: the TLS private key wrapped to an HSM storage key, so it is never plaintext
at rest.

Why it looks like this
----------------------
grpcio cannot use a PKCS#11 key: the TLS private key must be PEM bytes in the daemon's memory
(its credentials take only PEM). The next best thing is that the *file* is useless without
the gateway's HSM:

* **Envelope encryption, as for transfers at rest.** A fresh 32-byte data key seals the PEM
  with AES-256-GCM; the data key is wrapped (RFC 5649, inside the HSM) by a storage key
  version. Only the 72-byte wrapped key ever meets the HSM, so a storage rotation re-wraps
  the file without the PEM being sealed under the token directly, and the PEM length is not
  limited by the HSM's wrap limits.
* **The storage key reference is in clear** (owner, purpose, version): a storage rotation can
  find the version a file uses without the HSM (:func:`storage_version_of_tls_key`), and
  retiring that version is refused while the file uses it (:func:`retire_blocker`).
* **Nothing can be swapped.** The GCM AAD is every byte before the ciphertext, so the key
  reference, the wrapped data key and the lengths are authenticated; the wrapped blob also
  carries a binding digest of the reference under a label of its own, so a data key wrapped
  for a transfer (``XBGW-STREAM-1 storage``) can never be taken for a TLS key and the
  reverse, and a blob cannot be claimed for another key version.
* **Parsing is strict and bounded**: the magic and version first, then every length is checked
  against its bound and against the bytes left *before* it is used; nothing may follow the
  ciphertext. Every failure is a :class:`~gateway.errors.TlsKeyError` (a ``ConfigError``: the
  daemon exits 78 at start and keeps its running key on reload) of one of three kinds --
  format (malformed, truncated, trailing bytes, unknown magic or version), mismatch (another
  gateway's file, a storage version not on the token or not in service, a key that does not
  match the certificate) and authentication (altered, or wrapped by another HSM).
* **The config loader never needs the HSM**: it recognises the file by its magic and checks
  its structure (:func:`parse_wrapped_tls_key`); the daemon unwraps it once the HSM is open.

Byte layout (integers big-endian)
---------------------------------
::

    off      size  field
      0         8  magic         b"XBGWTLSK"
      8         1  version       1
      9       6+n  storage_ref   KeyRef.encode() of the storage key version the data key is
                                 wrapped to: u8 n (1..63) || owner (n bytes, a gateway id) ||
                                 purpose u8 (must be 3 = storage) || version u32 (1..2**32-1)
     15+n       1  wrapped_len   72
     16+n      72  wrapped       AES-KWP (RFC 5649) under the HSM storage key of
                                 data_key (32 random bytes) || binding (32)
     88+n      12  nonce         random
    100+n       4  sealed_len    u32: 16+1 .. 16+MAX_PEM_LEN (the PEM and the GCM tag)
    104+n  sealed_len  sealed    AES-256-GCM(key = data_key, nonce, aad = bytes 0 .. 104+n)
                                 of the PEM private key (unencrypted PKCS#8), then the 16-byte tag

    binding = SHA-256(b"XBGW-TLSKEY-1 storage" || storage_ref)

The file ends exactly after ``sealed``. The unwrapper checks the binding in constant time.
By convention such a file is named ``*.xbgw-key`` (``xbgw tls import``); it is recognised
by its magic, never by its name.

A file wrapped for another gateway (owner) is refused before the HSM is asked anything. What
the format cannot stop is replacing the whole file by an *older* valid file of the same
gateway (an earlier key): the certificate check (:func:`check_key_matches_certificate`) at
start and reload catches the usual case, a key that does not belong to the certificate.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from gateway import files
from gateway.errors import (
    ConfigError,
    KeyNotFoundError,
    PinSourceError,
    StorageError,
    TlsKeyAuthenticationError,
    TlsKeyError,
    TlsKeyFormatError,
    TlsKeyMismatchError,
    UnwrapError,
    XbgwError,
)
from gateway.keys import MAX_VERSION, KeyRef, Purpose, check_gateway_id
from gateway.secrets import PinSource

MAGIC: Final = b"XBGWTLSK"
VERSION: Final = 1
SUFFIX: Final = ".xbgw-key"
DATA_KEY_LEN: Final = 32
BINDING_LABEL: Final = b"XBGW-TLSKEY-1 storage"
WRAPPED_LEN: Final = 72  # RFC 5649 of data key || binding (64 bytes)
NONCE_LEN: Final = 12
TAG_LEN: Final = 16
MAX_OWNER_LEN: Final = 63
#: An RSA-8192 PKCS#8 PEM is about 6.4 KiB; EC keys are a few hundred bytes.
MAX_PEM_LEN: Final = 16 * 1024
#: The most bytes read from a ``tls.private_key`` file of either form (a plaintext PEM may
#: carry certificates too); a larger file is refused unread.
MAX_KEY_FILE_LEN: Final = 64 * 1024
MAX_WRAPPED_FILE_LEN: Final = 104 + MAX_OWNER_LEN + TAG_LEN + MAX_PEM_LEN

#: A new private key file: owner read/write (a replaced one keeps group read if it had it).
KEY_MODE: Final = 0o600
CERTIFICATE_MODE: Final = 0o644

PLAINTEXT_WARNING: Final = (
    "tls.private_key is a plaintext PEM at rest; wrap it with 'xbgw tls import'"
)

log = logging.getLogger("xbgw.tls")

#: ``opens(version)``: whether a storage version may be used (active or decrypt-only).
Opens = Callable[[int], bool]


class StorageKeys(Protocol):
    """The HSM's storage key versions: RFC 5649 wrap and unwrap inside the token
    (:class:`gateway.hsm.Hsm`)."""

    def wrap(self, version: int, secret: bytes, /) -> bytes: ...

    def unwrap(self, version: int, wrapped: bytes, /) -> bytes: ...


@dataclass(frozen=True)
class WrappedTlsKey:
    """A parsed wrapped-key file; nothing in it is authenticated yet."""

    storage_ref: KeyRef
    wrapped: bytes
    nonce: bytes
    sealed: bytes
    aad: bytes  # every byte before ``sealed``


# --- the format -----------------------------------------------------------------------------


def looks_wrapped(data: bytes) -> bool:
    """Whether ``data`` is (or, if short, could only be) a wrapped-key file: its magic."""
    return bool(data) and data[: len(MAGIC)] == MAGIC[: len(data)]


class _Reader:
    """Bounded reads that name the field a short file ended in."""

    def __init__(self, data: bytes, source: str) -> None:
        self.data, self.source, self.offset = data, source, 0

    def take(self, size: int, field: str) -> bytes:
        left = len(self.data) - self.offset
        if size > left:
            raise TlsKeyFormatError(
                f"{self.source}: truncated in {field} at offset {self.offset} "
                f"({size} bytes needed, {left} left)"
            )
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def byte(self, field: str) -> int:
        return self.take(1, field)[0]

    def u32(self, field: str) -> int:
        return int.from_bytes(self.take(4, field), "big")


def parse_wrapped_tls_key(data: bytes, source: str = "wrapped TLS key") -> WrappedTlsKey:
    """The fields of a wrapped-key file, every length checked before it is used.

    ``TlsKeyFormatError`` for anything but the one encoding this module writes; nothing is
    decrypted here (the config loader calls this without an HSM).
    """
    if not data:
        raise TlsKeyFormatError(f"{source}: the file is empty")
    reader = _Reader(data, source)
    magic = data[: len(MAGIC)]
    if magic != MAGIC:
        if MAGIC.startswith(magic):
            reader.take(len(MAGIC), "the magic")  # raises: truncated
        hint = " (it is a PEM file)" if data.lstrip().startswith(b"-----BEGIN") else ""
        raise TlsKeyFormatError(f"{source}: not a wrapped TLS key (no XBGWTLSK magic){hint}")
    if len(data) > MAX_WRAPPED_FILE_LEN:
        raise TlsKeyFormatError(
            f"{source}: {len(data)} bytes, more than a wrapped TLS key can be "
            f"({MAX_WRAPPED_FILE_LEN})"
        )
    reader.take(len(MAGIC), "the magic")
    version = reader.byte("the format version")
    if version != VERSION:
        raise TlsKeyFormatError(
            f"{source}: wrapped-key format version {version} is not supported "
            f"(this xbgw reads version {VERSION})"
        )
    storage_ref = _read_ref(reader)
    wrapped_len = reader.byte("the wrapped data key length")
    if wrapped_len != WRAPPED_LEN:
        raise TlsKeyFormatError(
            f"{source}: the wrapped data key is {wrapped_len} bytes; the format has {WRAPPED_LEN}"
        )
    wrapped = reader.take(WRAPPED_LEN, "the wrapped data key")
    nonce = reader.take(NONCE_LEN, "the nonce")
    sealed_len = reader.u32("the sealed key length")
    if not TAG_LEN + 1 <= sealed_len <= TAG_LEN + MAX_PEM_LEN:
        raise TlsKeyFormatError(
            f"{source}: the sealed key length {sealed_len} is outside "
            f"{TAG_LEN + 1}..{TAG_LEN + MAX_PEM_LEN}"
        )
    aad = data[: reader.offset]
    sealed = reader.take(sealed_len, "the sealed private key")
    if reader.offset != len(data):
        raise TlsKeyFormatError(
            f"{source}: {len(data) - reader.offset} bytes follow the sealed private key"
        )
    return WrappedTlsKey(storage_ref, wrapped, nonce, sealed, aad)


def _read_ref(reader: _Reader) -> KeyRef:
    owner_len = reader.byte("the storage key reference")
    if not 1 <= owner_len <= MAX_OWNER_LEN:
        raise TlsKeyFormatError(
            f"{reader.source}: the owner in the storage key reference is {owner_len} bytes; "
            f"1..{MAX_OWNER_LEN} are allowed"
        )
    raw_owner = reader.take(owner_len, "the storage key reference")
    code = reader.byte("the storage key reference")
    version = reader.u32("the storage key reference")
    try:
        owner = check_gateway_id(raw_owner.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise TlsKeyFormatError(
            f"{reader.source}: the owner in the storage key reference is not a gateway id"
        ) from None
    try:
        purpose = Purpose.from_code(code)
    except ValueError:
        raise TlsKeyFormatError(
            f"{reader.source}: unknown key purpose code {code} in the storage key reference"
        ) from None
    if purpose is not Purpose.STORAGE:
        raise TlsKeyFormatError(
            f"{reader.source}: the key reference names a {purpose.value} key; a TLS key is "
            "wrapped to a storage key only"
        )
    if not 1 <= version <= MAX_VERSION:
        raise TlsKeyFormatError(f"{reader.source}: storage key version {version} is not valid")
    return KeyRef(owner, purpose, version)


def _binding(ref: KeyRef) -> bytes:
    return hashlib.sha256(BINDING_LABEL + ref.encode()).digest()


def seal_tls_key(pem: bytes, keys: StorageKeys, ref: KeyRef) -> bytes:
    """Wrap an unencrypted PEM private key to storage key ``ref``: the file's bytes.

    The key is stored as unencrypted PKCS#8 PEM (what the daemon hands to gRPC), whatever
    PEM form it came in; an encrypted PEM is refused (decrypt it first: :func:`plain_pem`).
    """
    return _seal(pem, keys, ref, data_key=os.urandom(DATA_KEY_LEN), nonce=os.urandom(NONCE_LEN))


def _seal(pem: bytes, keys: StorageKeys, ref: KeyRef, *, data_key: bytes, nonce: bytes) -> bytes:
    """:func:`seal_tls_key` with its random inputs explicit (test vectors only)."""
    if ref.purpose is not Purpose.STORAGE:
        raise ValueError(f"{ref} is not a storage key; a TLS key is wrapped to a storage key")
    if len(data_key) != DATA_KEY_LEN or len(nonce) != NONCE_LEN:
        raise ValueError("the data key must be 32 bytes and the nonce 12")
    plain = plain_pem(pem, None, "the TLS private key to wrap")
    if len(plain) > MAX_PEM_LEN:
        raise TlsKeyFormatError(
            f"the TLS private key is {len(plain)} bytes as PEM; at most {MAX_PEM_LEN} are wrapped"
        )
    wrapped = keys.wrap(ref.version, data_key + _binding(ref))
    if len(wrapped) != WRAPPED_LEN:  # RFC 5649 of 64 bytes is 72: anything else is a bug
        raise ValueError(f"the HSM returned a {len(wrapped)}-byte wrapped key, not {WRAPPED_LEN}")
    aad = b"".join(
        (
            MAGIC,
            bytes([VERSION]),
            ref.encode(),
            bytes([WRAPPED_LEN]),
            wrapped,
            nonce,
            (len(plain) + TAG_LEN).to_bytes(4, "big"),
        )
    )
    return aad + AESGCM(data_key).encrypt(nonce, plain, aad)


def open_tls_key(
    data: bytes,
    keys: StorageKeys,
    me: str,
    *,
    opens: Opens | None = None,
    source: str = "wrapped TLS key",
) -> bytes:
    """The PEM private key in a wrapped-key file of gateway ``me``.

    ``opens`` (the key ring's view, in the daemon) says whether the file's storage version is
    in service; without it any version on the token is tried (re-wrapping, the CLI). Raises
    a ``TlsKeyError`` for a file that is malformed, not ``me``'s, or does not authenticate;
    an ``HsmError`` when the HSM itself fails (worth a retry, unlike the rest).
    """
    parsed = parse_wrapped_tls_key(data, source)
    ref = parsed.storage_ref
    if ref.owner != me:
        raise TlsKeyMismatchError(
            f"{source}: wrapped for gateway {ref.owner!r} ({ref}); this gateway is {me!r}"
        )
    if opens is not None and not opens(ref.version):
        raise TlsKeyMismatchError(
            f"{source}: wrapped to {ref}, which is not in service here (retired, destroyed or "
            "never activated: see 'xbgw keys status')"
        )
    try:
        blob = keys.unwrap(ref.version, parsed.wrapped)
    except KeyNotFoundError:
        raise TlsKeyMismatchError(
            f"{source}: wrapped to {ref}, which is not on the HSM token (destroyed, or another "
            "token): install a new key and certificate with 'xbgw tls rotate'"
        ) from None
    except UnwrapError:
        raise TlsKeyAuthenticationError(
            f"{source}: the data key does not unwrap under {ref}: the file was altered, or it "
            "was wrapped by another HSM"
        ) from None
    expected = _binding(ref)
    if len(blob) != DATA_KEY_LEN + len(expected) or not hmac.compare_digest(
        blob[DATA_KEY_LEN:], expected
    ):
        raise TlsKeyAuthenticationError(
            f"{source}: the wrapped data key is not bound to {ref} as a TLS key "
            "(it was wrapped for something else)"
        )
    try:
        return AESGCM(blob[:DATA_KEY_LEN]).decrypt(parsed.nonce, parsed.sealed, parsed.aad)
    except InvalidTag:
        raise TlsKeyAuthenticationError(
            f"{source}: the sealed private key does not authenticate: the file was altered"
        ) from None


# --- files ----------------------------------------------------------------------------------


def read_tls_key_file(path: Path, source: str | None = None) -> bytes:
    """A ``tls.private_key`` file's bytes, read once and bounded (either form).

    A FIFO or device would block or never end: only a regular file is read.
    """
    where = source or str(path)
    try:
        return files.read_bounded(path, MAX_KEY_FILE_LEN)
    except files.FileMissingError:
        raise TlsKeyError(f"{where}: the file does not exist") from None
    except files.FileDeniedError:
        raise TlsKeyError(f"{where}: cannot read it: permission denied") from None
    except files.NotRegularFileError as exc:
        raise TlsKeyError(f"{where}: not a regular file ({exc.kind})") from None
    except files.FileTooLargeError:
        raise TlsKeyFormatError(
            f"{where}: larger than {MAX_KEY_FILE_LEN} bytes: not a TLS private key file"
        ) from None
    except files.FileError as exc:
        raise TlsKeyError(f"{where}: cannot read it: {exc.why}") from None


def storage_version_of_tls_key(path: Path) -> int | None:
    """The storage version a wrapped key file is wrapped to; ``None`` for a plaintext PEM.

    Needs no HSM. ``TlsKeyError`` if the file cannot be read or is a malformed wrapped file.
    """
    data = read_tls_key_file(path)
    if not looks_wrapped(data):
        return None
    return parse_wrapped_tls_key(data, str(path)).storage_ref.version


def retire_blocker(path: Path, purpose: Purpose, version: int) -> str | None:
    """Why storage ``version`` cannot be retired because of the TLS key file, or ``None``.

    For ``KeyRing.retire``'s extra blockers (``gateway.keyadmin.ExtraBlocker``). A file that
    cannot be read or parsed blocks too: retiring a version it might need could leave the
    gateway unable to start.
    """
    if purpose is not Purpose.STORAGE:
        return None
    try:
        used = storage_version_of_tls_key(path)
    except XbgwError as exc:
        return f"cannot tell whether the TLS private key uses it ({exc})"
    if used == version:
        return f"the TLS private key {path} is wrapped to it (run 'xbgw keys rewrap')"
    return None


def rewrap_tls_key(path: Path, keys: StorageKeys, me: str, new_ref: KeyRef) -> bool:
    """Re-wrap the wrapped key file at ``path`` to ``new_ref``, in place and atomically.

    For the storage rotation: the PEM is unwrapped and sealed again under a fresh data key
    (never written in clear), then the file is replaced (temporary file, fsync, rename, fsync
    of the directory) keeping its owner and mode. Returns False if it already was wrapped to
    ``new_ref``. A plaintext PEM is refused (``TlsKeyFormatError``): wrapping one is the
    operator's step (``xbgw tls import``), since the plaintext must then be deleted.
    """
    if new_ref.owner != me or new_ref.purpose is not Purpose.STORAGE:
        raise ValueError(f"{new_ref} is not a storage key of {me}")
    source = str(path)
    data = read_tls_key_file(path)
    if not looks_wrapped(data):
        raise TlsKeyFormatError(
            f"{source}: a plaintext PEM, not a wrapped key; wrap it with 'xbgw tls import'"
        )
    if parse_wrapped_tls_key(data, source).storage_ref == new_ref:
        return False
    pem = open_tls_key(data, keys, me, source=source)
    write_files_atomically([NewFile(path, seal_tls_key(pem, keys, new_ref), KEY_MODE)])
    log.info(
        "TLS private key re-wrapped to %s",
        new_ref,
        extra={"key_ref": str(new_ref), "outcome": "rewrapped"},
    )
    return True


@dataclass(frozen=True)
class NewFile:
    """A file to write: its content, its mode if new (a replaced file keeps its owner and,
    within ``mode | 0o040`` for keys, its mode), and optionally the file whose owner it takes."""

    path: Path
    data: bytes
    mode: int = KEY_MODE
    owner_of: Path | None = None


def write_files_atomically(files: Sequence[NewFile]) -> None:
    """Write every file to a temporary name first (fsynced), then rename each into place and
    fsync the directories: a reader sees each file old or new, never half written, and a
    failure before the renames leaves every file as it was. Two files are not replaced as
    one: a crash between the renames leaves the first new and the second old (for a key and
    its certificate, a pair the daemon refuses on reload -- it keeps the running one)."""
    staged: list[tuple[Path, Path]] = []
    try:
        for new in files:
            staged.append((_stage(new), new.path))
        for temp, path in staged:
            os.replace(temp, path)
        for directory in dict.fromkeys(path.parent for _, path in staged):
            _fsync_directory(directory)
    except OSError as exc:
        where = getattr(exc, "filename", None) or "a file"
        raise StorageError(f"cannot write {where}: {exc.strerror or exc}") from None
    finally:
        for temp, _ in staged:
            if temp.exists():
                temp.unlink()


def _stage(new: NewFile) -> Path:
    temp = new.path.parent / f".{new.path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        mode = new.mode
        like = new.owner_of or (new.path if new.path.exists() else None)
        if like is not None:
            st = os.stat(like)
            if new.owner_of is None:  # replacing: keep the mode (keys: never beyond group read)
                kept = st.st_mode & 0o777
                mode = (KEY_MODE | (kept & 0o040)) if new.mode == KEY_MODE else kept
            if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                try:
                    os.fchown(fd, st.st_uid, st.st_gid)
                except PermissionError:
                    raise TlsKeyError(
                        f"{new.path}: cannot give the new file the owner of {like} "
                        f"(uid {st.st_uid}, gid {st.st_gid}); run this as root or as that user"
                    ) from None
        os.fchmod(fd, mode)
        view = memoryview(new.data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        temp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return temp


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- plaintext PEM and the certificate ------------------------------------------------------


def read_passphrase(source: PinSource, where: str) -> str:
    """A PEM passphrase from its file, variable or credential (``PinSource`` words its errors
    for the HSM PIN: say which setting it was)."""
    try:
        return source.read()
    except PinSourceError as exc:
        raise TlsKeyError(f"{where}: {str(exc).removeprefix('HSM PIN: ')}") from None


def plain_pem(data: bytes, passphrase: str | None, source: str) -> bytes:
    """An (optionally encrypted) PEM private key as unencrypted PKCS#8 PEM, in memory."""
    try:
        key = load_pem_private_key(data, passphrase.encode() if passphrase else None)
    except TypeError:
        if passphrase:
            raise TlsKeyFormatError(
                f"{source}: a passphrase was given but the key is not encrypted"
            ) from None
        raise TlsKeyFormatError(
            f"{source}: the key is encrypted; its passphrase is needed"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        wrong = " or the passphrase is wrong" if passphrase else ""
        raise TlsKeyFormatError(f"{source}: not a PEM private key{wrong}") from None
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def leaf_certificate(data: bytes, source: str) -> x509.Certificate:
    """The first certificate of a PEM chain (the one the key must match)."""
    try:
        return x509.load_pem_x509_certificates(data)[0]
    except (ValueError, IndexError):
        raise ConfigError(f"{source}: not a PEM X.509 certificate") from None


def check_key_matches_certificate(pem: bytes, certificate: x509.Certificate, source: str) -> None:
    """Refuse a key whose public half is not the certificate's: gRPC would accept the pair
    and every handshake would then fail."""
    try:
        key = load_pem_private_key(pem, None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise TlsKeyFormatError(f"{source}: not an unencrypted PEM private key") from None
    ours = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    theirs = certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if not hmac.compare_digest(ours, theirs):
        raise TlsKeyMismatchError(
            f"{source}: the private key does not belong to the certificate "
            f"(serial {certificate.serial_number:x})"
        )


def load_tls_private_key(
    key_file: Path,
    certificate_file: Path,
    me: str,
    keys: StorageKeys,
    *,
    passphrase: PinSource | None = None,
    opens: Opens | None = None,
) -> bytes:
    """What the daemon hands to gRPC: the key of ``tls.private_key`` as PEM in memory.

    A wrapped file is unwrapped with the HSM (``opens``: the key ring's storage versions in
    service); a plaintext PEM still works, with a WARNING each time it is loaded (start and
    every reload). Either way the key must match ``tls.certificate``.
    """
    source = f"tls.private_key {key_file}"
    data = read_tls_key_file(key_file, source)
    if looks_wrapped(data):
        if passphrase is not None:
            log.warning(
                "tls.private_key_passphrase is not used: %s is wrapped by the HSM; remove it",
                key_file,
            )
        pem = open_tls_key(data, keys, me, opens=opens, source=source)
    else:
        log.warning("%s (%s)", PLAINTEXT_WARNING, key_file)
        secret = read_passphrase(passphrase, "tls.private_key_passphrase") if passphrase else None
        pem = plain_pem(data, secret, source)
    certificate = leaf_certificate(
        _read_certificate(certificate_file), f"tls.certificate {certificate_file}"
    )
    check_key_matches_certificate(pem, certificate, f"{source} and tls.certificate")
    return pem


def _read_certificate(path: Path) -> bytes:
    try:
        return files.read_bounded(path, files.PEM_MAX)
    except files.FileError as exc:
        raise ConfigError(f"tls.certificate: {exc}") from None
