"""The evidence a sender keeps of one delivered transfer, and exports as a file that anyone
can check offline: ``xbgw receipt export ID -o FILE`` / ``xbgw receipt verify FILE``.

Format ``xbgw-receipt/1`` (JSON, UTF-8)::

    {
      "format": "xbgw-receipt/1",
      "transfer_id": "...", "sender": "lingang", "receiver": "frankfurt",
      "manifest": {"body": B64, "signature": B64, "kid": "lingang/signing/2"},
      "receipt":  {"body": B64, "signature": B64, "kid": "frankfurt/signing/1"},
      "proof": {                      -- null if no checkpoint covered the commit in time
        "record": B64,                -- the receiver's canonical transfer.committed record
        "leaf": 17,                   -- its index in the receiver's audit log
        "checkpoint": "frankfurt\\n40\\n...\\n\\n\\u2014 frankfurt ...\\n",  -- C2SP signed note
        "inclusion": [HEX, ...]       -- RFC 9162 inclusion proof, bottom up
      }
    }

``body`` are the exact signed bytes (protobuf ``Manifest`` / ``ReceiptBody``); signatures
are raw ECDSA P-256 ``r || s`` over SHA-256(body) by the key named in ``kid``. The receipt
and the checkpoint verify under the receiver's signing public key; the manifest under the
sender's. The proof is checked as :mod:`gateway.audit.proof` says.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from gateway.errors import UsageError
from gateway.signed import Signed
from gateway.transfer import CommitProof

FORMAT = "xbgw-receipt/1"
MAX_EVIDENCE_BYTES = 1 << 20


@dataclass(frozen=True)
class Evidence:
    transfer_id: str
    sender: str
    receiver: str
    manifest: Signed
    receipt: Signed
    proof: CommitProof | None

    def to_json(self) -> str:
        proof = None
        if self.proof is not None:
            proof = {
                "record": _b64(self.proof.record),
                "leaf": self.proof.leaf,
                "checkpoint": self.proof.checkpoint,
                "inclusion": [h.hex() for h in self.proof.inclusion],
            }
        return json.dumps(
            {
                "format": FORMAT,
                "transfer_id": self.transfer_id,
                "sender": self.sender,
                "receiver": self.receiver,
                "manifest": _signed(self.manifest),
                "receipt": _signed(self.receipt),
                "proof": proof,
            },
            indent=2,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "evidence") -> Evidence:
        """Parse strictly; a ``UsageError`` naming ``source`` and the member otherwise."""
        if len(text) > MAX_EVIDENCE_BYTES:
            raise UsageError(f"{source}: larger than {MAX_EVIDENCE_BYTES} bytes")
        try:
            doc = json.loads(text)
            if doc.get("format") != FORMAT:
                raise ValueError(f"format is {doc.get('format')!r}, expected {FORMAT!r}")
            raw = doc["proof"]
            proof = None
            if raw is not None:
                proof = CommitProof(
                    base64.b64decode(raw["record"], validate=True),
                    _int(raw["leaf"]),
                    _str(raw["checkpoint"]),
                    tuple(bytes.fromhex(_str(h)) for h in raw["inclusion"]),
                )
            return cls(
                _str(doc["transfer_id"]),
                _str(doc["sender"]),
                _str(doc["receiver"]),
                _unsigned(doc["manifest"]),
                _unsigned(doc["receipt"]),
                proof,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UsageError(f"{source}: not an {FORMAT} file ({exc})") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _signed(blob: Signed) -> dict[str, str]:
    return {"body": _b64(blob.body), "signature": _b64(blob.signature), "kid": blob.kid}


def _unsigned(raw: Any) -> Signed:
    return Signed(
        base64.b64decode(_str(raw["body"]), validate=True),
        base64.b64decode(_str(raw["signature"]), validate=True),
        _str(raw["kid"]),
    )


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _int(value: object) -> int:
    if type(value) is not int or value < 0:
        raise TypeError(f"expected a non-negative integer, got {value!r}")
    return value
