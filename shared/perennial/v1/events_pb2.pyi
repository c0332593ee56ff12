import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Event(_message.Message):
    __slots__ = ("time", "adapter", "source", "snapshot_published", "promoted", "held", "rolled_back", "dead_lettered", "fell_back")
    TIME_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    PROMOTED_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    ROLLED_BACK_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERED_FIELD_NUMBER: _ClassVar[int]
    FELL_BACK_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    adapter: str
    source: str
    snapshot_published: SnapshotPublished
    promoted: Promoted
    held: Held
    rolled_back: RolledBack
    dead_lettered: DeadLettered
    fell_back: FellBack
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., adapter: _Optional[str] = ..., source: _Optional[str] = ..., snapshot_published: _Optional[_Union[SnapshotPublished, _Mapping]] = ..., promoted: _Optional[_Union[Promoted, _Mapping]] = ..., held: _Optional[_Union[Held, _Mapping]] = ..., rolled_back: _Optional[_Union[RolledBack, _Mapping]] = ..., dead_lettered: _Optional[_Union[DeadLettered, _Mapping]] = ..., fell_back: _Optional[_Union[FellBack, _Mapping]] = ...) -> None: ...

class SnapshotPublished(_message.Message):
    __slots__ = ("version", "parent", "examples", "sha256")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    version: str
    parent: str
    examples: int
    sha256: str
    def __init__(self, version: _Optional[str] = ..., parent: _Optional[str] = ..., examples: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class Promoted(_message.Message):
    __slots__ = ("version", "previous", "forced")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    FORCED_FIELD_NUMBER: _ClassVar[int]
    version: str
    previous: str
    forced: bool
    def __init__(self, version: _Optional[str] = ..., previous: _Optional[str] = ..., forced: _Optional[bool] = ...) -> None: ...

class Held(_message.Message):
    __slots__ = ("version", "head", "candidate_accuracy", "head_accuracy", "margin", "reason")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    HEAD_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    MARGIN_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    version: str
    head: str
    candidate_accuracy: float
    head_accuracy: float
    margin: float
    reason: str
    def __init__(self, version: _Optional[str] = ..., head: _Optional[str] = ..., candidate_accuracy: _Optional[float] = ..., head_accuracy: _Optional[float] = ..., margin: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class RolledBack(_message.Message):
    __slots__ = ("version", "previous")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    version: str
    previous: str
    def __init__(self, version: _Optional[str] = ..., previous: _Optional[str] = ...) -> None: ...

class DeadLettered(_message.Message):
    __slots__ = ("reason", "message", "topic", "partition", "offset", "sampled_of")
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    SAMPLED_OF_FIELD_NUMBER: _ClassVar[int]
    reason: str
    message: str
    topic: str
    partition: int
    offset: int
    sampled_of: int
    def __init__(self, reason: _Optional[str] = ..., message: _Optional[str] = ..., topic: _Optional[str] = ..., partition: _Optional[int] = ..., offset: _Optional[int] = ..., sampled_of: _Optional[int] = ...) -> None: ...

class FellBack(_message.Message):
    __slots__ = ("corrupted", "version", "reason", "message")
    CORRUPTED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    corrupted: str
    version: str
    reason: str
    message: str
    def __init__(self, corrupted: _Optional[str] = ..., version: _Optional[str] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...
