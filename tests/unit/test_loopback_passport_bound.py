"""Issue 13, items 3 (sender side) and 4, in process: a transfer is held within its passport
by the sender too, and data is bound to the data set its passport names before it crosses.

* Every partner call of a transfer (offer, each upload attempt, manifest) is made only before
  ``exp`` + ``limits.passport_leeway_seconds``; a wait for an unreachable partner never sleeps
  past it, and the send stops with the receiver's words.
* A declared SHA-256 that is not the passport's ``sub`` is refused before the offer (nothing
  reaches the partner, the passport stays usable); a declared digest binds the stream (the
  final segment of other data never leaves).
* A rule table may require a digest for a classification (the fact ``has_digest``).

The real sender and receiver of ``tests.loopback``; one movable clock for both the passport
time and the backoff's sleeps.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.compliance import load_tables
from gateway.config import ComplianceConfig, PartnerConfig
from gateway.errors import (
    DatasetMismatchError,
    PassportExpiredError,
    PolicyDeniedError,
    UsageError,
)
from gateway.sender import ReceiptSummary, Sender
from gateway.transfer import SegmentIn, TransferState, UploadResult, unreachable
from tests.loopback import SEGMENT, Loopback, make_loopback

TTL = 60  # seconds of passport validity in these tests
LEEWAY = 60  # Limits' default passport_leeway_seconds


class SharedClock:
    """The backoff sleeps on the same clock the passport is judged by: time passes only when
    the sender sleeps (or a test moves it)."""

    def __init__(self, now: list[float]) -> None:
        self.now = now
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now[0]

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now[0] += seconds


def _with_timer(lb: Loopback) -> SharedClock:
    timer = SharedClock(lb.now)
    side = lb.lingang
    side.sender = Sender(
        side.config, side.keys, side.ring, side.ledger, lb.link, lambda: lb.now[0], timer=timer
    )
    return timer


def _send(
    lb: Loopback,
    token: str,
    data: bytes,
    *,
    declared: bytes | None = None,
    wait: float | None = None,
) -> ReceiptSummary:
    chunks = iter([data[i : i + 50] for i in range(0, len(data), 50)])
    sender = lb.lingang.sender
    if declared is None:  # as a caller that declares nothing calls it
        return sender.send("frankfurt", token, chunks, len(data), wait_seconds=wait)
    return sender.send(
        "frankfurt", token, chunks, len(data), wait_seconds=wait, plaintext_sha256=declared
    )


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _uploads(lb: Loopback, monkeypatch: pytest.MonkeyPatch) -> list[SegmentIn]:
    """Every segment that reaches the link."""
    seen: list[SegmentIn] = []
    original = lb.link.upload

    def upload(partner: PartnerConfig, segments: Iterator[SegmentIn]) -> UploadResult:
        def recorded() -> Iterator[SegmentIn]:
            for segment in segments:
                seen.append(segment)
                yield segment

        return original(partner, recorded())

    monkeypatch.setattr(lb.link, "upload", upload)
    return seen


# --- item 3: the sender holds a transfer within its passport ---------------------------------


def _expired_words(error: BaseException, jti: str, doing: str) -> None:
    text = str(error)
    assert f"passport {jti} expired at " in text
    assert f"the {doing} was not made" in text
    assert text.endswith("send the data again under a new passport")


@pytest.mark.parametrize("call", ["offer", "upload", "finish"])
def test_a_partner_away_past_the_passport_is_not_waited_for_past_it(
    lb: Loopback, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    """``--wait`` an hour, passport two minutes (with leeway) away: the send gives up at the
    passport's end with the receiver's words, not at the end of the wait, and makes no call
    after it."""
    timer = _with_timer(lb)
    token = lb.passport(f"dpo_away-{call}", ttl=TTL)
    deadline = lb.now[0] + TTL + LEEWAY
    attempts: list[float] = []

    def away(*_args: Any) -> Any:
        attempts.append(lb.now[0])
        raise unreachable("frankfurt", call, "connection refused")

    monkeypatch.setattr(lb.link, call, away)
    with pytest.raises(PassportExpiredError) as caught:
        _send(lb, token, b"x" * 500, wait=3600)
    doing = {"offer": "offer", "upload": "offer", "finish": "manifest"}[call]
    _expired_words(caught.value, f"dpo_away-{call}", doing)
    assert "while waiting for the partner (partner frankfurt is unreachable" in str(caught.value)
    assert len(attempts) > 3  # it did wait and retry meanwhile
    assert max(attempts) < deadline  # every call within the passport
    assert lb.now[0] == pytest.approx(deadline)  # and no sleep past it
    assert sum(timer.slept) == pytest.approx(TTL + LEEWAY)


def test_no_manifest_is_sent_once_the_passport_has_ended(
    lb: Loopback, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upload ran into the end of the passport: the manifest is not sent (it could only
    be refused, or with an older receiver commit past the passport)."""
    token = lb.passport("dpo_late-manifest", ttl=TTL)
    original = lb.link.upload

    def slow(partner: PartnerConfig, segments: Iterator[SegmentIn]) -> UploadResult:
        result = original(partner, segments)
        lb.now[0] += TTL + LEEWAY  # the stream took that long
        return result

    monkeypatch.setattr(lb.link, "upload", slow)
    with pytest.raises(PassportExpiredError) as caught:
        _send(lb, token, b"y" * 500)
    _expired_words(caught.value, "dpo_late-manifest", "manifest")
    assert "finish" not in lb.link.calls
    held = lb.frankfurt.ledger.inbound("dpo_late-manifest")
    assert held is not None and held.state is not TransferState.COMMITTED  # never committed


