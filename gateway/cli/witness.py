"""``xbgw witness status|run|acknowledge``: witnessing of the partners' audit logs, through
the running daemon (see :mod:`gateway.audit.witness`).

Imported only when one of these verbs runs (grpc is not cheap). ``run`` exits 1 while a
partner is under alarm, so that a cron job or a monitor notices; the others exit 0 when
they did what was asked.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import grpc

from gateway._proto.xbgw.v1 import local_pb2, local_pb2_grpc
from gateway.cli.common import EXIT_FAILURE
from gateway.cli.local_socket import rpc_error, socket_path, stub

#: A round asks every partner, each call with its own 30 s timeout.
ROUND_TIMEOUT = 300

Call = Callable[[local_pb2_grpc.LocalGatewayStub], local_pb2.WitnessStatusResponse]


def cmd_witness_status(args: argparse.Namespace) -> int:
    report = _call(args, lambda s: s.WitnessStatus(local_pb2.WitnessStatusRequest(), timeout=30))
    _print(report, args.json)
    return 0


def cmd_witness_run(args: argparse.Namespace) -> int:
    request = local_pb2.RunWitnessRequest(partners=args.partners)
    report = _call(args, lambda s: s.RunWitness(request, timeout=ROUND_TIMEOUT))
    _print(report, args.json)
    return EXIT_FAILURE if any(p.HasField("alarm") for p in report.partners) else 0


def cmd_witness_acknowledge(args: argparse.Namespace) -> int:
    request = local_pb2.AcknowledgeWitnessRequest(partner=args.partner)
    report = _call(args, lambda s: s.AcknowledgeWitness(request, timeout=ROUND_TIMEOUT))
    if not args.json:
        print(f"alarm of {args.partner} acknowledged: its offers are accepted again")
    _print(report, args.json)
    return 0


def _call(args: argparse.Namespace, call: Call) -> local_pb2.WitnessStatusResponse:
    channel, local = stub(args)
    try:
        return call(local)
    except grpc.RpcError as exc:
        raise rpc_error(exc, socket_path(args)) from None
    finally:
        channel.close()


def _when(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)) if epoch else "-"


def _print(report: local_pb2.WitnessStatusResponse, as_json: bool) -> None:
    if as_json:
        print(json.dumps(_document(report), indent=2))
        return
    print(f"witness of {report.gateway_id}")
    print("partners:" if report.partners else "partners: none")
    for p in report.partners:
        held = f"size {p.size}, root {p.root[:16]}, seen {_when(p.seen_at)}" if p.seen_at else ""
        line = f"  {p.partner:<12} {held or 'no checkpoint yet'}"
        if p.outcome:
            line += f"  [{p.outcome}{': ' + p.detail if p.detail else ''}]"
        print(line)
        if p.HasField("alarm"):
            print(
                f"  {'':<12} ALARM since {_when(p.alarm.raised_at)}: {p.alarm.reason}; its "
                f"offers are refused until `xbgw witness acknowledge {p.partner}`"
            )
    if report.cosignatures:
        print(f"log of {report.gateway_id} witnessed by:")
        for c in report.cosignatures:
            print(f"  {c.witness:<12} size {c.size}, cosigned {_when(c.at)}")
    else:
        print(f"log of {report.gateway_id} witnessed by: nobody yet")


def _document(report: local_pb2.WitnessStatusResponse) -> dict[str, object]:
    return {
        "gateway": report.gateway_id,
        "partners": [
            {
                "partner": p.partner,
                "size": p.size if p.seen_at else None,
                "root": p.root or None,
                "seen_at": p.seen_at or None,
                "outcome": p.outcome or None,
                "detail": p.detail or None,
                "alarm": {
                    "raised_at": p.alarm.raised_at,
                    "reason": p.alarm.reason,
                    "size": p.alarm.size,
                }
                if p.HasField("alarm")
                else None,
            }
            for p in report.partners
        ],
        "cosignatures": [
            {"witness": c.witness, "size": c.size, "at": c.at} for c in report.cosignatures
        ],
        "cosigned_checkpoint": report.cosigned_checkpoint or None,
    }
