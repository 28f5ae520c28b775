"""What identifies the model and the dataset a store's maps came from.

A resumed run must explain the same model on the same data, or it would mix
two runs' maps in one store. The model is identified by the SHA-256 of every
parameter and buffer (names, shapes, dtypes and bytes). The dataset is
identified by its length and the SHA-256 of :data:`SAMPLED` items, drawn at
seeded positions (the first and the last among them): reading a few items costs
little, and catches another dataset, another split, other preprocessing, a
reordered dataset, and random augmentations (which would give other maps on
every run). It cannot catch a change confined to items it does not read (one
image replaced among thousands); the ``sources`` a run can record (each item's
file name, say) are compared as a whole.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

SAMPLED = 16
"""How many of the dataset's items the fingerprint reads."""


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the model's parameters and buffers: names, dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        _fold(digest, tensor)
    return digest.hexdigest()


def sampled_positions(length: int) -> list[int]:
    """The dataset positions the fingerprint reads: the first, the last, and a seeded
    sample of the rest, in order (the same for every run on a dataset of this length)."""
    rest = range(1, length - 1)
    chosen = random.Random(f"camkit-{length}").sample(rest, min(SAMPLED - 2, len(rest)))
    return sorted({0, length - 1, *chosen})


def dataset_fingerprint(dataset: Any, collate: Any) -> dict[str, Any]:
    """The positions read and the SHA-256 of those items, each batched alone by ``collate``
    (the loader's collate function: the tensors the model would see, before any move)."""
    positions = sampled_positions(len(dataset))
    digest = hashlib.sha256()
    for position in positions:
        digest.update(str(position).encode())
        _fold(digest, collate([dataset[position]]))
    return {"items": positions, "sha256": digest.hexdigest()}


def _fold(digest: Any, value: Any) -> None:
    """Fold ``value`` (tensors, arrays, numbers, strings, and containers of them) into
    ``digest``, its types and shapes included."""
    if isinstance(value, Tensor):
        data = value.detach().cpu().contiguous().reshape(-1)
        digest.update(str((data.dtype, tuple(value.shape))).encode())
        if data.numel():
            digest.update(data.view(torch.uint8).numpy().tobytes())
    elif isinstance(value, np.ndarray):
        digest.update(str((value.dtype.str, value.shape)).encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, Mapping):
        digest.update(b"{")
        for key in sorted(value, key=str):
            digest.update(str(key).encode())
            _fold(digest, value[key])
        digest.update(b"}")
    elif isinstance(value, (list, tuple)):
        digest.update(b"[")
        for item in value:
            _fold(digest, item)
        digest.update(b"]")
    else:
        digest.update(repr(value).encode())
