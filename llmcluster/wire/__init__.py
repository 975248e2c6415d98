"""The wire protocol: message kinds, their schemas, and the frame codec.

Depends on nothing else in the package. Every socket in llmcluster speaks it.
"""

from llmcluster.wire.codec import DecodeError, Message, decode, encode
from llmcluster.wire.messages import MAX_CONTROL_BYTES, PROTOCOL_VERSION, Kind

__all__ = [
    "MAX_CONTROL_BYTES",
    "PROTOCOL_VERSION",
    "DecodeError",
    "Kind",
    "Message",
    "decode",
    "encode",
]
