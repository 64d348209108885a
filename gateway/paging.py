"""Pages of the lists the local API returns (the inbox, ``Status``'s transfers).

Why keyset pages rather than offsets: an inbox grows while a client walks it, and with an
offset every new item shifts the pages after it (an item seen twice, another skipped). A page
token here holds the sort key of the last item returned -- (committed_at, transfer_id) for the
inbox, (created_at, direction, transfer_id) for transfers -- and the next page starts after
it, whatever arrived meanwhile. The token is opaque to clients (base64url of a small JSON
array, tagged with its list), so its form may change without breaking them.
"""

from __future__ import annotations

import base64
import binascii
import json

from gateway.errors import UsageError

DEFAULT_PAGE = 100
MAX_PAGE = 1000
_MAX_TOKEN = 512


def page_size(requested: int) -> int:
    """0: the default; above the maximum: the maximum (as AIP-158 says)."""
    if requested <= 0:
        return DEFAULT_PAGE
    return min(requested, MAX_PAGE)


def encode_token(kind: str, key: list[int | str]) -> str:
    raw = json.dumps([kind, *key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_token(kind: str, token: str, shape: tuple[type, ...]) -> list[int | str] | None:
    """The key in ``token`` (None for an empty token: the first page); a token that is not
    one this gateway gave out for the ``kind`` list is a usage error."""
    if not token:
        return None
    try:
        if len(token) > _MAX_TOKEN:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        value = json.loads(raw)
        if not isinstance(value, list) or value[:1] != [kind] or len(value) != len(shape) + 1:
            raise ValueError("not this list's")
        key = value[1:]
        if not all(type(v) is t for v, t in zip(key, shape, strict=True)):
            raise ValueError("wrong types")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise UsageError(
            "page_token is not one this gateway gave out for this list; start again "
            "with an empty token"
        ) from None
    return list(key)
