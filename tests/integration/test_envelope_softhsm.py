"""XBGW-STREAM-1 with the recipient's keys in a real SoftHSM token.

The ECDH of a partner wrap and the RFC 5649 storage wrap happen inside the HSM; the sender's
side uses only the public transport key, as a partner gateway would.
"""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from gateway.envelope import (
    Header,
    StreamContext,
    WrapKind,
    WrappedKey,
    open_header,
    read_stream,
    rewrap_for_storage,
    seal_header,
    write_stream,
)
from gateway.errors import KeyNotFoundError, KeyUnwrapError, NoUsableWrappedKeyError
from gateway.hsm import Hsm
from gateway.keys import KeyRef, Purpose
from tests.fakes import SoftwareHsm

ME = "gw-b"
SEGMENT_SIZE = 1024
TRANSPORT_V1 = KeyRef(ME, Purpose.TRANSPORT, 1)
STORAGE_V1 = KeyRef(ME, Purpose.STORAGE, 1)


def _context(transfer_id: str) -> StreamContext:
    return StreamContext(transfer_id, "gw-a", ME, hashlib.sha256(transfer_id.encode()).digest())


def _sealed(hsm: Hsm, transfer_id: str, plaintext: bytes) -> tuple[Header, bytes, bytes]:
    header, key = seal_header(
        _context(transfer_id),
        TRANSPORT_V1,
        hsm.public_key(Purpose.TRANSPORT, 1),
        SEGMENT_SIZE,
    )
    out = io.BytesIO()
    write_stream(header, key, io.BytesIO(plaintext), out)
    return header, key, out.getvalue()


def _read(stream: bytes, hsm: Hsm) -> bytes:
    out = io.BytesIO()
    read_stream(io.BytesIO(stream), out, ME, hsm)
    return out.getvalue()


def test_partner_wrap_opens_with_ecdh_in_the_hsm(hsm: Hsm) -> None:
    plaintext = os.urandom(5 * SEGMENT_SIZE + 77)
    header, key, stream = _sealed(hsm, "t-ecdh", plaintext)
    assert open_header(Header.decode(header.encode()), ME, hsm) == key
    assert _read(stream, hsm) == plaintext


def test_rewrap_to_the_hsm_storage_key_and_read_back(hsm: Hsm) -> None:
    plaintext = os.urandom(3 * SEGMENT_SIZE)
    header, key, stream = _sealed(hsm, "t-storage", plaintext)
    data_key = open_header(header, ME, hsm)
    stored = rewrap_for_storage(header, data_key, STORAGE_V1, hsm)
    assert [k.kind for k in stored.wrapped_keys] == [WrapKind.STORAGE_A256KWP]
    assert stored.core() == header.core() and stored.commitment == header.commitment
    at_rest = stored.encode() + stream[len(header.encode()) :]
    assert open_header(Header.decode(stored.encode()), ME, hsm) == key
    assert _read(at_rest, hsm) == plaintext


def test_a_transport_version_the_token_lacks_is_refused(hsm: Hsm) -> None:
    stranger = SoftwareHsm()
    header, _ = seal_header(
        _context("t-v2"),
        KeyRef(ME, Purpose.TRANSPORT, 2),
        stranger.public_key(Purpose.TRANSPORT, 1),
        SEGMENT_SIZE,
    )
    with pytest.raises(NoUsableWrappedKeyError, match="gw-b/transport/2"):
        open_header(header, ME, hsm)


def test_a_storage_version_the_token_lacks_is_refused(hsm: Hsm) -> None:
    header, key, _ = _sealed(hsm, "t-storage-v2", b"data")
    with pytest.raises(KeyNotFoundError):
        rewrap_for_storage(header, key, KeyRef(ME, Purpose.STORAGE, 2), hsm)
    stored = rewrap_for_storage(header, key, STORAGE_V1, hsm)
    entry = stored.wrapped_keys[0]
    relabelled = WrappedKey(entry.kind, KeyRef(ME, Purpose.STORAGE, 2), None, entry.wrapped)
    with pytest.raises(NoUsableWrappedKeyError, match="gw-b/storage/2"):
        open_header(stored.with_wrapped_keys([relabelled]), ME, hsm)


def test_a_wrap_for_another_key_does_not_unwrap_in_the_hsm(hsm: Hsm) -> None:
    other = SoftwareHsm()
    header, _ = seal_header(
        _context("t-wrong"), TRANSPORT_V1, other.public_key(Purpose.TRANSPORT, 1), SEGMENT_SIZE
    )
    with pytest.raises(KeyUnwrapError):
        open_header(header, ME, hsm)
    header, key, _ = _sealed(hsm, "t-wrong-storage", b"data")
    foreign = rewrap_for_storage(header, key, STORAGE_V1, other)
    with pytest.raises(KeyUnwrapError):
        open_header(foreign, ME, hsm)
