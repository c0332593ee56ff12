"""Open Inference Protocol tensor encodings (KServe v2 / Triton): raw and typed contents.

Raw format (`raw_input_contents` / `raw_output_contents`): FP32 is little-endian
IEEE 754 in row-major order; BYTES is, per element, a little-endian uint32 length
followed by the bytes. Typed format: `InferTensorContents.bytes_contents` /
`fp32_contents`.
"""

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
            raise InvalidInput(
                f"BYTES tensor is truncated: element {len(items)} claims {size} bytes"
            )
        items.append(raw[position : position + size])
        position += size
    if len(items) != count:
        raise InvalidInput(f"BYTES tensor holds {len(items)} elements but its shape says {count}")
    return items


def decode_fp32(raw: bytes, shape: list[int]) -> np.ndarray:
    """A raw FP32 tensor as a float32 array of `shape`."""
    count = element_count(shape)
    if len(raw) != 4 * count:
        raise InvalidInput(
            f"FP32 tensor has {len(raw)} bytes but shape {list(shape)} needs {4 * count}"
        )
    return np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)


def typed_fp32(values, shape: list[int]) -> np.ndarray:
    """Typed `fp32_contents` as a float32 array of `shape`."""
    count = element_count(shape)
    if len(values) != count:
        raise InvalidInput(
            f"FP32 tensor holds {len(values)} values but shape {list(shape)} needs {count}"
        )
    return np.asarray(values, dtype=np.float32).reshape(shape)


def encode_bytes(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def encode_fp32(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array, dtype="<f4").tobytes()


def element_count(shape: list[int]) -> int:
    if any(dim < 0 for dim in shape):
        raise InvalidInput(
            f"input shape {list(shape)} has a negative dimension; send the actual sizes"
        )
    return math.prod(shape)
