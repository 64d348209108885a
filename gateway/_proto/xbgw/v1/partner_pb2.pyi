from gateway._proto.xbgw.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OfferRequest(_message.Message):
    __slots__ = ("passport", "envelope_header")
    PASSPORT_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_HEADER_FIELD_NUMBER: _ClassVar[int]
    passport: str
    envelope_header: bytes
    def __init__(self, passport: _Optional[str] = ..., envelope_header: _Optional[bytes] = ...) -> None: ...

class OfferResponse(_message.Message):
    __slots__ = ("transfer_id", "next_segment", "received_bytes", "state")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    NEXT_SEGMENT_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    next_segment: int
    received_bytes: int
    state: _common_pb2.TransferState
    def __init__(self, transfer_id: _Optional[str] = ..., next_segment: _Optional[int] = ..., received_bytes: _Optional[int] = ..., state: _Optional[_Union[_common_pb2.TransferState, str]] = ...) -> None: ...

class Segment(_message.Message):
    __slots__ = ("transfer_id", "index", "final", "ciphertext")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    index: int
    final: bool
    ciphertext: bytes
    def __init__(self, transfer_id: _Optional[str] = ..., index: _Optional[int] = ..., final: _Optional[bool] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class UploadResponse(_message.Message):
    __slots__ = ("next_segment", "received_bytes", "final_received")
    NEXT_SEGMENT_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    FINAL_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    next_segment: int
    received_bytes: int
    final_received: bool
    def __init__(self, next_segment: _Optional[int] = ..., received_bytes: _Optional[int] = ..., final_received: _Optional[bool] = ...) -> None: ...

class Manifest(_message.Message):
    __slots__ = ("transfer_id", "sender", "receiver", "header_core_digest", "passport_digest", "plaintext_sha256", "plaintext_size", "segment_count")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_FIELD_NUMBER: _ClassVar[int]
    HEADER_CORE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PASSPORT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_SHA256_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_SIZE_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    sender: str
    receiver: str
    header_core_digest: bytes
    passport_digest: bytes
    plaintext_sha256: bytes
    plaintext_size: int
    segment_count: int
    def __init__(self, transfer_id: _Optional[str] = ..., sender: _Optional[str] = ..., receiver: _Optional[str] = ..., header_core_digest: _Optional[bytes] = ..., passport_digest: _Optional[bytes] = ..., plaintext_sha256: _Optional[bytes] = ..., plaintext_size: _Optional[int] = ..., segment_count: _Optional[int] = ...) -> None: ...

class DeliverRequest(_message.Message):
    __slots__ = ("passport", "envelope_header", "segment", "manifest")
    PASSPORT_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_HEADER_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    passport: str
    envelope_header: bytes
    segment: Segment
    manifest: _common_pb2.SignedBlob
    def __init__(self, passport: _Optional[str] = ..., envelope_header: _Optional[bytes] = ..., segment: _Optional[_Union[Segment, _Mapping]] = ..., manifest: _Optional[_Union[_common_pb2.SignedBlob, _Mapping]] = ...) -> None: ...

class FinishRequest(_message.Message):
    __slots__ = ("transfer_id", "manifest")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    manifest: _common_pb2.SignedBlob
    def __init__(self, transfer_id: _Optional[str] = ..., manifest: _Optional[_Union[_common_pb2.SignedBlob, _Mapping]] = ...) -> None: ...

class ReceiptBody(_message.Message):
    __slots__ = ("transfer_id", "sender", "receiver", "manifest_digest", "plaintext_sha256", "plaintext_size", "passport_digest", "committed_at")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_SHA256_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_SIZE_FIELD_NUMBER: _ClassVar[int]
    PASSPORT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    sender: str
    receiver: str
    manifest_digest: bytes
    plaintext_sha256: bytes
    plaintext_size: int
    passport_digest: bytes
    committed_at: int
    def __init__(self, transfer_id: _Optional[str] = ..., sender: _Optional[str] = ..., receiver: _Optional[str] = ..., manifest_digest: _Optional[bytes] = ..., plaintext_sha256: _Optional[bytes] = ..., plaintext_size: _Optional[int] = ..., passport_digest: _Optional[bytes] = ..., committed_at: _Optional[int] = ...) -> None: ...

class FinishResponse(_message.Message):
    __slots__ = ("receipt", "proof")
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    receipt: _common_pb2.SignedBlob
    proof: CommitProof
    def __init__(self, receipt: _Optional[_Union[_common_pb2.SignedBlob, _Mapping]] = ..., proof: _Optional[_Union[CommitProof, _Mapping]] = ...) -> None: ...

class CommitProof(_message.Message):
    __slots__ = ("record", "leaf", "checkpoint", "inclusion")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    LEAF_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    INCLUSION_FIELD_NUMBER: _ClassVar[int]
    record: bytes
    leaf: int
    checkpoint: str
    inclusion: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, record: _Optional[bytes] = ..., leaf: _Optional[int] = ..., checkpoint: _Optional[str] = ..., inclusion: _Optional[_Iterable[bytes]] = ...) -> None: ...

