"""Open Inference Protocol tensor encodings (KServe v2 / Triton raw format)."""

from __future__ import annotations

import math
import struct

import numpy as np

from perennial.errors import InvalidInput


def decode_bytes(raw: bytes, count: int) -> list[bytes]:
    """Split a raw BYTES tensor: each element is a little-endian uint32 length, then the bytes."""
    items, position = [], 0
    while position < len(raw):
        if position + 4 > len(raw):
            raise InvalidInput("BYTES tensor is truncated: a 4-byte length prefix is incomplete")
        (size,) = struct.unpack_from("<I", raw, position)
        position += 4
        if position + size > len(raw):
            raise InvalidInput(f"BYTES tensor is truncated: element {len(items)} claims {size} bytes")
        items.append(raw[position : position + size])
        position += size
    if len(items) != count:
        raise InvalidInput(f"BYTES tensor holds {len(items)} elements but its shape says {count}")
    return items


def encode_bytes(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def encode_fp32(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array, dtype="<f4").tobytes()


def element_count(shape: list[int]) -> int:
    if any(dim < 0 for dim in shape):
        raise InvalidInput(f"input shape {list(shape)} has a negative dimension")
    return math.prod(shape)
