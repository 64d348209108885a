"""Receiver recovery after a crash between the spool rename and the ledger commit."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from gateway import envelope
from gateway.envelope import StreamContext, StreamEncryptor
from gateway.keys import KeyRef, Purpose
from gateway.ledger import Inbound
from gateway.receiver import Receiver
from gateway.spool import Spool
from tests.fakes import SoftwareHsm

SEG = 64
HOLDER = SoftwareHsm()


def _stream(plaintext: bytes) -> tuple[envelope.Header, bytes, bytes]:
    context = StreamContext("t-1", "lingang", "frankfurt", hashlib.sha256(b"p").digest())
    header, data_key = envelope.seal_header(
        context,
        KeyRef("frankfurt", Purpose.TRANSPORT, 1),
        HOLDER.public_key(Purpose.TRANSPORT, 1),
        SEG,
    )
    encryptor = StreamEncryptor(header, data_key)
    pieces = [plaintext[i : i + SEG] for i in range(0, len(plaintext), SEG)]
    body = b"".join(
        encryptor.encrypt_segment(i, piece, i == len(pieces) - 1) for i, piece in enumerate(pieces)
    )
    return header, data_key, body


def _row(header: envelope.Header, segments: int, size: int) -> Inbound:
    return Inbound(
        transfer_id="t-1", sender="lingang", passport="x.y.z", passport_digest=b"\0" * 32,
        offered_header_digest=b"\0" * 32, stored_header=header.encode(), byte_limit=10**6,
        classification="general", source_jurisdiction="CN-SH", state="receiving",
        next_segment=segments, received_bytes=size, final_received=True, plaintext_sha256=None,
        created_at=0, committed_at=None, refusal=None, receipt=None,
    )  # fmt: skip


def _bare_receiver(spool: Spool) -> Receiver:
    # _rehash needs only the spool; the rest of a Receiver needs a daemon's worth of parts.
    receiver = Receiver.__new__(Receiver)
    receiver._spool = spool
    return receiver


def test_rehash_reads_the_committed_file_when_the_partial_is_gone(tmp_path: Path) -> None:
    plaintext = os.urandom(5 * SEG + 7)
    header, data_key, body = _stream(plaintext)
    spool = Spool(tmp_path)
    spool.partial_path("t-1").write_bytes(header.encode() + body)
    spool.commit("t-1")  # the rename happened; the crash came before the ledger commit
    assert not spool.partial_path("t-1").exists()
    row = _row(header, 6, len(plaintext))
    digest = _bare_receiver(spool)._rehash(row, header, data_key).digest()
    assert digest == hashlib.sha256(plaintext).digest()


def test_rehash_prefers_the_partial_while_it_exists(tmp_path: Path) -> None:
    plaintext = os.urandom(3 * SEG)
    header, data_key, body = _stream(plaintext)
    spool = Spool(tmp_path)
    spool.partial_path("t-1").write_bytes(header.encode() + body)
    spool.committed_path("t-1").write_bytes(b"stale garbage")
    row = _row(header, 3, len(plaintext))
    digest = _bare_receiver(spool)._rehash(row, header, data_key).digest()
    assert digest == hashlib.sha256(plaintext).digest()
