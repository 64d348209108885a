from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class TransferState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRANSFER_STATE_UNSPECIFIED: _ClassVar[TransferState]
    TRANSFER_STATE_RECEIVING: _ClassVar[TransferState]
    TRANSFER_STATE_COMMITTED: _ClassVar[TransferState]
    TRANSFER_STATE_SENDING: _ClassVar[TransferState]
    TRANSFER_STATE_DELIVERED: _ClassVar[TransferState]
    TRANSFER_STATE_REFUSED: _ClassVar[TransferState]
    TRANSFER_STATE_CANCELLED: _ClassVar[TransferState]
    TRANSFER_STATE_EXPIRED: _ClassVar[TransferState]
TRANSFER_STATE_UNSPECIFIED: TransferState
TRANSFER_STATE_RECEIVING: TransferState
TRANSFER_STATE_COMMITTED: TransferState
TRANSFER_STATE_SENDING: TransferState
TRANSFER_STATE_DELIVERED: TransferState
TRANSFER_STATE_REFUSED: TransferState
TRANSFER_STATE_CANCELLED: TransferState
TRANSFER_STATE_EXPIRED: TransferState

class SignedBlob(_message.Message):
    __slots__ = ("body", "signature", "kid")
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    KID_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    signature: bytes
    kid: str
    def __init__(self, body: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., kid: _Optional[str] = ...) -> None: ...
