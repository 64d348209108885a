"""The one error tree of xbgw.

Every failure a person may have to act on is one of these types. Domain modules raise them;
foreign exceptions (pkcs11, cryptography, yaml, grpc) are converted at the edge of the module
that calls the foreign library. The CLI catches ``XbgwError`` once; the gRPC servicers map
an error to a status with :func:`grpc_status_name` -- this module names the status but does not
import grpc, so that domain modules stay free of it.

Messages never contain secrets: no PIN, no key bytes, no payload bytes.
"""

from __future__ import annotations


class XbgwError(Exception):
    """Base of every error xbgw raises on purpose."""

    #: Name of the ``grpc.StatusCode`` member this error maps to on the wire.
    grpc_status: str = "INTERNAL"


class UsageError(XbgwError):
    """The command line itself is wrong (exit 2)."""

    grpc_status = "INVALID_ARGUMENT"


# --- configuration -------------------------------------------------------------------------


class ConfigError(XbgwError):
    """A configuration file or setting is wrong; the message names the file and the key."""

    grpc_status = "FAILED_PRECONDITION"

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class PinSourceError(ConfigError):
    """The HSM PIN could not be read from its file, variable or systemd credential."""


# --- HSM ------------------------------------------------------------------------------------


class HsmError(XbgwError):
    """The HSM refused or failed an operation."""

    grpc_status = "UNAVAILABLE"


class HsmConfigError(HsmError):
    """The HSM cannot be opened as configured (module, token, PIN, SoftHSM config)."""


class HsmPinError(HsmConfigError):
    """The PIN was refused or is locked: retrying with the same PIN can only lock it."""


class KeyNotFoundError(HsmError):
    """A key version that should exist on the token does not."""

    grpc_status = "FAILED_PRECONDITION"


class KeyLifecycleError(XbgwError):
    """A key lifecycle step is not allowed now (retire a version in use, destroy an active one)."""

    grpc_status = "FAILED_PRECONDITION"


class UnwrapError(HsmError):
    """A wrapped key did not unwrap: wrong key, wrong context, or tampered bytes."""

    grpc_status = "INVALID_ARGUMENT"


# --- envelope (XBGW-STREAM-1) ---------------------------------------------------------------


class EnvelopeError(XbgwError):
    """A stream or its header is not a valid XBGW-STREAM-1 object."""

    grpc_status = "INVALID_ARGUMENT"


class HeaderFormatError(EnvelopeError):
    """The header is malformed, truncated, oversized, or has a field out of range."""


class UnsupportedVersionError(EnvelopeError):
    """The header names a format version this gateway does not speak."""


class UnsupportedSuiteError(EnvelopeError):
    """The header names a suite outside the allow list; never fall back to a weaker one."""


class SegmentSizeError(HeaderFormatError):
    """The segment size is outside the allowed range."""


class NoUsableWrappedKeyError(EnvelopeError):
    """No wrapped key in the header is addressed to a key this gateway holds."""

    grpc_status = "FAILED_PRECONDITION"


#: How every refusal of a stale transport key ends, on the wire too: a sender that sees these
#: words at the end of a FAILED_PRECONDITION refusal of its offer fetches the partner's key set
#: again and re-seals (``gateway.transfer.stale_transport_key``). Gateways from before key
#: lifecycle end the same refusal with the same words.
FETCH_A_FRESH_KEY_SET = "fetch a fresh key set"


class TransportKeyNotAcceptedError(NoUsableWrappedKeyError):
    """The data key is wrapped only to transport versions this gateway does not accept (never
    made, or retired): the sender sealed to a stale key set. The message ends with
    :data:`FETCH_A_FRESH_KEY_SET`."""


class KeyUnwrapError(EnvelopeError):
    """A wrapped data key addressed to us did not unwrap (wrong key or tampered)."""


class CommitmentError(EnvelopeError):
    """The key commitment does not match the data key and header core."""


class SegmentAuthenticationError(EnvelopeError):
    """A segment failed authentication: flipped bits, wrong key, reordered or replayed."""

    grpc_status = "DATA_LOSS"


class SegmentOrderError(EnvelopeError):
    """A segment arrived out of order, twice, or with an index the stream cannot have."""

    grpc_status = "OUT_OF_RANGE"


class SegmentLengthError(EnvelopeError):
    """A segment has a length the format does not allow at its position."""


class TruncatedStreamError(EnvelopeError):
    """The stream ended before its final segment."""

    grpc_status = "DATA_LOSS"


