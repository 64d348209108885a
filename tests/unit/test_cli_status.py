"""``xbgw status``: the JSON document and the human lines from the daemon's Status pages."""

from __future__ import annotations

import json

from gateway._proto.xbgw.v1 import common_pb2, local_pb2
from gateway.cli.transfers import status_document, status_lines

NOW = 1_800_000_000.0


def _pages() -> list[local_pb2.StatusResponse]:
    first = local_pb2.StatusResponse(
        gateway_id="lingang",
        jurisdiction="CN-SH",
        version="1.2.3",
        started_at=int(NOW) - 3725,
        partners=["frankfurt", "paris"],
        ready=True,
        listeners=[
            local_pb2.Listener(name="partner", address="0.0.0.0:7443"),
            local_pb2.Listener(name="local", address="/run/xbgw/local.sock"),
            local_pb2.Listener(name="metrics", address="127.0.0.1:9464"),
        ],
        partner_reach=[
            local_pb2.PartnerReach(
                partner="frankfurt",
                endpoint="fra.example:7443",
                state="up",
                last_contact=int(NOW) - 12,
                checked_at=int(NOW) - 12,
            ),
            local_pb2.PartnerReach(
                partner="paris",
                endpoint="par.example:7443",
                state="down",
                checked_at=int(NOW) - 3,
                detail="unavailable: connection refused",
            ),
        ],
        keys=[
            local_pb2.KeyInUse(purpose="transport", active=2, in_service=[1, 2]),
            local_pb2.KeyInUse(purpose="signing", active=1, in_service=[1]),
        ],
        in_flight=[
            local_pb2.TransferInFlight(
                transfer_id="dpo_t-9",
                direction="out",
                partner="frankfurt",
                bytes_done=1 << 20,
                bytes_total=4 << 20,
                started_at=int(NOW) - 5,
            ),
            local_pb2.TransferInFlight(
                transfer_id="dpo_t-3", direction="in", partner="paris", bytes_done=512
            ),
        ],
        transfers=[
            local_pb2.TransferSummary(
                transfer_id="dpo_t-1",
                direction="out",
                partner="frankfurt",
                state=common_pb2.TRANSFER_STATE_DELIVERED,
                bytes=10,
            )
        ],
        next_page_token="more",
    )
    return [first]


def test_the_json_document() -> None:
    doc = status_document(_pages(), True, NOW)
    json.dumps(doc)  # serialisable as it is
    assert doc["gateway"] == {
        "id": "lingang",
        "jurisdiction": "CN-SH",
        "version": "1.2.3",
        "started_at": int(NOW) - 3725,
        "uptime_seconds": 3725,
        "ready": True,
    }
    assert doc["listeners"] == {
        "partner": "0.0.0.0:7443",
        "local": "/run/xbgw/local.sock",
        "metrics": "127.0.0.1:9464",
    }
    assert doc["partners"][0]["last_contact_seconds_ago"] == 12
    assert doc["partners"][1]["last_contact_seconds_ago"] is None
    assert doc["partners"][1]["state"] == "down"
    assert doc["keys"] == {
        "transport": {"active": 2, "in_service": [1, 2]},
        "signing": {"active": 1, "in_service": [1]},
    }
    assert [f["transfer_id"] for f in doc["in_flight"]] == ["dpo_t-9", "dpo_t-3"]
    assert doc["transfers"] == [
        {
            "transfer_id": "dpo_t-1",
            "direction": "out",
            "partner": "frankfurt",
            "state": "delivered",
            "bytes": 10,
        }
    ]
    assert doc["more"] is True


def test_the_human_lines() -> None:
    lines = status_lines(status_document(_pages(), True, NOW))
    text = "\n".join(lines)
    assert lines[0] == "gateway   lingang (CN-SH), xbgw 1.2.3, up 62m, ready"
    assert (
        "listening partner 0.0.0.0:7443, local /run/xbgw/local.sock, metrics 127.0.0.1:9464" in text
    )
    assert "frankfurt    fra.example:7443       up      last contact 12s ago" in text
    assert "paris        par.example:7443       down    last contact never " in text
    assert "(unavailable: connection refused)" in text
    assert "keys      transport v2 (also 1), signing v1" in text
    assert "dpo_t-9" in text and "1048576/4194304 bytes" in text
    assert "dpo_t-3" in text and " 512 bytes" in text
    assert lines[-1] == "  ... more: xbgw status --all"


def test_not_ready_and_nothing_moving() -> None:
    page = local_pb2.StatusResponse(gateway_id="x", jurisdiction="EU-DE", started_at=int(NOW))
    lines = status_lines(status_document([page], False, NOW))
    assert lines[0].endswith("up 0s, NOT READY")
    assert "partners  none" in lines
    assert "in flight none" in lines
