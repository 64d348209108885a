"""Two trusted issuers cannot spend or block each other's transfers (issue 13, item 5).

A passport is spent once per transfer id, and a transfer id is the passport's ``jti``. With
several trusted issuers, ids chosen freely could collide: one issuer's passport -- by accident
or on purpose (``--jti``) -- would spend the id another issuer gave, and that issuer's genuine
passport would then be refused as already used. Transfer ids are therefore unique across
issuers by construction: a ``jti`` is ``<iss>_<name>``, and every verifier refuses one whose
prefix is not the signing key's owner. In process, both sides trusting ``dpo`` and ``audit``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.errors import PassportClaimsError, XbgwError
from gateway.keys import KeyRef, Purpose
from gateway.passport import issue
from gateway.passport_claims import PassportClaims, XbgwClaims, scoped_jti
from tests.loopback import ISSUER, Loopback, make_loopback
from tests.loopback_rig import assert_delivered, assert_not_visible
from tests.unit.test_loopback_refusals import Hand, peer_of, seal

OTHER = "audit"  # the second trusted issuer
DATA = bytes(range(256)) * 2


@pytest.fixture
def lb(tmp_path: Path) -> Iterator[Loopback]:
    made = make_loopback(tmp_path, more_issuers=(OTHER,))
    try:
        yield made
    finally:
        made.close()


def trespassing(lb: Loopback, victim_id: str) -> str:
    """A passport signed by OTHER's real key whose ``jti`` is ``victim_id``, an id in ISSUER's
    space. ``PassportClaims`` refuses to build one, so the claims are altered after it did:
    the token is what a compromised or careless issuer could sign."""
    now = int(lb.now[0])
    claims = PassportClaims(
        iss=OTHER,
        jti=scoped_jti(OTHER, "cover"),
        iat=now,
        nbf=now,
        exp=now + 3600,
        aud="frankfurt",
        xbgw=XbgwClaims(
            sender="lingang",
            src="CN-SH",
            dst="EU-DE",
            classification="general",
            pi="none",
            subjects=0,
            purpose="loopback test",
            legal_basis="test",
            byte_limit=1 << 20,
        ),
    )
    object.__setattr__(claims, "jti", victim_id)  # past the constructor's check
    return issue(claims, lb.more_issuers[OTHER], KeyRef(OTHER, Purpose.SIGNING, 1))


def test_the_same_name_from_two_issuers_is_two_transfers(lb: Loopback) -> None:
    ours, theirs = os.urandom(300), os.urandom(500)
    first = lb.send("weekly", ours)
    second = lb.lingang.sender.send(
        "frankfurt", lb.passport("weekly", issuer=OTHER), iter([theirs]), len(theirs)
    )
    assert (first.transfer_id, second.transfer_id) == ("dpo_weekly", "audit_weekly")
    assert_delivered(lb, "dpo_weekly", ours, first)
    assert_delivered(lb, "audit_weekly", theirs, second)
    assert lb.fetch("dpo_weekly") == ours and lb.fetch("audit_weekly") == theirs


def test_an_issuer_cannot_spend_another_issuers_id(lb: Loopback) -> None:
    """Refused by lingang before the offer, and by frankfurt when a sender offers it anyway;
    the id stays free, and ISSUER's own passport for it is then delivered."""
    victim = scoped_jti(ISSUER, "quarterly")
    token = trespassing(lb, victim)

    with pytest.raises(PassportClaimsError) as at_sender:
        lb.lingang.sender.send("frankfurt", token, iter([DATA]), len(DATA))
    header, data_key = seal(lb, token, victim)
    with pytest.raises(PassportClaimsError) as at_receiver:
        Hand(lb, token, header, data_key, peer_of(lb)).offer()
    for caught in (at_sender.value, at_receiver.value):
        assert isinstance(caught, XbgwError) and caught.grpc_status == "INVALID_ARGUMENT"
        assert str(caught) == (
            "passport claim 'jti' must be the issuer's id, '_' and a name (audit_...), so that "
            "no issuer can take another's transfer ids; got 'dpo_quarterly'"
        )
    assert lb.lingang.ledger.outbound(victim) is None
    assert_not_visible(lb, victim)

    summary = lb.send("quarterly", DATA)
    assert summary.transfer_id == victim
    assert_delivered(lb, victim, DATA, summary)


def test_a_name_cannot_borrow_a_longer_issuer_id(lb: Loopback) -> None:
    """``dpo`` cannot name a transfer ``dpo.x_...``: the prefix is exactly ``<iss>_``, and
    gateway ids hold no underscore, so the issuer of an id is everything before its first."""
    with pytest.raises(PassportClaimsError, match="must be the issuer's id, '_' and a name"):
        lb.lingang.sender.send("frankfurt", trespassing(lb, "audit.x_1"), iter([DATA]), len(DATA))
    assert scoped_jti("dpo", "dpo_1") == "dpo_1"  # already in the space: kept
    assert scoped_jti("dpo", "dpo_") == "dpo_dpo_"  # the prefix alone names nothing
    assert scoped_jti("dpo", "audit_1") == "dpo_audit_1"
