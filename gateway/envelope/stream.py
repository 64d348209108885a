"""XBGW-STREAM-1 segments: the streaming encryptor and decryptor, and whole stream files.

See the package docstring (``gateway.envelope``) for the nonce and length rules.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.envelope.header import (
    MAX_SEGMENTS,
    TAG_LEN,
    ByteReader,
    ByteWriter,
    Header,
    _read_exact,
    read_header,
)
from gateway.envelope.wrapping import (
    KeyHolder,
    _payload_key,
    open_header,
)
from gateway.errors import (
    SegmentAuthenticationError,
    SegmentLengthError,
    SegmentOrderError,
    TrailingDataError,
    TruncatedStreamError,
)


class StreamEncryptor:
    """Encrypts the segments of one header's stream.

    Stateless per segment: segment ``i`` always gets the same nonce, so calling
    :meth:`encrypt_segment` twice for one index with different plaintext reuses a GCM nonce.
    Only resend what was sent before (see the module docstring).
    """

    def __init__(self, header: Header, data_key: bytes) -> None:
        self.header = header
        self._aead = AESGCM(_payload_key(header, data_key))
        self._aad = header.core_digest()

    def encrypt_segment(self, index: int, plaintext: bytes, final: bool) -> bytes:
        """Segment ``index``; ``ValueError`` if its length is impossible at that position."""
        self._check(index, plaintext, final)
        return self._aead.encrypt(
            _nonce(self.header.nonce_prefix, index, final), plaintext, self._aad
        )

    def encrypt_segment_into(
        self, index: int, plaintext: bytes | memoryview, final: bool, out: memoryview
    ) -> None:
        """:meth:`encrypt_segment` written into ``out`` (exactly ``len(plaintext) + TAG_LEN``
        bytes): the caller's buffer is reused, not a new zero-filled one per segment."""
        self._check(index, plaintext, final)
        if len(out) != len(plaintext) + TAG_LEN:
            raise ValueError(
                f"the output buffer must hold {len(plaintext) + TAG_LEN} bytes, it holds {len(out)}"
            )
        self._aead.encrypt_into(
            _nonce(self.header.nonce_prefix, index, final), plaintext, self._aad, out
        )

    def _check(self, index: int, plaintext: bytes | memoryview, final: bool) -> None:
        size = self.header.segment_size
        if not 0 <= index < MAX_SEGMENTS:
            raise ValueError(f"segment index must be between 0 and {MAX_SEGMENTS - 1}, got {index}")
        if final:
            if len(plaintext) > size:
                raise ValueError(
                    f"a final segment holds at most {size} bytes, got {len(plaintext)}"
                )
            if not plaintext and index != 0:
                raise ValueError("only segment 0 (an empty stream) may be empty")
        else:
            if index == MAX_SEGMENTS - 1:
                raise ValueError(
                    f"segment {index} must be final: a stream has at most {MAX_SEGMENTS} segments"
                )
            if len(plaintext) != size:
                raise ValueError(
                    f"a non-final segment holds exactly {size} bytes, got {len(plaintext)}"
                )

    def iter_segments(
        self, reader: ByteReader, *, start_index: int = 0
    ) -> Iterator[tuple[int, bool, bytes]]:
        """Yield ``(index, final, ciphertext)`` for the plaintext in ``reader``.

        One segment is read at a time, plus one byte of lookahead to learn whether it is the
        last, so memory stays at about two segments (plus the ciphertext the caller still
        holds) whatever the size. To resume at segment ``n``, position ``reader`` at
        ``n * segment_size`` and pass ``start_index=n``.
        """
        size = self.header.segment_size
        index = start_index
        current = _read_exact(reader, size)
        while True:
            lookahead = _read_exact(reader, 1) if len(current) == size else b""
            final = not lookahead
            ciphertext = self.encrypt_segment(index, current, final)
            current = b""
            yield index, final, ciphertext
            if final:
                return
            ciphertext = b""
            index += 1
            current = lookahead + _read_exact(reader, size - 1)


