"""refreshbus wire protocol: the JSON envelope and the broker topology.

Imported by both the operator and the sidecar; stdlib only (checked by import-linter).
The human-readable description is docs/protocol.md.
"""

from refreshbus_wire.events import (
    CONTENT_TYPE,
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    Ack,
    AckResult,
    Action,
    EventType,
    Message,
    ProtocolError,
    RefreshEvent,
    RefreshRef,
    ReleaseRef,
    Scope,
    Source,
    SourceKind,
    Target,
    Timings,
    decode,
    encode,
    new_id,
    now,
)

__all__ = [
    "CONTENT_TYPE",
    "MAX_MESSAGE_BYTES",
    "PROTOCOL_VERSION",
    "Ack",
    "AckResult",
    "Action",
    "EventType",
    "Message",
    "ProtocolError",
    "RefreshEvent",
    "RefreshRef",
    "ReleaseRef",
    "Scope",
    "Source",
    "SourceKind",
    "Target",
    "Timings",
    "decode",
    "encode",
    "new_id",
    "now",
]