class TrailingDataError(EnvelopeError):
    """Data followed the final segment."""

    grpc_status = "OUT_OF_RANGE"


# --- passport -------------------------------------------------------------------------------


class PassportError(XbgwError):
    """A data passport was refused."""

    grpc_status = "PERMISSION_DENIED"


class PassportFormatError(PassportError):
    """The token is not a well-formed compact JWS of acceptable size."""

    grpc_status = "INVALID_ARGUMENT"


class PassportHeaderError(PassportError):
    """The JWS header is not what xbgw issues (``alg``, ``typ``, ``kid``, extra members)."""


class PassportUnknownIssuerError(PassportError):
    """The ``kid``/``iss`` is not among the trusted issuers."""


class PassportSignatureError(PassportError):
    """The signature does not verify over the exact signed bytes."""


class PassportExpiredError(PassportError):
    """``exp`` is in the past (beyond the leeway)."""


class PassportNotYetValidError(PassportError):
    """``nbf`` is in the future (beyond the leeway)."""


class PassportAudienceError(PassportError):
    """``aud`` does not name this gateway."""


class PassportClaimsError(PassportError):
    """A claim is missing, of the wrong type, too long, or out of its allowed format."""

    grpc_status = "INVALID_ARGUMENT"


def grpc_status_name(error: BaseException) -> str:
    """Name of the ``grpc.StatusCode`` for ``error``; anything not ours is ``INTERNAL``."""
    if isinstance(error, XbgwError):
        return error.grpc_status
    return "INTERNAL"


# --- transfers ------------------------------------------------------------------------------


class TransferError(XbgwError):
    """A transfer was refused or could not proceed."""

    grpc_status = "FAILED_PRECONDITION"


class PeerNotAuthorizedError(TransferError):
    """The mutual-TLS peer is not a configured partner, or not the one it claims to be."""

    grpc_status = "PERMISSION_DENIED"


class PassportReplayError(TransferError):
    """The passport's transfer id was already used (single use)."""

    grpc_status = "ALREADY_EXISTS"


class TransferConflictError(TransferError):
    """The transfer id is in progress with different parameters; it cannot be resumed."""

    grpc_status = "FAILED_PRECONDITION"


class UnknownTransferError(TransferError):
    """No transfer with this id exists here (for this peer)."""

    grpc_status = "NOT_FOUND"


class TransferEndedError(TransferError):
    """The transfer was cancelled or expired: final; nothing more is sent or taken for it."""

    grpc_status = "FAILED_PRECONDITION"


class TransferBusyError(TransferError):
    """The transfer is being worked on right now (a send, a stream, a rewrap): retry the
    request once that has ended (ABORTED: a concurrency conflict, not a final refusal)."""

    grpc_status = "ABORTED"


class LeaseLostError(TransferError):
    """Another node of this gateway took over the transfer's lease (this node stalled, or
    was cut from the shared ledger, longer than a lease lives): this node stops writing it
    at once, and the resume point stays where the new holder continues from (ABORTED: a
    concurrency conflict, the transfer itself goes on there)."""

    grpc_status = "ABORTED"


class InboxDataDeletedError(TransferError):
    """A committed transfer's data was removed (``xbgw inbox delete`` or retention); its
    ledger row, receipt and audit records stay."""

    grpc_status = "NOT_FOUND"


class PartialLostError(TransferError):
    """The spool lost bytes its resume point promised; the transfer restarts from zero."""

    grpc_status = "FAILED_PRECONDITION"


class ByteLimitError(TransferError):
    """The stream grew past the passport's byte limit."""

    grpc_status = "RESOURCE_EXHAUSTED"


class MessageTooLargeError(TransferError):
    """A partner message is larger than this gateway's ``limits.max_message_bytes``."""

    grpc_status = "RESOURCE_EXHAUSTED"


class ManifestError(TransferError):
    """The sender's manifest is unsigned, mis-signed, or disagrees with what arrived."""

    grpc_status = "INVALID_ARGUMENT"


class DatasetMismatchError(TransferError):
    """The data to send is not the data set the passport names (its ``sub``), or not the
    data whose digest the caller declared."""

    grpc_status = "INVALID_ARGUMENT"


class PolicyDeniedError(TransferError):
    """The jurisdiction/classification rules refuse this transfer."""

    grpc_status = "PERMISSION_DENIED"