class StreamDecryptor:
    """Decrypts and verifies one header's segments strictly in order.

    A segment that fails any check leaves the state as it was, so the same index may be
    retried (a resumed upload). Plaintext returned before :meth:`finish` succeeded is not
    yet known to be complete.
    """

    def __init__(self, header: Header, data_key: bytes, start_index: int = 0) -> None:
        if not 0 <= start_index < MAX_SEGMENTS:
            raise ValueError(
                f"start index must be between 0 and {MAX_SEGMENTS - 1}, got {start_index}"
            )
        self.header = header
        self._aead = AESGCM(_payload_key(header, data_key))
        self._aad = header.core_digest()
        self._next = start_index
        self._done = False

    @property
    def next_index(self) -> int:
        """The index the next segment must have (the resume point)."""
        return self._next

    @property
    def done(self) -> bool:
        """True once the final segment has been verified."""
        return self._done

    def decrypt_segment(self, index: int, ciphertext: bytes, final: bool) -> bytes:
        """Verify and decrypt segment ``index``; see the class docstring for the rules."""
        self._check_next(index, len(ciphertext), final)
        try:
            plaintext = self._open(index, ciphertext, final)
        except InvalidTag:
            raise self._failed(index, final) from None
        self._next = index + 1
        self._done = final
        return plaintext

    def decrypt_segment_into(
        self, index: int, ciphertext: bytes | memoryview, final: bool, out: bytearray
    ) -> memoryview:
        """:meth:`decrypt_segment` into ``out`` (at least ``segment_size`` bytes, reused
        from segment to segment); the plaintext is the returned view of its start, valid
        until ``out`` is used again. A segment that fails leaves unverified bytes in ``out``
        and the state as it was; only verified plaintext is ever returned."""
        self._check_next(index, len(ciphertext), final)
        plaintext = memoryview(out)[: len(ciphertext) - TAG_LEN]
        try:
            self._aead.decrypt_into(
                _nonce(self.header.nonce_prefix, index, final), ciphertext, self._aad, plaintext
            )
        except InvalidTag:
            raise self._failed(index, final) from None
        self._next = index + 1
        self._done = final
        return plaintext

    @staticmethod
    def _failed(index: int, final: bool) -> SegmentAuthenticationError:
        return SegmentAuthenticationError(
            f"segment {index}{' (final)' if final else ''} failed authentication"
        )

    def _check_next(self, index: int, length: int, final: bool) -> None:
        """Order and length rules; nothing is changed (see the class docstring)."""
        if self._done:
            raise TrailingDataError(
                f"segment {index} arrived after the final segment {self._next - 1}"
            )
        if index != self._next:
            what = (
                "a repeat or a replay"
                if index < self._next
                else "an earlier segment is missing or out of order"
            )
            raise SegmentOrderError(f"expected segment {self._next}, got {index} ({what})")
        if not final and index == MAX_SEGMENTS - 1:
            raise SegmentOrderError(
                f"segment {index} is not final, but a stream has at most {MAX_SEGMENTS} segments"
            )
        self._check_length(index, length, final)

    def finish(self) -> None:
        """Raise ``TruncatedStreamError`` unless the final segment has been verified."""
        if not self._done:
            raise TruncatedStreamError(
                f"the stream ended before its final segment (next expected: {self._next})"
            )

    def _check_length(self, index: int, length: int, final: bool) -> None:
        size = self.header.segment_size
        if final:
            low = TAG_LEN if index == 0 else TAG_LEN + 1
            if not low <= length <= size + TAG_LEN:
                raise SegmentLengthError(
                    f"final segment {index} has {length} bytes; it must have {low}-{size + TAG_LEN}"
                )
        elif length != size + TAG_LEN:
            raise SegmentLengthError(
                f"segment {index} has {length} bytes; a non-final segment has {size + TAG_LEN}"
            )

    def _open(self, index: int, ciphertext: bytes, final: bool) -> bytes:
        return self._aead.decrypt(
            _nonce(self.header.nonce_prefix, index, final), ciphertext, self._aad
        )

    def _authenticates_as(self, index: int, ciphertext: bytes, final: bool) -> bool:
        """Would this segment verify with this final flag? (diagnosis only; no state change)"""
        try:
            self._check_length(index, len(ciphertext), final)
            self._open(index, ciphertext, final)
        except (SegmentLengthError, InvalidTag):
            return False
        return True


def write_stream(header: Header, data_key: bytes, src: ByteReader, dst: ByteWriter) -> int:
    """Write ``header || segments`` of the plaintext in ``src``; return the bytes written."""
    encryptor = StreamEncryptor(header, data_key)
    encoded = header.encode()
    dst.write(encoded)
    written = len(encoded)
    for _, _, ciphertext in encryptor.iter_segments(src):
        dst.write(ciphertext)
        written += len(ciphertext)
    return written


