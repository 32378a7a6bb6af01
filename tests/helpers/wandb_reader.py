"""Read the metrics back from an offline W&B run file (``run-*.wandb``).

The file is a ``:W&B`` header (7 bytes) followed by 32 KiB blocks of records, each with a
7-byte header (crc uint32, length uint16, type uint8: 1 full, 2 first, 3 middle, 4 last);
a record's payload is a protobuf ``wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK, HEADER = 32 * 1024, 7


def records(path: str | Path):
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file.")
    pos, parts = HEADER, []
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        pos += HEADER
        if kind == 0 and length == 0:  # zero padding to the end of the block
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0
            continue
        if pos + length > len(data):  # a record still being written: the file ends mid-record
            break
        parts.append(data[pos:pos + length])
        pos += length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            parts = []
            yield record


def settled(path: str | Path, timeout: float = 20.0) -> Path:
    """``path`` once its size has stopped changing (wandb's writer process may still be flushing after
    ``wandb.finish()`` returns)."""
    import time

    path, last, deadline = Path(path), -1, time.time() + timeout
    while time.time() < deadline:
        size = path.stat().st_size
        if size == last:
            break
        last = size
        time.sleep(0.5)
    return path


def history(path: str | Path) -> list[dict]:
    """One dict per logged history row: {metric key: value}."""
    path = settled(path)
    rows = []
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append({"/".join(item.nested_key) or item.key: json.loads(item.value_json)
                         for item in record.history.item})
    return rows
