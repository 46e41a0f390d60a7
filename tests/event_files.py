"""TensorBoard event files read back without TensorBoard: each record is length (8 bytes), its CRC (4), an Event
protobuf (tensorboardX's own definition) and its CRC (4)."""

from __future__ import annotations

import struct
from pathlib import Path

from tensorboardX.proto import event_pb2


def scalars(folder: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of every scalar in the event files under ``folder``."""
    found: dict[str, dict[int, float]] = {}
    for path in sorted(Path(folder).rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                found.setdefault(value.tag, {})[int(event.step)] = value.simple_value
    return found


W_AND_B_HEADER = 7  # ":W&B", magic 0xBEE1, version
BLOCK = 32768  # LevelDB-log blocks: records of checksum (4), length (2), type (1: whole, 2-4: first/middle/last)


def wandb_records(folder: Path) -> list:
    """Every record of the W&B run files (``run-*.wandb``) under ``folder``, as W&B's own ``Record`` protobufs."""
    from wandb.proto import wandb_internal_pb2

    records = []
    for path in sorted(Path(folder).rglob("run-*.wandb")):
        data = path.read_bytes()
        offset, pending = W_AND_B_HEADER, b""
        while offset + 7 <= len(data):
            left_in_block = BLOCK - offset % BLOCK
            if left_in_block < 7:  # a block's tail too short for a record header is padding
                offset += left_in_block
                continue
            length, kind = struct.unpack("<HB", data[offset + 4:offset + 7])
            chunk = data[offset + 7:offset + 7 + length]
            offset += 7 + length
            if kind == 0 and length == 0:
                continue
            pending = chunk if kind in (1, 2) else pending + chunk
            if kind in (1, 4):
                records.append(wandb_internal_pb2.Record.FromString(pending))
                pending = b""
    return records


def wandb_history(folder: Path) -> dict[str, dict[int, float]]:
    """{key: {step: value}} of the numbers W&B logged under ``folder``, and the summary's under step -1."""
    import json

    found: dict[str, dict[int, float]] = {}
    for record in wandb_records(folder):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            step = int(items.get("_step", record.history.step.num))
            for key, value in items.items():
                if not key.startswith("_") and isinstance(value, (int, float)):
                    found.setdefault(key, {})[step] = float(value)
        elif kind == "summary":
            for item in record.summary.update:
                value, key = json.loads(item.value_json), item.key or "/".join(item.nested_key)
                if not key.startswith("_") and isinstance(value, (int, float)):
                    found.setdefault(key, {})[-1] = float(value)
    return found
