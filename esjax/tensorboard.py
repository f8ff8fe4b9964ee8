"""Optional TensorBoard scalars beside ``metrics.jsonl``, in pure Python (no TensorFlow, no tensorboardX).

A tfevents file is a sequence of TFRecords (little endian)::

    uint64 n | uint32 masked_crc32c(those 8 bytes) | n bytes of data | uint32 masked_crc32c(data)
    masked_crc32c(x) = (rotr15(crc32c(x)) + 0xa282ead8) mod 2³²   (CRC-32C: Castagnoli, reflected 0x82f63b78)

and each record's data is a serialized ``tensorflow.Event`` protobuf: first {wall_time, file_version
"brain.Event:2"}, then one {wall_time, step, summary} per metrics row. The fields written (proto3 wire
format: key = field << 3 | wire type; 1 = fixed64, 0 = varint, 2 = length-delimited, 5 = fixed32)::

    Event    wall_time = 1 (double)   step = 2 (int64)   file_version = 3 (string)   summary = 5 (Summary)
    Summary  value = 1 (repeated Value)
    Value    tag = 1 (string)         simple_value = 2 (float)

TensorBoard reads ``simple_value`` as a scalar series named by ``tag``. :func:`read_events` parses such a
file back, checking every CRC (tests; inspecting a run without TensorBoard).
"""
from __future__ import annotations

import math
import numbers
import os
import socket
import struct
import time
from typing import Iterator, List, Mapping, Optional


def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``; crc32c(b"123456789") = 0xE3069283."""
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 → two's complement, as protobuf encodes negative int64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field_bytes(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def encode_event(wall_time: float, step: Optional[int] = None, scalars: Optional[Mapping[str, float]] = None,
                 file_version: Optional[str] = None) -> bytes:
    """A serialized Event (see the module docstring); ``scalars``: tag → value (float32 on the wire)."""
    out = bytearray(b"\x09" + struct.pack("<d", wall_time))
    if step is not None:
        out += b"\x10" + _varint(int(step))
    if file_version is not None:
        out += _field_bytes(3, file_version.encode())
    if scalars is not None:
        values = b"".join(_field_bytes(1, _field_bytes(1, tag.encode()) + b"\x15" + struct.pack("<f", v))
                          for tag, v in scalars.items())
        out += _field_bytes(5, values)
    return bytes(out)


def record(data: bytes) -> bytes:
    """One TFRecord framing ``data``."""
    n = struct.pack("<Q", len(data))
    return n + struct.pack("<I", masked_crc32c(n)) + data + struct.pack("<I", masked_crc32c(data))


def scalar_values(row: Mapping, skip=("iteration", "non_finite")) -> dict:
    """tag → float for a metrics row: real numbers (bools as 0/1) as they are, None (a non-finite value in a
    strict-JSON row, ``runs.safe_row``) as NaN; keys in ``skip`` are left out (the step, and safe_row's list
    of the non-finite keys, which the NaNs already show). Anything else is not a scalar: ValueError naming
    the key (nothing is dropped silently)."""
    out = {}
    for k, v in row.items():
        if k in skip:
            continue
        if v is None:
            out[k] = math.nan
        elif isinstance(v, numbers.Real):
            out[k] = float(v)
        else:
            raise ValueError(f"metric {k!r} = {v!r} is not a number: TensorBoard scalars take numbers only")
    return out


class EventWriter:
    """Appends scalar rows to a fresh ``events.out.tfevents.<time>.<host>.<pid>`` file in ``logdir``
    (TensorBoard merges every events file of a folder, so a resumed run adds a file beside the first).
    Use as a context manager or call :meth:`close`; each row is flushed to disk when written."""

    def __init__(self, logdir: str):
        os.makedirs(logdir, exist_ok=True)
        now = time.time()
        self.path = os.path.join(logdir, f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}.{os.getpid()}")
        self._f = open(self.path, "ab")
        self._write(encode_event(now, file_version="brain.Event:2"))

    def _write(self, data: bytes) -> None:
        self._f.write(record(data))
        self._f.flush()

    def add_scalars(self, row: Mapping, step: int, wall_time: Optional[float] = None) -> None:
        """One event holding every metric of ``row`` (see :func:`scalar_values`) at ``step``."""
        self._write(encode_event(time.time() if wall_time is None else wall_time, step, scalar_values(row)))

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _fields(buf: bytes, where: str) -> Iterator[tuple]:
    """(field number, wire type, value) of a protobuf message: varint → int, fixed64/32 → bytes,
    length-delimited → bytes."""
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i, where)
        field, wire = key >> 3, key & 7
        if wire == 0:
            val, i = _read_varint(buf, i, where)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            val, i = buf[i:i + size], i + size
        elif wire == 2:
            size, i = _read_varint(buf, i, where)
            val, i = buf[i:i + size], i + size
        else:
            raise ValueError(f"{where}: unsupported protobuf wire type {wire}")
        if i > len(buf):
            raise ValueError(f"{where}: truncated protobuf field {field}")
        yield field, wire, val


def _read_varint(buf: bytes, i: int, where: str):
    n = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError(f"{where}: truncated or overlong varint")
        b = buf[i]
        n |= (b & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not b & 0x80:
            return n, i


def read_events(path: str) -> List[dict]:
    """The events of a tfevents file as dicts {wall_time, step?, file_version?, scalars?}, every record's
    CRCs checked (ValueError naming the file and the record's byte offset otherwise)."""
    data = open(path, "rb").read()
    events, i = [], 0
    while i < len(data):
        where = f"{path}: record at byte {i}"
        if i + 12 > len(data):
            raise ValueError(f"{where}: truncated header")
        (n,) = struct.unpack("<Q", data[i:i + 8])
        if struct.unpack("<I", data[i + 8:i + 12])[0] != masked_crc32c(data[i:i + 8]):
            raise ValueError(f"{where}: length CRC mismatch")
        body = data[i + 12:i + 12 + n]
        if len(body) < n or i + 16 + n > len(data):
            raise ValueError(f"{where}: truncated data")
        if struct.unpack("<I", data[i + 12 + n:i + 16 + n])[0] != masked_crc32c(body):
            raise ValueError(f"{where}: data CRC mismatch")
        ev = {}
        for field, _, val in _fields(body, where):
            if field == 1:
                ev["wall_time"] = struct.unpack("<d", val)[0]
            elif field == 2:
                ev["step"] = val - (1 << 64) if val >= 1 << 63 else val
            elif field == 3:
                ev["file_version"] = val.decode()
            elif field == 5:
                scalars = ev.setdefault("scalars", {})
                for _, _, value in _fields(val, where):
                    tag, x = None, None
                    for f2, _, v2 in _fields(value, where):
                        if f2 == 1:
                            tag = v2.decode()
                        elif f2 == 2:
                            x = struct.unpack("<f", v2)[0]
                    scalars[tag] = x
        events.append(ev)
        i += 16 + n
    return events
