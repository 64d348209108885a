"""Signed blobs between their domain form (``signed.Signed``) and the wire message."""

from __future__ import annotations

from gateway._proto.xbgw.v1 import common_pb2
from gateway.signed import Signed


def to_blob(signed: Signed) -> common_pb2.SignedBlob:
    return common_pb2.SignedBlob(body=signed.body, signature=signed.signature, kid=signed.kid)


def from_blob(blob: common_pb2.SignedBlob) -> Signed:
    return Signed(bytes(blob.body), bytes(blob.signature), blob.kid)
