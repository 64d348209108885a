"""``xbgw cancel``, ``xbgw inbox [ack|delete]`` and ``xbgw status``: the data lifecycle and
the paged lists, through the running daemon.

Why the lists walk pages here: the daemon answers at most ``paging.MAX_PAGE`` items a call
(one gRPC message stays small however large the inbox grows); the CLI asks for the next page
until the token comes back empty, printing as it goes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from gateway._proto.xbgw.v1 import local_pb2
from gateway.cli.local_socket import rpc_error, socket_path, stub
from gateway.wire import state_from_wire

T = TypeVar("T")
CALL_TIMEOUT = 30


def _when(at: int) -> str:
    if not at:
        return "-"
    return f"{datetime.datetime.fromtimestamp(at, datetime.UTC):%Y-%m-%d %H:%M:%SZ}"


def _call(args: argparse.Namespace, call: Callable[[object], T]) -> T:
    channel, local = stub(args)
    try:
        return call(local)
    except grpc.RpcError as exc:
        raise rpc_error(exc, socket_path(args)) from None
    finally:
        channel.close()


def inbox_pages(
    local: object, page_size: int = 0, pending: bool = False
) -> Iterator[local_pb2.InboxItem]:
    """Every inbox item, page after page."""
    token = ""
    while True:
        page = local.ListInbox(  # type: ignore[attr-defined]
            local_pb2.ListInboxRequest(
                page_size=page_size, page_token=token, unacknowledged_only=pending
            ),
            timeout=CALL_TIMEOUT,
        )
        yield from page.items
        token = page.next_page_token
        if not token:
            return


def cmd_inbox(args: argparse.Namespace) -> int:
    action = getattr(args, "inbox_verb", None)
    if action in ("ack", "delete"):
        return _inbox_change(args, action)

    def walk(local: object) -> int:
        shown = 0
        for item in inbox_pages(local, args.page_size or 0, args.pending):
            if not shown:
                print(
                    f"{'TRANSFER':<34} {'FROM':<12} {'SIZE':>14} {'CLASS':<10} "
                    f"{'COMMITTED':<20} {'FETCHED':<20} {'ACK':<3} SHA-256"
                )
            shown += 1
            ack = "yes" if item.acknowledged_at else "no"
            print(
                f"{item.transfer_id:<34} {item.sender:<12} {item.size:>14} "
                f"{item.classification:<10} {_when(item.committed_at):<20} "
                f"{_when(item.fetched_at):<20} {ack:<3} {item.plaintext_sha256[:16]}…"
            )
        return shown

    if not _call(args, walk):
        print("no unacknowledged items in the inbox" if args.pending else "inbox is empty")
    return 0


def _inbox_change(args: argparse.Namespace, action: str) -> int:
    request = local_pb2.InboxItemsRequest(transfer_ids=args.transfer_ids)
    if action == "ack":
        done = _call(args, lambda local: local.AcknowledgeInbox(request, timeout=CALL_TIMEOUT))  # type: ignore[attr-defined]
        verb, before = "acknowledged", "already acknowledged"
    else:
        done = _call(args, lambda local: local.DeleteInbox(request, timeout=CALL_TIMEOUT))  # type: ignore[attr-defined]
        verb, before = "deleted", "already deleted"
    for transfer_id in done.changed:
        print(f"{verb:<20} {transfer_id}")
    for transfer_id in done.unchanged:
        print(f"{before:<20} {transfer_id}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    request = local_pb2.CancelRequest(transfer_id=args.transfer_id, reason=args.reason or "")
    done = _call(args, lambda local: local.Cancel(request, timeout=CALL_TIMEOUT * 2))  # type: ignore[attr-defined]
    state = state_from_wire(done.state)
    print(f"{state.value if state else '?':<10} {done.transfer_id} ({done.direction})")
    if done.direction == "out":
        if done.partner_told:
            print(f"  partner  told{': ' + done.detail if done.detail else ''}")
        else:
            print(f"  partner  not told: {done.detail}")
    elif done.detail:
        print(f"  note     {done.detail}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """``xbgw status [--all] [--json]``: what an operator acts on, then recent transfers.

    ``--json`` prints one object (times in seconds since the epoch, 0 = never)::

        {"gateway": {"id", "jurisdiction", "version", "started_at", "uptime_seconds",
                     "ready": bool},
         "listeners": {"partner": "host:port", "local": "/socket/path", "metrics": "host:port"},
         "partners": [{"id", "endpoint", "state": "up"|"down"|"unknown", "last_contact",
                       "last_contact_seconds_ago": int|null, "checked_at", "detail"}],
         "keys": {"transport"|"signing"|"storage": {"active": int, "in_service": [int]}},
         "in_flight": [{"transfer_id", "direction": "in"|"out", "partner", "bytes_done",
                        "bytes_total" (0: not known yet), "started_at"}],
         "queued_sends": int,
         "transfers": [{"transfer_id", "direction", "partner", "state", "bytes"}],
         "more": bool}  (true: more transfers than shown; --all shows every one)

    ``metrics`` is absent when the daemon has no metrics endpoint.
    """

    def walk(local: object) -> dict[str, Any]:
        token = ""
        pages: list[local_pb2.StatusResponse] = []
        while True:
            page = local.Status(  # type: ignore[attr-defined]
                local_pb2.StatusRequest(page_size=args.page_size or 0, page_token=token),
                timeout=CALL_TIMEOUT,
            )
            pages.append(page)
            token = page.next_page_token
            if not token or not args.all:
                break
        return status_document(pages, bool(token), time.time())

    document = _call(args, walk)
    if getattr(args, "json", False):
        print(json.dumps(document, indent=2))
    else:
        for line in status_lines(document):
            print(line)
    return 0


def status_document(
    pages: list[local_pb2.StatusResponse], more: bool, now: float
) -> dict[str, Any]:
    """The ``--json`` object (see :func:`cmd_status`) from the pages of ``Status``."""
    first = pages[0]
    partners = []
    for reach in first.partner_reach:
        ago = int(now - reach.last_contact) if reach.last_contact else None
        partners.append(
            {
                "id": reach.partner,
                "endpoint": reach.endpoint,
                "state": reach.state,
                "last_contact": reach.last_contact,
                "last_contact_seconds_ago": ago,
                "checked_at": reach.checked_at,
                "detail": reach.detail,
            }
        )
    transfers = []
    for page in pages:
        for t in page.transfers:
            known = state_from_wire(t.state)
            transfers.append(
                {
                    "transfer_id": t.transfer_id,
                    "direction": t.direction,
                    "partner": t.partner,
                    "state": known.value if known is not None else "?",
                    "bytes": t.bytes,
                }
            )
    return {
        "gateway": {
            "id": first.gateway_id,
            "jurisdiction": first.jurisdiction,
            "version": first.version,
            "started_at": first.started_at,
            "uptime_seconds": max(0, int(now) - first.started_at),
            "ready": first.ready,
        },
        "listeners": {listener.name: listener.address for listener in first.listeners},
        "partners": partners,
        "keys": {
            k.purpose: {"active": k.active, "in_service": list(k.in_service)} for k in first.keys
        },
        "in_flight": [
            {
                "transfer_id": f.transfer_id,
                "direction": f.direction,
                "partner": f.partner,
                "bytes_done": f.bytes_done,
                "bytes_total": f.bytes_total,
                "started_at": f.started_at,
            }
            for f in first.in_flight
        ],
        "queued_sends": first.queued_sends,
        "transfers": transfers,
        "more": more,
    }


def _ago(seconds: int | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    if seconds < 172800:
        return f"{seconds // 3600}h ago"
    return f"{seconds // 86400}d ago"


def status_lines(doc: dict[str, Any]) -> list[str]:
    """The human form of :func:`status_document`."""
    gw = doc["gateway"]
    lines = [
        f"gateway   {gw['id']} ({gw['jurisdiction']}), xbgw {gw['version']}, "
        f"up {_span(gw['uptime_seconds'])}, {'ready' if gw['ready'] else 'NOT READY'}",
    ]
    listeners = doc["listeners"]
    if listeners:
        lines.append("listening " + ", ".join(f"{n} {a}" for n, a in listeners.items()))
    if not doc["partners"]:
        lines.append("partners  none")
    for i, p in enumerate(doc["partners"]):
        head = "partners  " if i == 0 else "          "
        why = f" ({p['detail']})" if p["state"] != "up" and p["detail"] else ""
        lines.append(
            f"{head}{p['id']:<12} {p['endpoint']:<22} {p['state']:<7} "
            f"last contact {_ago(p['last_contact_seconds_ago'])}{why}"
        )
    if doc["keys"]:
        keys = []
        for purpose, k in doc["keys"].items():
            older = [v for v in k["in_service"] if v != k["active"]]
            also = f" (also {', '.join(map(str, older))})" if older else ""
            keys.append(f"{purpose} v{k['active']}{also}")
        lines.append("keys      " + ", ".join(keys))
    if doc["queued_sends"]:
        lines.append(f"queued    {doc['queued_sends']} local sends wait for a slot")
    if not doc["in_flight"]:
        lines.append("in flight none")
    for i, f in enumerate(doc["in_flight"]):
        head = "in flight " if i == 0 else "          "
        arrow = "<-" if f["direction"] == "in" else "->"
        total = f"/{f['bytes_total']}" if f["bytes_total"] else ""
        lines.append(
            f"{head}{f['transfer_id'] or '(not accepted yet)':<34} {arrow} {f['partner']:<12} "
            f"{f['bytes_done']}{total} bytes"
        )
    if doc["transfers"]:
        lines.append("recent")
    for t in doc["transfers"]:
        arrow = "<-" if t["direction"] == "in" else "->"
        lines.append(
            f"  {t['transfer_id']:<34} {arrow} {t['partner']:<12} {t['state']:<10} "
            f"{t['bytes']} bytes"
        )
    if doc["more"]:
        lines.append("  ... more: xbgw status --all")
    return lines


def _span(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"