class GetTransferRequest(_message.Message):
    __slots__ = ("transfer_id",)
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    def __init__(self, transfer_id: _Optional[str] = ...) -> None: ...

class TransferStatus(_message.Message):
    __slots__ = ("transfer_id", "state", "next_segment", "received_bytes", "receipt")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    NEXT_SEGMENT_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    state: _common_pb2.TransferState
    next_segment: int
    received_bytes: int
    receipt: _common_pb2.SignedBlob
    def __init__(self, transfer_id: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.TransferState, str]] = ..., next_segment: _Optional[int] = ..., received_bytes: _Optional[int] = ..., receipt: _Optional[_Union[_common_pb2.SignedBlob, _Mapping]] = ...) -> None: ...

class GetKeySetRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TransportKey(_message.Message):
    __slots__ = ("version", "public_point", "state")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_POINT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    version: int
    public_point: bytes
    state: str
    def __init__(self, version: _Optional[int] = ..., public_point: _Optional[bytes] = ..., state: _Optional[str] = ...) -> None: ...

class SigningKey(_message.Message):
    __slots__ = ("version", "public_point", "state")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_POINT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    version: int
    public_point: bytes
    state: str
    def __init__(self, version: _Optional[int] = ..., public_point: _Optional[bytes] = ..., state: _Optional[str] = ...) -> None: ...

class KeySet(_message.Message):
    __slots__ = ("gateway_id", "keys", "current_version", "issued_at", "signing_keys")
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    SIGNING_KEYS_FIELD_NUMBER: _ClassVar[int]
    gateway_id: str
    keys: _containers.RepeatedCompositeFieldContainer[TransportKey]
    current_version: int
    issued_at: int
    signing_keys: _containers.RepeatedCompositeFieldContainer[SigningKey]
    def __init__(self, gateway_id: _Optional[str] = ..., keys: _Optional[_Iterable[_Union[TransportKey, _Mapping]]] = ..., current_version: _Optional[int] = ..., issued_at: _Optional[int] = ..., signing_keys: _Optional[_Iterable[_Union[SigningKey, _Mapping]]] = ...) -> None: ...

class GetKeySetResponse(_message.Message):
    __slots__ = ("key_set", "endorsements")
    KEY_SET_FIELD_NUMBER: _ClassVar[int]
    ENDORSEMENTS_FIELD_NUMBER: _ClassVar[int]
    key_set: _common_pb2.SignedBlob
    endorsements: _containers.RepeatedCompositeFieldContainer[_common_pb2.SignedBlob]
    def __init__(self, key_set: _Optional[_Union[_common_pb2.SignedBlob, _Mapping]] = ..., endorsements: _Optional[_Iterable[_Union[_common_pb2.SignedBlob, _Mapping]]] = ...) -> None: ...

class GetCheckpointRequest(_message.Message):
    __slots__ = ("known_size",)
    KNOWN_SIZE_FIELD_NUMBER: _ClassVar[int]
    known_size: int
    def __init__(self, known_size: _Optional[int] = ...) -> None: ...

class GetCheckpointResponse(_message.Message):
    __slots__ = ("checkpoint", "consistency")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    checkpoint: str
    consistency: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, checkpoint: _Optional[str] = ..., consistency: _Optional[_Iterable[bytes]] = ...) -> None: ...

class CosignRequest(_message.Message):
    __slots__ = ("checkpoint", "cosignature")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    COSIGNATURE_FIELD_NUMBER: _ClassVar[int]
    checkpoint: str
    cosignature: str
    def __init__(self, checkpoint: _Optional[str] = ..., cosignature: _Optional[str] = ...) -> None: ...

class CosignResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CancelTransferRequest(_message.Message):
    __slots__ = ("transfer_id", "reason")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    reason: str
    def __init__(self, transfer_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CancelTransferResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: _common_pb2.TransferState
    def __init__(self, state: _Optional[_Union[_common_pb2.TransferState, str]] = ...) -> None: ...
