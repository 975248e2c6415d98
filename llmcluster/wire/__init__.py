"""The wire: message kinds and bodies, output records, their schema and the frame codec.

Depends on nothing else in the package. The control plane and the telemetry plane speak
``codec``; the training plane's peer frames are ``llmcluster.comm.frames``.
"""

from llmcluster.wire.codec import Message, decode, encode, send_frames
from llmcluster.wire.messages import (
    AGENT_SRC,
    COORDINATOR_SRC,
    HEARTBEAT_S,
    MAX_CONTROL_BYTES,
    OBSERVER_SRC,
    PROTOCOL_VERSION,
    Kind,
)
from llmcluster.wire.schema import DecodeError, from_wire, to_wire

__all__ = [
    "AGENT_SRC",
    "COORDINATOR_SRC",
    "HEARTBEAT_S",
    "MAX_CONTROL_BYTES",
    "OBSERVER_SRC",
    "PROTOCOL_VERSION",
    "DecodeError",
    "Kind",
    "Message",
    "decode",
    "encode",
    "from_wire",
    "send_frames",
    "to_wire",
]
