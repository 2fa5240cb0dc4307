"""Tensors and plain values in and out of Flower records, and the bytes a message puts on
Flower's transport.

Flower 1.42 moves a message as a content-less Message protobuf (metadata and a tree of object
ids, in PushMessages/PullMessages) plus one request per content-addressed object (the
RecordDict, each ArrayRecord and ConfigRecord, each Array and its chunks): `wire_bytes` sums
exactly those (each object's `deflate()` bytes are the payload of its request), `payload_bytes`
the raw tensor bytes among them. The SuperLink's own per-run counter (`flwr ls --format json`,
"network-traffic") is read by the launcher beside it (dept_core/federation.py).
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.app.message import remove_content_from_message
from flwr.common.serde import message_to_proto
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree


def arrays(tensors: dict[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord({k: v.detach().cpu().contiguous() for k, v in tensors.items()})


def tensors(record: ArrayRecord | None) -> dict[str, torch.Tensor]:
    return {} if record is None else dict(record.to_torch_state_dict())


def config(values: dict) -> ConfigRecord:
    return ConfigRecord({k: v for k, v in values.items() if v is not None})


def payload_bytes(msg: Message) -> int:
    """Raw tensor bytes in the message's ArrayRecords (what the ledger counts)."""
    total = 0
    for record in msg.content.array_records.values():
        for arr in record.values():
            total += int(np.prod(arr.shape, dtype=np.int64)) * np.dtype(arr.dtype).itemsize
    return total


def wire_bytes(msg: Message) -> int:
    """Bytes of the message's protobufs on the transport: its objects' payloads, the
    content-less message and its object tree (HTTP framing not counted)."""
    objs = get_all_nested_objects(msg)
    header = remove_content_from_message(msg) if msg.has_content() else msg
    return (sum(len(o.deflate()) for o in objs.values())
            + message_to_proto(header).ByteSize() + get_object_tree(msg).ByteSize())
