"""``xbgw cancel``, ``xbgw inbox [ack|delete]`` and ``xbgw status``: the data lifecycle and
the paged lists, through the running daemon.

Why the lists walk pages here: the daemon answers at most ``paging.MAX_PAGE`` items a call
(one gRPC message stays small however large the inbox grows); the CLI asks for the next page
until the token comes back empty, printing as it goes.
"""

from __future__ import annotations

import argparse
import datetime
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

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
    def walk(local: object) -> None:
        token, first = "", True
        while True:
            status = local.Status(  # type: ignore[attr-defined]
                local_pb2.StatusRequest(page_size=args.page_size or 0, page_token=token),
                timeout=CALL_TIMEOUT,
            )
            if first:
                up = int(time.time()) - status.started_at
                print(
                    f"gateway   {status.gateway_id} ({status.jurisdiction}), "
                    f"xbgw {status.version}, up {up}s"
                )
                print(f"partners  {', '.join(status.partners) or 'none'}")
                if status.queued_sends:
                    print(f"queued    {status.queued_sends} local sends wait for a slot")
                first = False
            for t in status.transfers:
                known = state_from_wire(t.state)
                state = known.value if known is not None else "?"
                arrow = "<-" if t.direction == "in" else "->"
                print(f"  {t.transfer_id:<34} {arrow} {t.partner:<12} {state:<10} {t.bytes} bytes")
            token = status.next_page_token
            if not token or not args.all:
                if token:
                    print("  ... more: xbgw status --all")
                return

    _call(args, walk)
    return 0