def read_stream(
    src: ByteReader,
    dst: ByteWriter,
    me: str,
    holder: KeyHolder,
    *,
    transport_versions: Collection[int] | None = None,
    storage_versions: Collection[int] | None = None,
) -> int:
    """Verify and decrypt a stream file to ``dst``; return the plaintext bytes written.

    Plaintext is written segment by segment as it verifies: ``dst`` holds a complete
    transfer only if this returns. See :func:`decrypt_segments` for how the end is found.
    """
    header = read_header(src)
    data_key = open_header(
        header,
        me,
        holder,
        transport_versions=transport_versions,
        storage_versions=storage_versions,
    )
    written = 0
    for plaintext in decrypt_segments(src, StreamDecryptor(header, data_key)):
        dst.write(plaintext)
        written += len(plaintext)
        del plaintext  # not held while the next segment is read and decrypted
    return written


def decrypt_segments(
    src: ByteReader,
    decryptor: StreamDecryptor,
    *,
    count: int | None = None,
    last_is_final: bool = True,
) -> Iterator[bytes]:
    """Verify and decrypt the segments that follow in ``src``; yield each plaintext in order.

    The one reader of stored ciphertext (fetch, the receiver's re-hash, ``read_stream``).
    ``src`` is positioned after the header, at segment ``decryptor.next_index``.

    * ``count=None`` -- a whole stream file: read to EOF; the final segment is the one that
      ends at EOF, and the generator ends only after ``decryptor.finish()`` succeeded. A full
      segment that only verifies as final with bytes after it raises ``TrailingDataError``,
      a last segment that only verifies as non-final ``TruncatedStreamError``. (Bytes after a
      *short* final segment cannot be told from corruption: ``SegmentAuthenticationError``.)
    * ``count=n`` -- the next ``n`` segments of a stream still being received (a partial
      spool file); the last of them is final if ``last_is_final``. Nothing after them is
      read; fewer bytes than ``n - 1`` full segments raise ``TruncatedStreamError``.

    One segment is held at a time, plus one byte of lookahead for a whole file.
    """
    chunk_len = decryptor.header.segment_size + TAG_LEN
    if count is not None:
        yield from _decrypt_counted(src, decryptor, chunk_len, count, last_is_final)
        return
    chunk = _read_exact(src, chunk_len)
    if not chunk:
        raise TruncatedStreamError("the stream has a header but no segments")
    while True:
        index = decryptor.next_index
        lookahead = _read_exact(src, 1) if len(chunk) == chunk_len else b""
        final = not lookahead
        try:
            plaintext = decryptor.decrypt_segment(index, chunk, final)
        except SegmentAuthenticationError:
            if decryptor._authenticates_as(index, chunk, not final):
                if final:
                    raise TruncatedStreamError(
                        f"the stream ends with segment {index}, which is not its final segment"
                    ) from None
                raise TrailingDataError(f"data follows the final segment {index}") from None
            raise
        chunk = b""
        yield plaintext
        plaintext = b""
        if final:
            decryptor.finish()
            return
        chunk = lookahead + _read_exact(src, chunk_len - 1)


def _decrypt_counted(
    src: ByteReader, decryptor: StreamDecryptor, chunk_len: int, count: int, last_is_final: bool
) -> Iterator[bytes]:
    stop = decryptor.next_index + count
    while decryptor.next_index < stop:
        index = decryptor.next_index
        final = last_is_final and index == stop - 1
        chunk = _read_exact(src, chunk_len)
        if len(chunk) < chunk_len and not final:
            raise TruncatedStreamError(
                f"segment {index} is cut short: {len(chunk)} of {chunk_len} bytes are stored"
            )
        yield decryptor.decrypt_segment(index, chunk, final)


def cut_segments(chunks: Iterable[bytes], size: int) -> Iterator[tuple[int, bool, bytes]]:
    """Re-cut plaintext arriving in arbitrary ``chunks`` into ``(index, final, segment)``.

    The segmentation rule of the format: every segment but the last holds exactly ``size``
    bytes, the last 1..``size`` (or is the one empty segment of an empty stream). One segment
    of lookahead is held to learn which is last. An aligned chunk is passed on uncopied.
    """
    buffer = bytearray()
    index = 0
    pending: bytes | None = None
    for chunk in chunks:
        if not buffer and len(chunk) == size:
            if pending is not None:
                yield index, False, pending
                index += 1
            pending = chunk
            continue
        buffer += chunk
        while len(buffer) >= size:
            if pending is not None:
                yield index, False, pending
                index += 1
            pending = bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        if pending is not None:
            yield index, False, pending
            index += 1
        yield index, True, bytes(buffer)
    elif pending is not None:
        yield index, True, pending
    else:
        yield 0, True, b""


def _nonce(prefix: bytes, index: int, final: bool) -> bytes:
    return prefix + index.to_bytes(4, "big") + (b"\x01" if final else b"\x00")
