"""One partner cannot take every request slot of the partner listener."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest

import gateway.partner
from gateway.errors import PartnerBusyError
from gateway.metrics import Metrics
from gateway.partner import PartnerServicer


def _servicer(cap: int) -> PartnerServicer:
    config: Any = SimpleNamespace(limits=SimpleNamespace(max_concurrent_transfers=cap))
    return PartnerServicer(lambda: config, cast(Any, None), Metrics(), lambda: True)


def test_a_partner_at_its_limit_is_refused_and_others_are_not() -> None:
    servicer = _servicer(2)
    with servicer._per_partner("lingang"), servicer._per_partner("lingang"):
        third = servicer._per_partner("lingang")
        with pytest.raises(PartnerBusyError, match="lingang already has 2 requests in flight"):
            third.__enter__()
        with servicer._per_partner("paris"):
            pass
    with servicer._per_partner("lingang"):  # the slots came back
        pass


def test_the_limit_maps_to_resource_exhausted() -> None:
    assert PartnerBusyError("x").grpc_status == "RESOURCE_EXHAUSTED"


@pytest.mark.parametrize("rpc", ["Finish", "GetTransfer", "Offer"])
def test_short_calls_are_not_refused_while_uploads_hold_every_slot(
    rpc: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Finish comes after the data crossed: it never competes with uploads for slots."""
    servicer = _servicer(1)
    monkeypatch.setattr(gateway.partner, "peer_partner", lambda _c, _ctx: SimpleNamespace(id="a"))
    context: Any = None
    with servicer._per_partner("a"), servicer._per_partner("b"):  # 2 = upload_slots(1)
        with pytest.raises(PartnerBusyError, match="2 requests in flight, its limit for uploads"):
            servicer._per_partner("c").__enter__()
        assert servicer._run(context, rpc, lambda _peer: "answered") == "answered"
