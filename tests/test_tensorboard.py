"""The pure-Python TensorBoard writer: CRC-32C against its published check value, the Event bytes
against the protobuf library's own parser of the same schema, a written file read back, and corruption
and non-numeric metrics refused by name."""
import math
import os
import struct

import pytest

from esjax.tensorboard import EventWriter, crc32c, encode_event, masked_crc32c, read_events, record


def _event_class():
    """tensorflow.Event / Summary / Summary.Value (the fields esjax writes), built with protobuf itself."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="esjax_test_event.proto", package="tbtest", syntax="proto3")
    summary = fdp.message_type.add(name="Summary")
    value = summary.nested_type.add(name="Value")
    value.field.add(name="tag", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    value.field.add(name="simple_value", number=2, type=F.TYPE_FLOAT, label=F.LABEL_OPTIONAL)
    summary.field.add(name="value", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
                      type_name=".tbtest.Summary.Value")
    event = fdp.message_type.add(name="Event")
    event.field.add(name="wall_time", number=1, type=F.TYPE_DOUBLE, label=F.LABEL_OPTIONAL)
    event.field.add(name="step", number=2, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    event.field.add(name="file_version", number=3, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    event.field.add(name="summary", number=5, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL, type_name=".tbtest.Summary")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tbtest.Event"))


def test_crc32c_check_value_and_mask():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C catalogue's check value
    assert crc32c(b"") == 0 and crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4: 32 bytes of zeros
    c = crc32c(b"abc")
    assert masked_crc32c(b"abc") == ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def test_event_bytes_parse_with_protobuf():
    Event = _event_class()
    ev = Event.FromString(encode_event(1234.5, 300, {"reward_mean": 0.25, "eval/countdown/accuracy": -1.5e-3}))
    assert ev.wall_time == 1234.5 and ev.step == 300
    assert [(v.tag, v.simple_value) for v in ev.summary.value] == [
        ("reward_mean", 0.25), ("eval/countdown/accuracy", pytest.approx(-1.5e-3, rel=1e-7))]
    first = Event.FromString(encode_event(1.0, file_version="brain.Event:2"))
    assert first.file_version == "brain.Event:2" and not first.HasField("summary")
    assert Event.FromString(encode_event(0.0, -3)).step == -3  # int64 two's complement varint
    # and the reverse: protobuf's serialization of the same event is byte-identical
    ref = Event(wall_time=2.0, step=7)
    ref.summary.value.add(tag="loss", simple_value=1.5)
    assert ref.SerializeToString() == encode_event(2.0, 7, {"loss": 1.5})


def test_writer_round_trip_and_corruption(tmp_path):
    with EventWriter(str(tmp_path / "tb")) as w:
        w.add_scalars({"iteration": 1, "reward_mean": 0.5, "optimizer_updates": 2, "kl": None, "ok": True,
                       "non_finite": ["kl"]}, 1)
        w.add_scalars({"iteration": 2, "reward_mean": float("inf")}, 2, wall_time=10.0)
    assert os.path.basename(w.path).startswith("events.out.tfevents.")
    evs = read_events(w.path)
    assert evs[0]["file_version"] == "brain.Event:2" and [e.get("step") for e in evs] == [None, 1, 2]
    s1 = evs[1]["scalars"]
    assert s1["reward_mean"] == 0.5 and s1["optimizer_updates"] == 2.0 and s1["ok"] == 1.0 and math.isnan(s1["kl"])
    assert "iteration" not in s1 and "non_finite" not in s1 and evs[2]["scalars"] == {"reward_mean": math.inf} and evs[2]["wall_time"] == 10.0
    with pytest.raises(ValueError, match="metric 'note' = 'x' is not a number"):
        EventWriter(str(tmp_path / "tb2")).add_scalars({"note": "x"}, 1)
    data = bytearray(open(w.path, "rb").read())
    second = len(record(encode_event(0.0, file_version="brain.Event:2")))  # byte offset of record 2
    data[second + 20] ^= 1  # a flipped bit inside record 2's data
    open(w.path, "wb").write(bytes(data))
    with pytest.raises(ValueError, match=f"record at byte {second}: data CRC mismatch"):
        read_events(w.path)
    open(w.path, "wb").write(bytes(data[:second + 10]))
    with pytest.raises(ValueError, match="truncated"):
        read_events(w.path)
    n = struct.unpack("<Q", bytes(data[:8]))[0]
    assert n == len(encode_event(0.0, file_version="brain.Event:2"))
