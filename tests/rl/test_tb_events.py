"""The hand-written TensorBoard event files: checksums against the standard's check
value, and files that TensorBoard's own reader loads (it verifies every record's CRCs)."""

import os

from rlfleet.rl.metrics import MetricsLogger
from rlfleet.rl.tb_events import EventWriter, _varint, crc32c, masked_crc


def test_crc32c_matches_the_standard_check_value_and_tensorboards_masking():
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    assert crc32c(b"123456789") == 0xE3069283  # CRC-32C's published check value
    assert crc32c(b"") == 0
    for data in (b"", b"a", b"123456789", bytes(range(256)) * 3):
        assert masked_crc(data) == masked_crc32c(data)


def test_varints_as_protobuf_encodes_them():
    assert _varint(0) == b"\x00"
    assert _varint(1) == b"\x01"
    assert _varint(300) == b"\xac\x02"  # the protobuf documentation's example
    assert _varint(-1) == b"\xff" * 9 + b"\x01"


def load(path):
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    return list(LegacyEventFileLoader(path).Load())


def test_tensorboard_reads_back_every_scalar_with_its_step(tmp_path):
    writer = EventWriter(str(tmp_path))
    writer.add_scalars(0, [("a", 1.5), ("b/c", -2.0)])
    writer.add_scalars(2**40, [("a", 3.25)])
    writer.close()
    [name] = os.listdir(tmp_path)
    assert name.startswith("events.out.tfevents.")
    events = load(os.path.join(tmp_path, name))
    assert events[0].file_version == "brain.Event:2"
    got = [(e.step, v.tag, v.simple_value) for e in events[1:] for v in e.summary.value]
    assert got == [(0, "a", 1.5), (0, "b/c", -2.0), (2**40, "a", 3.25)]


def test_a_corrupted_record_is_dropped_by_tensorboards_crc_check(tmp_path):
    writer = EventWriter(str(tmp_path))
    writer.add_scalars(7, [("x", 1.0)])
    writer.close()
    path = writer.path
    assert [e.step for e in load(path)] == [0, 7]
    data = bytearray(open(path, "rb").read())
    data[-6] ^= 0xFF  # a byte of the last record's data: its CRC no longer matches
    open(path, "wb").write(bytes(data))
    assert [e.step for e in load(path)] == [0]  # the reader checks our checksums


def test_the_logger_writes_numbers_only_and_skips_flags_and_non_finite_values(tmp_path):
    logger = MetricsLogger(str(tmp_path), console=False, log=["tensorboard"])
    logger.log({"iteration": 1, "env_steps": 128, "episode_return_mean": float("nan"), "loss": 0.5,
                "episode_window_full": True, "name": "x"})
    logger.close()
    [name] = [n for n in os.listdir(tmp_path) if n.startswith("events.out")]
    events = load(os.path.join(tmp_path, name))
    assert [(e.step, v.tag, v.simple_value) for e in events[1:] for v in e.summary.value] == [
        (128, "iteration", 1.0), (128, "env_steps", 128.0), (128, "loss", 0.5)]
