from gateway._proto.xbgw.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SendStart(_message.Message):
    __slots__ = ("partner", "passport", "size", "wait_seconds", "plaintext_sha256", "file_ticket")
    PARTNER_FIELD_NUMBER: _ClassVar[int]
    PASSPORT_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_SHA256_FIELD_NUMBER: _ClassVar[int]
    FILE_TICKET_FIELD_NUMBER: _ClassVar[int]
    partner: str
    passport: str
    size: int
    wait_seconds: int
    plaintext_sha256: bytes
    file_ticket: bytes
    def __init__(self, partner: _Optional[str] = ..., passport: _Optional[str] = ..., size: _Optional[int] = ..., wait_seconds: _Optional[int] = ..., plaintext_sha256: _Optional[bytes] = ..., file_ticket: _Optional[bytes] = ...) -> None: ...

class SendRequest(_message.Message):
    __slots__ = ("start", "data")
    START_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    start: SendStart
    data: bytes
    def __init__(self, start: _Optional[_Union[SendStart, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class SendSmallRequest(_message.Message):
    __slots__ = ("partner", "passport", "size", "wait_seconds", "plaintext_sha256", "data")
    PARTNER_FIELD_NUMBER: _ClassVar[int]
    PASSPORT_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_SHA256_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    partner: str
    passport: str
    size: int
    wait_seconds: int
    plaintext_sha256: bytes
    data: bytes
    def __init__(self, partner: _Optional[str] = ..., passport: _Optional[str] = ..., size: _Optional[int] = ..., wait_seconds: _Optional[int] = ..., plaintext_sha256: _Optional[bytes] = ..., data: _Optional[bytes] = ...) -> None: ...

class SendAccepted(_message.Message):
    __slots__ = ("transfer_id", "resume_from")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    RESUME_FROM_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    resume_from: int
    def __init__(self, transfer_id: _Optional[str] = ..., resume_from: _Optional[int] = ...) -> None: ...

class SendProgress(_message.Message):
    __slots__ = ("bytes_sent", "bytes_total")
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    bytes_sent: int
    bytes_total: int
    def __init__(self, bytes_sent: _Optional[int] = ..., bytes_total: _Optional[int] = ...) -> None: ...

class ReceiptSummary(_message.Message):
    __slots__ = ("transfer_id", "partner", "plaintext_sha256", "plaintext_size", "committed_at", "signed_by", "receipt")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    PARTNER_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_SHA256_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_SIZE_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    SIGNED_BY_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    partner: str
    plaintext_sha256: str
    plaintext_size: int
    committed_at: int
    signed_by: str
    receipt: _common_pb2.SignedBlob
    def __init__(self, transfer_id: _Optional[str] = ..., partner: _Optional[str] = ..., plaintext_sha256: _Optional[str] = ..., plaintext_size: _Optional[int] = ..., committed_at: _Optional[int] = ..., signed_by: _Optional[str] = ..., receipt: _Optional[_Union[_common_pb2.SignedBlob, _Mapping]] = ...) -> None: ...

class SendQueued(_message.Message):
    __slots__ = ("position", "running")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    position: int
    running: int
    def __init__(self, position: _Optional[int] = ..., running: _Optional[int] = ...) -> None: ...

class SendWaiting(_message.Message):
    __slots__ = ("reason", "attempt", "retry_in_ms", "waited_seconds", "wait_seconds")
    REASON_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    RETRY_IN_MS_FIELD_NUMBER: _ClassVar[int]
    WAITED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    reason: str
    attempt: int
    retry_in_ms: int
    waited_seconds: int
    wait_seconds: int
    def __init__(self, reason: _Optional[str] = ..., attempt: _Optional[int] = ..., retry_in_ms: _Optional[int] = ..., waited_seconds: _Optional[int] = ..., wait_seconds: _Optional[int] = ...) -> None: ...

class SendEvent(_message.Message):
    __slots__ = ("accepted", "progress", "done", "queued", "waiting")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    accepted: SendAccepted
    progress: SendProgress
    done: ReceiptSummary
    queued: SendQueued
    waiting: SendWaiting
    def __init__(self, accepted: _Optional[_Union[SendAccepted, _Mapping]] = ..., progress: _Optional[_Union[SendProgress, _Mapping]] = ..., done: _Optional[_Union[ReceiptSummary, _Mapping]] = ..., queued: _Optional[_Union[SendQueued, _Mapping]] = ..., waiting: _Optional[_Union[SendWaiting, _Mapping]] = ...) -> None: ...

class ListInboxRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "unacknowledged_only")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    UNACKNOWLEDGED_ONLY_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    unacknowledged_only: bool
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., unacknowledged_only: _Optional[bool] = ...) -> None: ...

class InboxItem(_message.Message):
    __slots__ = ("transfer_id", "sender", "size", "plaintext_sha256", "committed_at", "classification", "source_jurisdiction", "fetched_at", "acknowledged_at")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_SHA256_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_JURISDICTION_FIELD_NUMBER: _ClassVar[int]
    FETCHED_AT_FIELD_NUMBER: _ClassVar[int]
    ACKNOWLEDGED_AT_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    sender: str
    size: int
    plaintext_sha256: str
    committed_at: int
    classification: str
    source_jurisdiction: str
    fetched_at: int
    acknowledged_at: int
    def __init__(self, transfer_id: _Optional[str] = ..., sender: _Optional[str] = ..., size: _Optional[int] = ..., plaintext_sha256: _Optional[str] = ..., committed_at: _Optional[int] = ..., classification: _Optional[str] = ..., source_jurisdiction: _Optional[str] = ..., fetched_at: _Optional[int] = ..., acknowledged_at: _Optional[int] = ...) -> None: ...

class ListInboxResponse(_message.Message):
    __slots__ = ("items", "next_page_token")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[InboxItem]
    next_page_token: str
    def __init__(self, items: _Optional[_Iterable[_Union[InboxItem, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class FetchRequest(_message.Message):
    __slots__ = ("transfer_id",)
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    def __init__(self, transfer_id: _Optional[str] = ...) -> None: ...

class FetchChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class TransferSummary(_message.Message):
    __slots__ = ("transfer_id", "direction", "partner", "state", "bytes")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    PARTNER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    direction: str
    partner: str
    state: _common_pb2.TransferState
    bytes: int
    def __init__(self, transfer_id: _Optional[str] = ..., direction: _Optional[str] = ..., partner: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.TransferState, str]] = ..., bytes: _Optional[int] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("gateway_id", "jurisdiction", "version", "started_at", "partners", "transfers", "next_page_token", "queued_sends", "ready", "listeners", "partner_reach", "keys", "in_flight")
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    JURISDICTION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    PARTNERS_FIELD_NUMBER: _ClassVar[int]
    TRANSFERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    QUEUED_SENDS_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    LISTENERS_FIELD_NUMBER: _ClassVar[int]
    PARTNER_REACH_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    gateway_id: str
    jurisdiction: str
    version: str
    started_at: int
    partners: _containers.RepeatedScalarFieldContainer[str]
    transfers: _containers.RepeatedCompositeFieldContainer[TransferSummary]
    next_page_token: str
    queued_sends: int
    ready: bool
    listeners: _containers.RepeatedCompositeFieldContainer[Listener]
    partner_reach: _containers.RepeatedCompositeFieldContainer[PartnerReach]
    keys: _containers.RepeatedCompositeFieldContainer[KeyInUse]
    in_flight: _containers.RepeatedCompositeFieldContainer[TransferInFlight]
    def __init__(self, gateway_id: _Optional[str] = ..., jurisdiction: _Optional[str] = ..., version: _Optional[str] = ..., started_at: _Optional[int] = ..., partners: _Optional[_Iterable[str]] = ..., transfers: _Optional[_Iterable[_Union[TransferSummary, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., queued_sends: _Optional[int] = ..., ready: _Optional[bool] = ..., listeners: _Optional[_Iterable[_Union[Listener, _Mapping]]] = ..., partner_reach: _Optional[_Iterable[_Union[PartnerReach, _Mapping]]] = ..., keys: _Optional[_Iterable[_Union[KeyInUse, _Mapping]]] = ..., in_flight: _Optional[_Iterable[_Union[TransferInFlight, _Mapping]]] = ...) -> None: ...

class Listener(_message.Message):
    __slots__ = ("name", "address")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    name: str
    address: str
    def __init__(self, name: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class PartnerReach(_message.Message):
    __slots__ = ("partner", "endpoint", "state", "last_contact", "checked_at", "detail")
    PARTNER_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_CONTACT_FIELD_NUMBER: _ClassVar[int]
    CHECKED_AT_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    partner: str
    endpoint: str
    state: str
    last_contact: int
    checked_at: int
    detail: str
    def __init__(self, partner: _Optional[str] = ..., endpoint: _Optional[str] = ..., state: _Optional[str] = ..., last_contact: _Optional[int] = ..., checked_at: _Optional[int] = ..., detail: _Optional[str] = ...) -> None: ...

class KeyInUse(_message.Message):
    __slots__ = ("purpose", "active", "in_service")
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    IN_SERVICE_FIELD_NUMBER: _ClassVar[int]
    purpose: str
    active: int
    in_service: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, purpose: _Optional[str] = ..., active: _Optional[int] = ..., in_service: _Optional[_Iterable[int]] = ...) -> None: ...

class TransferInFlight(_message.Message):
    __slots__ = ("transfer_id", "direction", "partner", "bytes_done", "bytes_total", "started_at")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    PARTNER_FIELD_NUMBER: _ClassVar[int]
    BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    direction: str
    partner: str
    bytes_done: int
    bytes_total: int
    started_at: int
    def __init__(self, transfer_id: _Optional[str] = ..., direction: _Optional[str] = ..., partner: _Optional[str] = ..., bytes_done: _Optional[int] = ..., bytes_total: _Optional[int] = ..., started_at: _Optional[int] = ...) -> None: ...

class KeyVersionInfo(_message.Message):
    __slots__ = ("purpose", "version", "state", "created_at", "activated_at", "deactivated_at", "retired_at", "destroyed_at", "retire_blockers")
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ACTIVATED_AT_FIELD_NUMBER: _ClassVar[int]
    DEACTIVATED_AT_FIELD_NUMBER: _ClassVar[int]
    RETIRED_AT_FIELD_NUMBER: _ClassVar[int]
    DESTROYED_AT_FIELD_NUMBER: _ClassVar[int]
    RETIRE_BLOCKERS_FIELD_NUMBER: _ClassVar[int]
    purpose: str
    version: int
    state: str
    created_at: int
    activated_at: int
    deactivated_at: int
    retired_at: int
    destroyed_at: int
    retire_blockers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, purpose: _Optional[str] = ..., version: _Optional[int] = ..., state: _Optional[str] = ..., created_at: _Optional[int] = ..., activated_at: _Optional[int] = ..., deactivated_at: _Optional[int] = ..., retired_at: _Optional[int] = ..., destroyed_at: _Optional[int] = ..., retire_blockers: _Optional[_Iterable[str]] = ...) -> None: ...

class KeyStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class KeyStatusResponse(_message.Message):
    __slots__ = ("gateway_id", "keys", "changed", "due")
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    DUE_FIELD_NUMBER: _ClassVar[int]
    gateway_id: str
    keys: _containers.RepeatedCompositeFieldContainer[KeyVersionInfo]
    changed: _containers.RepeatedScalarFieldContainer[str]
    due: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, gateway_id: _Optional[str] = ..., keys: _Optional[_Iterable[_Union[KeyVersionInfo, _Mapping]]] = ..., changed: _Optional[_Iterable[str]] = ..., due: _Optional[_Iterable[str]] = ...) -> None: ...

class RotateKeysRequest(_message.Message):
    __slots__ = ("purposes",)
    PURPOSES_FIELD_NUMBER: _ClassVar[int]
    purposes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, purposes: _Optional[_Iterable[str]] = ...) -> None: ...

class KeyVersionRequest(_message.Message):
    __slots__ = ("purpose", "version")
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    purpose: str
    version: int
    def __init__(self, purpose: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class RewrapKeysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RewrapProgress(_message.Message):
    __slots__ = ("done", "total", "transfer_id")
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    done: int
    total: int
    transfer_id: str
    def __init__(self, done: _Optional[int] = ..., total: _Optional[int] = ..., transfer_id: _Optional[str] = ...) -> None: ...

class RewrapDone(_message.Message):
    __slots__ = ("to_version", "rewrapped", "already", "busy", "failed", "remaining")
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    REWRAPPED_FIELD_NUMBER: _ClassVar[int]
    ALREADY_FIELD_NUMBER: _ClassVar[int]
    BUSY_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    to_version: int
    rewrapped: int
    already: int
    busy: _containers.RepeatedScalarFieldContainer[str]
    failed: _containers.RepeatedScalarFieldContainer[str]
    remaining: int
    def __init__(self, to_version: _Optional[int] = ..., rewrapped: _Optional[int] = ..., already: _Optional[int] = ..., busy: _Optional[_Iterable[str]] = ..., failed: _Optional[_Iterable[str]] = ..., remaining: _Optional[int] = ...) -> None: ...

class RewrapEvent(_message.Message):
    __slots__ = ("progress", "done")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    progress: RewrapProgress
    done: RewrapDone
    def __init__(self, progress: _Optional[_Union[RewrapProgress, _Mapping]] = ..., done: _Optional[_Union[RewrapDone, _Mapping]] = ...) -> None: ...

class WitnessStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RunWitnessRequest(_message.Message):
    __slots__ = ("partners",)
    PARTNERS_FIELD_NUMBER: _ClassVar[int]
    partners: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, partners: _Optional[_Iterable[str]] = ...) -> None: ...

class AcknowledgeWitnessRequest(_message.Message):
    __slots__ = ("partner",)
    PARTNER_FIELD_NUMBER: _ClassVar[int]
    partner: str
    def __init__(self, partner: _Optional[str] = ...) -> None: ...

class WitnessAlarm(_message.Message):
    __slots__ = ("raised_at", "reason", "size")
    RAISED_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    raised_at: int
    reason: str
    size: int
    def __init__(self, raised_at: _Optional[int] = ..., reason: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class WitnessedPartner(_message.Message):
    __slots__ = ("partner", "size", "root", "seen_at", "alarm", "outcome", "detail")
    PARTNER_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ROOT_FIELD_NUMBER: _ClassVar[int]
    SEEN_AT_FIELD_NUMBER: _ClassVar[int]
    ALARM_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    partner: str
    size: int
    root: str
    seen_at: int
    alarm: WitnessAlarm
    outcome: str
    detail: str
    def __init__(self, partner: _Optional[str] = ..., size: _Optional[int] = ..., root: _Optional[str] = ..., seen_at: _Optional[int] = ..., alarm: _Optional[_Union[WitnessAlarm, _Mapping]] = ..., outcome: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class WitnessCosignature(_message.Message):
    __slots__ = ("witness", "size", "at")
    WITNESS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    witness: str
    size: int
    at: int
    def __init__(self, witness: _Optional[str] = ..., size: _Optional[int] = ..., at: _Optional[int] = ...) -> None: ...

class WitnessStatusResponse(_message.Message):
    __slots__ = ("gateway_id", "partners", "cosignatures", "cosigned_checkpoint")
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    PARTNERS_FIELD_NUMBER: _ClassVar[int]
    COSIGNATURES_FIELD_NUMBER: _ClassVar[int]
    COSIGNED_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    gateway_id: str
    partners: _containers.RepeatedCompositeFieldContainer[WitnessedPartner]
    cosignatures: _containers.RepeatedCompositeFieldContainer[WitnessCosignature]
    cosigned_checkpoint: str
    def __init__(self, gateway_id: _Optional[str] = ..., partners: _Optional[_Iterable[_Union[WitnessedPartner, _Mapping]]] = ..., cosignatures: _Optional[_Iterable[_Union[WitnessCosignature, _Mapping]]] = ..., cosigned_checkpoint: _Optional[str] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("transfer_id", "reason")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    reason: str
    def __init__(self, transfer_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CancelResponse(_message.Message):
    __slots__ = ("transfer_id", "direction", "state", "partner_told", "detail")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PARTNER_TOLD_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    direction: str
    state: _common_pb2.TransferState
    partner_told: bool
    detail: str
    def __init__(self, transfer_id: _Optional[str] = ..., direction: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.TransferState, str]] = ..., partner_told: _Optional[bool] = ..., detail: _Optional[str] = ...) -> None: ...

class InboxItemsRequest(_message.Message):
    __slots__ = ("transfer_ids",)
    TRANSFER_IDS_FIELD_NUMBER: _ClassVar[int]
    transfer_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, transfer_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class InboxItemsResponse(_message.Message):
    __slots__ = ("changed", "unchanged")
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    changed: _containers.RepeatedScalarFieldContainer[str]
    unchanged: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, changed: _Optional[_Iterable[str]] = ..., unchanged: _Optional[_Iterable[str]] = ...) -> None: ...
