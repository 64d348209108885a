"""XBGW-STREAM-1: data keys, wrapped keys, and the authenticated segment stream.

Why it looks like this
----------------------
The format follows Tink's AES-GCM-HKDF streaming AEAD and age's STREAM construction (a fresh
data key per transfer; every segment authenticated on its own under a nonce that encodes its
index and whether it is the last), plus the key commitment of the AWS Encryption SDK v2:

* **Segments are verified as they arrive**, so a receiver never buffers a transfer and a broken
  stream resumes at a segment boundary. The index in the nonce stops reordering, dropping and
  duplication; the final flag in the nonce stops truncation and extension; the header-core
  digest as AAD ties every segment to one header.
* **The data key is committed**: HKDF yields the payload key *and* a 32-byte commitment stored
  in the header. AES-GCM is not key-committing, so without it a header could be crafted whose
  wrapped keys open to two different data keys that both "decrypt" the same ciphertext. The
  commitment is compared in constant time.
* **The core excludes the wrapped keys and the commitment** (and the header length, which
  changes with the wrapped keys): a receiver re-wraps the data key to its own storage key at
  rest without touching a byte of the payload.
* **The suite is an allow list** of exactly one entry: a ciphertext can never choose a weaker
  algorithm. Parsing is strict and bounded: the header length is checked against
  :data:`MAX_HEADER_LEN` before the rest of the header is read, every length before its bytes
  are used, and one plaintext has exactly one encoding (no empty non-initial final segment,
  no short non-final segment), so a stream cannot be re-encoded around the checks.
* **Every wrapped key names its key reference** (owner, purpose, version) in clear, and the
  reference and the header core are bound inside the KDF (partner wrap) or inside the wrapped
  blob (storage wrap): a wrapped key cannot be moved to another header or claimed for another
  key version.

Nonce reuse on resume: segment ``i`` of a header always uses the same nonce. A sender that
resumes must resend the very bytes it encrypted before (or the same plaintext); this module
encrypts whatever it is given, so the guard belongs to the caller (``gateway.pipeline``
records each segment's GCM tag before it leaves and refuses a resume whose tags differ).

Byte layout (all integers big-endian)
-------------------------------------
Header (``header_len`` bytes, at most :data:`MAX_HEADER_LEN` = 4096)::

    off  size  field
      0     4  magic             b"XBGW"
      4     1  version           1
      5     1  suite             1 = P256-ECDH-ES+A256KW / HKDF-SHA256 / AES-256-GCM
      6     2  header_len        length of the whole header, commitment included (203..4096)
      8     4  segment_size      plaintext bytes per segment, 64 .. 16 MiB (default 1 MiB)
     12    32  salt              HKDF salt for the payload key
     44     7  nonce_prefix
     51   1+n  transfer_id       u8 n (1..64): A-Z a-z 0-9 . _ -, first alnum (the jti)
          1+n  sender_id         u8 n (1..63), then a gateway id (keys.check_gateway_id)
          1+n  receiver_id       the same
           32  passport_digest   SHA-256 of the passport token
            1  count             number of wrapped keys, 1..4; each wrapped key is:
            1    kind            1 = ECDH-ES+A256KW to a partner's transport key
                                 2 = A256KWP under an HSM storage key
          6+n    key_ref         KeyRef.encode(): u8 n || owner || purpose u8 || version u32
                                 (purpose must be transport for kind 1, storage for kind 2)
           65    ephemeral       kind 1 only: uncompressed P-256 point 0x04 || x || y, on curve
          1+n    wrapped         u8 n || n bytes; kind 1: n = 40, kind 2: n = 72
           32  commitment

The prefix (magic, version, suite, header_len) is checked in that order: a different magic
means another format, a different version may lay its header out differently, and only then
is ``header_len`` trusted, and checked against the limit before another byte is read. Two
wrapped keys may not name the same key reference; no byte may follow the commitment inside
``header_len``.

Derived values::

    core        = header[0:6] || header[8:end of passport_digest]
                  (magic, version, suite, segment_size, salt, nonce_prefix, context: the
                  header without header_len, the wrapped keys and the commitment)
    core_digest = SHA-256(core)
    payload_key || commitment
                = HKDF-SHA256(ikm = data key (32 random bytes), salt = salt,
                              info = b"XBGW-STREAM-1 payload" || core_digest, L = 64)

Segments follow the header back to back; segment ``i`` (``0 <= i < 2**32 - 1``) is::

    AES-256-GCM(payload_key, nonce = nonce_prefix || u32(i) || final (0x00 or 0x01),
                aad = core_digest, plaintext)       -> ciphertext || 16-byte tag

Every segment but the last holds exactly ``segment_size`` plaintext bytes; the last one is
marked final and holds 1..``segment_size`` bytes -- except an empty stream, which is exactly
one empty final segment 0. In a stream file the final segment is the one that ends at EOF.

Kind 1, ECDH-ES+A256KW (to a partner; the recipient's static key never leaves its HSM)::

    shared  = ECDH(ephemeral private, recipient transport public key)   # x coordinate
    kek     = HKDF-SHA256(ikm = shared, salt = ephemeral point || recipient point,
                          info = b"XBGW-STREAM-1 ECDH-ES+A256KW" || key_ref || core_digest,
                          L = 32)
    wrapped = AES-KW (RFC 3394)(kek, data key)                         # 40 bytes

Kind 2, A256KWP (at rest, inside the HSM)::

    blob    = data key || SHA-256(b"XBGW-STREAM-1 storage" || key_ref || core_digest)
    wrapped = AES-KWP (RFC 5649)(storage key, blob)                     # 72 bytes

and the unwrapper checks the second half of the blob in constant time.
"""

from __future__ import annotations

from gateway.envelope.header import (
    DEFAULT_SEGMENT_SIZE,
    MAX_HEADER_LEN,
    MAX_SEGMENT_SIZE,
    MAX_SEGMENTS,
    MIN_SEGMENT_SIZE,
    SUITES,
    TAG_LEN,
    VERSION,
    ByteReader,
    ByteWriter,
    Header,
    StreamContext,
    WrapKind,
    WrappedKey,
    header_length,
    read_header,
)
from gateway.envelope.stream import (
    StreamDecryptor,
    StreamEncryptor,
    cut_segments,
    decrypt_segments,
    read_stream,
    write_stream,
)
from gateway.envelope.wrapping import (
    KeyHolder,
    StorageKeyHolder,
    TransportKeyHolder,
    open_header,
    rewrap_for_storage,
    seal_header,
)

__all__ = [
    "DEFAULT_SEGMENT_SIZE",
    "MAX_HEADER_LEN",
    "MAX_SEGMENTS",
    "MAX_SEGMENT_SIZE",
    "MIN_SEGMENT_SIZE",
    "SUITES",
    "TAG_LEN",
    "VERSION",
    "ByteReader",
    "ByteWriter",
    "Header",
    "KeyHolder",
    "StorageKeyHolder",
    "StreamContext",
    "StreamDecryptor",
    "StreamEncryptor",
    "TransportKeyHolder",
    "WrapKind",
    "WrappedKey",
    "cut_segments",
    "decrypt_segments",
    "header_length",
    "open_header",
    "read_header",
    "read_stream",
    "rewrap_for_storage",
    "seal_header",
    "write_stream",
]
