"""Key identity: purposes, versions and key references.

A key reference names one immutable key version of one gateway. It travels in clear inside
wrapped keys and passport ``kid`` headers, and is also bound into every KDF or wrap context,
so that a wrapped key or signature cannot be replayed against another key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from gateway.errors import KeyNotFoundError

MAX_VERSION = 2**32 - 1
_GATEWAY_ID = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")


class Purpose(StrEnum):
    """What a key is for; each purpose has exactly the PKCS#11 capabilities it needs."""

    TRANSPORT = "transport"  # EC P-256, derive: partners wrap data keys to it (ECDH-ES)
    SIGNING = "signing"  # EC P-256, sign: passports, receipts, key sets, checkpoints
    STORAGE = "storage"  # AES-256, wrap/unwrap: data keys at rest

    @property
    def label(self) -> str:
        """The PKCS#11 ``CKA_LABEL`` shared by every version of this purpose."""
        return f"xbgw-{self.value}"

    @property
    def code(self) -> int:
        """One-byte code used in binary formats."""
        return _PURPOSE_CODES[self]

    @classmethod
    def from_code(cls, code: int) -> Purpose:
        """The purpose with this one-byte code; raises ``ValueError`` for an unknown code."""
        for purpose, value in _PURPOSE_CODES.items():
            if value == code:
                return purpose
        raise ValueError(f"unknown key purpose code {code}")


_PURPOSE_CODES = {Purpose.TRANSPORT: 1, Purpose.SIGNING: 2, Purpose.STORAGE: 3}


class KeyState(StrEnum):
    """Where one key version is in its life; the value is what the ledger stores.

    ``pending`` (made, not yet used) -> ``active`` (the one version of its purpose used for
    new work) -> ``decrypt-only`` (transport, storage) or ``verify-only`` (signing): replaced,
    still opens or verifies what was made under it -> ``retired`` (out of service; refused)
    -> ``destroyed`` (the HSM object is gone).
    """

    PENDING = "pending"
    ACTIVE = "active"
    DECRYPT_ONLY = "decrypt-only"
    VERIFY_ONLY = "verify-only"
    RETIRED = "retired"
    DESTROYED = "destroyed"

    @classmethod
    def replaced(cls, purpose: Purpose) -> KeyState:
        """The state a version of ``purpose`` takes when a newer one becomes active."""
        return cls.VERIFY_ONLY if purpose is Purpose.SIGNING else cls.DECRYPT_ONLY

    @property
    def in_service(self) -> bool:
        """Active, or replaced but still opening/verifying old work."""
        return self in (KeyState.ACTIVE, KeyState.DECRYPT_ONLY, KeyState.VERIFY_ONLY)


def check_gateway_id(value: str) -> str:
    """Return ``value`` if it is a valid gateway id (lower-case DNS-label-like, <= 63 chars)."""
    if not _GATEWAY_ID.fullmatch(value):
        raise ValueError(
            f"gateway id {value!r} must be 1-63 characters of a-z, 0-9, '.', '-', "
            "starting with a letter or digit"
        )
    return value


def version_id(version: int) -> bytes:
    """``CKA_ID`` of a key version: the version as a 4-byte big-endian integer."""
    if not 1 <= version <= MAX_VERSION:
        raise ValueError(f"key version must be between 1 and {MAX_VERSION}, got {version}")
    return version.to_bytes(4, "big")


@dataclass(frozen=True, order=True)
class KeyRef:
    """One key version of one gateway: ``owner/purpose/version``."""

    owner: str
    purpose: Purpose
    version: int

    def __post_init__(self) -> None:
        check_gateway_id(self.owner)
        version_id(self.version)

    def __str__(self) -> str:
        return f"{self.owner}/{self.purpose.value}/{self.version}"

    @classmethod
    def parse(cls, text: str) -> KeyRef:
        """Parse ``owner/purpose/version``; raises ``ValueError`` with the reason."""
        parts = text.split("/")
        if len(parts) != 3:
            raise ValueError(f"key reference {text!r} is not of the form owner/purpose/version")
        owner, purpose, version = parts
        try:
            purpose_value = Purpose(purpose)
        except ValueError:
            raise ValueError(
                f"key reference {text!r}: purpose must be one of "
                f"{', '.join(p.value for p in Purpose)}"
            ) from None
        if not version.isdigit() or version.startswith("0"):
            raise ValueError(f"key reference {text!r}: version must be a positive integer")
        return cls(owner, purpose_value, int(version))

    def encode(self) -> bytes:
        """Canonical bytes: ``len(owner) u8 || owner || purpose u8 || version u32be``."""
        owner = self.owner.encode("ascii")
        return bytes([len(owner)]) + owner + bytes([self.purpose.code]) + version_id(self.version)


@dataclass(frozen=True)
class KeyVersion:
    """One key version of this gateway and its life so far (times: seconds since the epoch)."""

    purpose: Purpose
    version: int
    state: KeyState
    created_at: int
    activated_at: int | None = None
    deactivated_at: int | None = None  # became decrypt-only / verify-only
    retired_at: int | None = None
    destroyed_at: int | None = None


class HasVersions(Protocol):
    def versions(self, purpose: Purpose) -> list[int]: ...


@dataclass(frozen=True)
class CurrentKeys:
    """The key version of each purpose this gateway uses for new work right now."""

    transport: int
    signing: int
    storage: int

    @classmethod
    def resolve(cls, hsm: HasVersions, pinned: Mapping[Purpose, int] | None) -> CurrentKeys:
        """Pinned versions from the config, else the newest on the token."""
        chosen: dict[Purpose, int] = {}
        for purpose in Purpose:
            if pinned and purpose in pinned:
                chosen[purpose] = pinned[purpose]
                continue
            versions = hsm.versions(purpose)
            if not versions:
                raise KeyNotFoundError(
                    f"the HSM token has no {purpose.label} key (run 'xbgw keys init')"
                )
            chosen[purpose] = versions[-1]
        return cls(
            transport=chosen[Purpose.TRANSPORT],
            signing=chosen[Purpose.SIGNING],
            storage=chosen[Purpose.STORAGE],
        )

    def as_dict(self) -> dict[Purpose, int]:
        return {
            Purpose.TRANSPORT: self.transport,
            Purpose.SIGNING: self.signing,
            Purpose.STORAGE: self.storage,
        }
