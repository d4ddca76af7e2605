"""Confluent Schema Registry wire format (SPEC §12): magic byte 0, a 4-byte big-endian schema id, then the payload.

JSON never starts with byte 0, so a leading 0 can only be a frame: one too short to hold an id and a payload is
`invalid_json`. Values without the magic byte pass through untouched.
"""

from __future__ import annotations

from typing import Final, NamedTuple

MAGIC: Final = 0
FRAME_BYTES: Final = 5


class Unframed(NamedTuple):
    payload: bytes
    schema_id: int | None


def unframe(value: bytes) -> Unframed | None:
    """The payload and schema id of a framed value, the value itself (id None) when unframed, or None when the value
    starts with the magic byte but holds no frame and payload."""
    if value[:1] != b"\x00":
        return Unframed(value, None)
    if len(value) <= FRAME_BYTES:
        return None
    return Unframed(value[FRAME_BYTES:], int.from_bytes(value[1:FRAME_BYTES], "big"))


def frame(payload: bytes, schema_id: int) -> bytes:
    """The framed form of `payload`, as a Confluent serializer writes it (tests, `publish`)."""
    return bytes([MAGIC]) + schema_id.to_bytes(4, "big") + payload