class SignatureError(XbgwError):
    """A signed blob (receipt, manifest, key set) does not verify under the pinned key."""

    grpc_status = "UNAUTHENTICATED"


class PartnerError(XbgwError):
    """The partner gateway refused the transfer or could not be reached; reason attached."""

    grpc_status = "UNAVAILABLE"

    def __init__(self, message: str, status: str = "UNAVAILABLE") -> None:
        super().__init__(message)
        self.grpc_status = status


class SourceChangedError(TransferError):
    """A resumed send's data differs from what was encrypted before (nonce reuse refused)."""

    grpc_status = "FAILED_PRECONDITION"


class SourceSizeError(TransferError):
    """The data to send ended before, or ran past, the size declared for it."""

    grpc_status = "INVALID_ARGUMENT"


class DaemonUnavailableError(XbgwError):
    """The local daemon socket does not answer."""

    grpc_status = "UNAVAILABLE"


class OfferMismatchError(TransferError):
    """The envelope header and the passport disagree (transfer id, parties, digest)."""

    grpc_status = "INVALID_ARGUMENT"


class DrainingError(XbgwError):
    """The daemon is stopping and takes no new transfers."""

    grpc_status = "UNAVAILABLE"


class StorageError(XbgwError):
    """The spool or the ledger failed (disk full, I/O error); the transfer can be resumed."""

    grpc_status = "UNAVAILABLE"

    def __init__(self, message: str, status: str = "UNAVAILABLE") -> None:
        super().__init__(message)
        self.grpc_status = status

    @classmethod
    def from_exception(cls, exc: BaseException, where: object = None) -> StorageError:
        """Wrap an ``OSError`` or ``sqlite3.Error`` with a reason an operator can act on;
        ``where`` (the spool directory, the ledger file) is named when storage is full, so
        the operator knows which file system to free."""
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        if is_storage_full(exc):
            return StorageFullError(
                f"{STORAGE_FULL}: {where or 'the state directory'} ({reason}); the transfer's "
                "data so far is kept: free space, then send again to resume"
            )
        return cls(
            f"this gateway cannot store the transfer right now ({reason}); its data so far "
            "is kept: resume later"
        )


#: How every storage-full refusal starts, on the wire too: a sender relaying its partner's
#: refusal says whose storage it is (``gateway.transfer.refused_by``).
STORAGE_FULL = "this gateway's storage is full"

_ENOSPC, _EDQUOT = 28, 122
_SQLITE_FULL = 13


def is_storage_full(exc: BaseException) -> bool:
    """Out of space or over quota: ENOSPC, EDQUOT, or SQLite's SQLITE_FULL (which is how
    SQLite reports ENOSPC on its own writes)."""
    if isinstance(exc, OSError):
        return exc.errno in (_ENOSPC, _EDQUOT)
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF == _SQLITE_FULL


class StorageFullError(StorageError):
    """The file system holding the spool or the ledger is full (or over quota): nothing was
    half-committed, and the same send resumes once space is freed."""

    grpc_status = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str) -> None:
        super().__init__(message, "RESOURCE_EXHAUSTED")


class StateLockedError(XbgwError):
    """The state directory is in use by another process (the daemon, an offline verb)."""

    grpc_status = "FAILED_PRECONDITION"


class PartnerBusyError(TransferError):
    """A partner has as many requests in flight as it may have."""

    grpc_status = "RESOURCE_EXHAUSTED"


class ListenError(XbgwError):
    """A listener could not bind (port in use, address not up yet): worth a restart."""

    grpc_status = "UNAVAILABLE"


# --- the wrapped TLS private key (gateway.tlskey) -------------------------------------------
#
# ConfigErrors: the daemon exits 78 at start (systemd must not retry -- the file has to be
# fixed) and refuses a reload. An HSM that does not answer stays an HsmError (worth a retry).


class TlsKeyError(ConfigError):
    """``tls.private_key`` cannot be used; the message names the file and the reason."""


class TlsKeyFormatError(TlsKeyError):
    """Not a wrapped TLS key file, or a malformed, truncated or over-long one."""


class TlsKeyMismatchError(TlsKeyError):
    """Well formed, but not usable here: another gateway's, a storage version this gateway
    does not have in service, or a key that does not match the certificate."""


class TlsKeyAuthenticationError(TlsKeyError):
    """The wrapped data key or the sealed private key does not authenticate: the file was
    altered, or it was wrapped by another HSM."""
