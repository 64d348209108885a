"""Errors to gRPC statuses, once, for both servicers (partner and local).

Every refusal leaves a servicer the same way: one log line with the reason and the fields
that locate it (rpc, partner, transfer id, status), and the error's own status (see
``errors.XbgwError.grpc_status``) with its message -- which a person can act on and which
never holds a secret.
"""

from __future__ import annotations

import logging

import grpc

from gateway.errors import XbgwError, grpc_status_name


def outcome(error: BaseException) -> str:
    """``refused`` when a check said no; ``failed`` when something broke or was unreachable."""
    if isinstance(error, XbgwError) and error.grpc_status not in ("UNAVAILABLE", "INTERNAL"):
        return "refused"
    return "failed"


def abort_with(
    context: grpc.ServicerContext,
    error: XbgwError,
    log: logging.Logger,
    what: str,
    **fields: str,
) -> None:
    """Log ``what: error`` with ``fields`` and end the RPC with the error's status."""
    status = grpc_status_name(error)
    log.warning(
        "%s: %s",
        what,
        error,
        extra={
            **fields,
            "outcome": outcome(error),
            "status": status,
            "reason": type(error).__name__,
        },
    )
    context.abort(getattr(grpc.StatusCode, status), str(error))