def test_a_new_upload_attempt_is_not_made_after_the_passport(
    lb: Loopback, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream broke at the passport's end: the sender offers again only to learn it may
    not, and uploads nothing more."""
    _with_timer(lb)
    token = lb.passport("dpo_late-upload", ttl=TTL)
    original = lb.link.upload
    attempts: list[int] = []

    def broken(partner: PartnerConfig, segments: Iterator[SegmentIn]) -> UploadResult:
        attempts.append(1)
        if len(attempts) == 1:
            next(segments)
            lb.now[0] += TTL + LEEWAY
            raise unreachable("frankfurt", "upload", "connection reset")
        return original(partner, segments)

    monkeypatch.setattr(lb.link, "upload", broken)
    with pytest.raises(PassportExpiredError):
        _send(lb, token, b"z" * 500, wait=3600)
    assert attempts == [1]
    assert "finish" not in lb.link.calls


def test_a_send_within_the_passport_is_unchanged(lb: Loopback) -> None:
    data = b"w" * 300
    summary = _send(lb, lb.passport("dpo_in-time", ttl=TTL), data)
    assert summary.plaintext_sha256 == _sha(data)


# --- item 4: data bound before it crosses ----------------------------------------------------


def test_the_wrong_file_is_refused_before_the_offer_and_the_passport_stays_usable(
    lb: Loopback, monkeypatch: pytest.MonkeyPatch
) -> None:
    right, wrong = b"the data set named" * 40, b"some other file...." * 40
    token = lb.passport("dpo_named", sub=_sha(right).hex())
    seen = _uploads(lb, monkeypatch)
    with pytest.raises(DatasetMismatchError) as caught:
        _send(lb, token, wrong, declared=_sha(wrong))
    text = str(caught.value)
    assert "the data is not the data set passport dpo_named names" in text
    assert f"sub {_sha(right).hex()}, this file {_sha(wrong).hex()}" in text
    assert text.endswith("nothing was sent, the passport is still usable")
    assert caught.value.grpc_status == "INVALID_ARGUMENT"
    assert lb.link.calls == [] and seen == []  # not even the partner's key set was asked for
    assert lb.lingang.ledger.outbound("dpo_named") is None
    assert lb.frankfurt.ledger.inbound("dpo_named") is None
    summary = _send(lb, token, right, declared=_sha(right))  # the same passport, now right
    assert summary.plaintext_sha256 == _sha(right)


def test_a_declared_digest_binds_the_stream_the_final_segment_never_leaves(
    lb: Loopback, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file changed between its hashing and its sending (same size, other bytes): no
    final segment leaves, nothing commits."""
    hashed, streamed = b"a" * (SEGMENT * 5), b"a" * (SEGMENT * 4) + b"b" * SEGMENT
    token = lb.passport("dpo_changed")
    seen = _uploads(lb, monkeypatch)
    with pytest.raises(DatasetMismatchError) as caught:
        _send(lb, token, streamed, declared=_sha(hashed))
    assert "does not hash to the SHA-256 declared for it" in str(caught.value)
    assert "the final segment was not sent" in str(caught.value)
    assert not any(segment.final for segment in seen)
    assert "finish" not in lb.link.calls


def test_a_declared_digest_of_the_right_data_delivers_without_sub(lb: Loopback) -> None:
    data = b"q" * 333
    summary = _send(lb, lb.passport("dpo_declared-only"), data, declared=_sha(data))
    assert summary.plaintext_sha256 == _sha(data)


def test_a_declared_digest_must_be_a_sha256(lb: Loopback) -> None:
    with pytest.raises(UsageError, match="must be 32 bytes"):
        _send(lb, lb.passport("dpo_short-digest"), b"d" * 10, declared=b"\x01" * 16)
    assert lb.link.calls == []


def test_without_a_declared_digest_sub_is_still_checked_at_the_manifest(lb: Loopback) -> None:
    """A program streaming data it cannot hash first: today's check, after the upload."""
    right, wrong = b"r" * 200, b"s" * 200
    with pytest.raises(Exception, match="not the data set passport"):
        _send(lb, lb.passport("dpo_late-check", sub=_sha(right).hex()), wrong)
    assert "finish" not in lb.link.calls


# --- item 4: a table may require a digest ----------------------------------------------------

DIGEST_TABLE = """\
table: xbgw-rules
version: 1
name: digest-for-important
description: important data moves only under a passport naming its data set
rules:
  - id: important-needs-digest
    article: "house rule: important data is bound to its data set"
    when: {all: [{fact: cn_class, is: important}, {fact: has_digest, is: false}]}
    outcome: refuse
    message: "{cn_class} data needs a passport naming its data set (sub)"
"""


def test_a_table_can_require_a_digest_for_a_classification(tmp_path: Path) -> None:
    table = tmp_path / "digest.yaml"
    table.write_text(DIGEST_TABLE, encoding="utf-8")
    rules = ComplianceConfig(tables=(str(table),), rules=load_tables([table]))
    # frankfurt only records its own rules' view of important data (it wants a CAC assessment)
    recording = ComplianceConfig(ingress="record")
    lb = make_loopback(tmp_path / "rig", compliance={"lingang": rules, "frankfurt": recording})
    try:
        data = b"i" * 200
        important = {"classification": "important"}
        with pytest.raises(PolicyDeniedError, match="needs a passport naming its data set"):
            lb.send("dpo_no-sub", data, terms=important)
        assert lb.link.calls == []
        assert lb.send("dpo_with-sub", data, terms=important, sub=_sha(data).hex())
        assert lb.send("dpo_general", data)  # other classifications are not touched
    finally:
        lb.close()


def test_the_receiver_judges_has_digest_as_the_sender_did(tmp_path: Path) -> None:
    """Ingress sees the same fact: frankfurt's table requires a digest for important data,
    lingang's does not (its rule is about core data), and the offer is refused there."""
    receiving = tmp_path / "digest.yaml"
    receiving.write_text(DIGEST_TABLE, encoding="utf-8")
    sending = tmp_path / "digest-core.yaml"
    sending.write_text(DIGEST_TABLE.replace("is: important}", "is: core}"), encoding="utf-8")
    lb = make_loopback(
        tmp_path / "rig",
        compliance={
            "lingang": ComplianceConfig(tables=(str(sending),), rules=load_tables([sending])),
            "frankfurt": ComplianceConfig(tables=(str(receiving),), rules=load_tables([receiving])),
        },
    )
    try:
        data = b"i" * 200
        important = {"classification": "important"}
        with pytest.raises(Exception, match="needs a passport naming its data set"):
            lb.send("dpo_ingress-no-sub", data, terms=important)
        assert lb.send("dpo_ingress-with-sub", data, terms=important, sub=_sha(data).hex())
    finally:
        lb.close()
