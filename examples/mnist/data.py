"""Reading the MNIST IDX files shipped with the example, with every check a file deserves.

Each file is checked against ``SHA256SUMS``, then its IDX magic number, its
counts and its length. Any problem stops with :class:`MnistDataError` naming
the file and what is wrong.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

DEFAULT_ROOT = Path(__file__).parent / "data"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60_000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10_000),
}
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049
SIDE = 28


class MnistDataError(RuntimeError):
    """A MNIST file is missing, corrupt, truncated or not what it claims to be."""


@dataclass(frozen=True)
class Split:
    """One MNIST split: ``images`` float32 in [0, 1], ``(N, 1, 28, 28)``; ``labels`` int64."""

    images: Tensor
    labels: Tensor


def load_split(split: str, root: Path = DEFAULT_ROOT, verify: bool = True) -> Split:
    """Load the ``"train"`` or ``"test"`` split from ``root``, checking every file."""
    if split not in FILES:
        raise ValueError(f"split: got {split!r}; allowed: 'train', 'test'")
    image_file, label_file, count = FILES[split]
    sums = _read_sums(root) if verify else {}
    images = _read_idx(root / image_file, IMAGE_MAGIC, (count, SIDE, SIDE), sums)
    labels = _read_idx(root / label_file, LABEL_MAGIC, (count,), sums)
    if labels.max() > 9:
        raise MnistDataError(
            f"{root / label_file}: labels must be digits 0-9, found {labels.max()}"
        )
    pixels = torch.from_numpy(images).float().div_(255.0).unsqueeze(1)
    return Split(images=pixels, labels=torch.from_numpy(labels.astype(np.int64)))


def _read_sums(root: Path) -> dict[str, str]:
    path = root / "SHA256SUMS"
    if not path.is_file():
        raise MnistDataError(f"{path}: missing; it lists the SHA-256 of every MNIST file")
    sums = {}
    for line in path.read_text().splitlines():
        digest, _, name = line.partition("  ")
        sums[name.strip()] = digest.strip()
    return sums


def _read_idx(path: Path, magic: int, shape: tuple[int, ...], sums: dict[str, str]) -> np.ndarray:
    if not path.is_file():
        raise MnistDataError(f"{path}: missing; expected the MNIST file {path.name}")
    raw = path.read_bytes()
    if sums:
        expected = sums.get(path.name)
        actual = hashlib.sha256(raw).hexdigest()
        if expected is None:
            raise MnistDataError(f"{path}: not listed in SHA256SUMS")
        if actual != expected:
            raise MnistDataError(f"{path}: SHA-256 is {actual}, expected {expected} (corrupt file)")
    try:
        data = gzip.decompress(raw)
    except (OSError, EOFError) as error:
        raise MnistDataError(f"{path}: not a complete gzip file ({error})") from error
    header = 4 * (1 + len(shape))
    if len(data) < header:
        raise MnistDataError(f"{path}: {len(data)} bytes, too short for an IDX header")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise MnistDataError(f"{path}: magic number {found}, expected {magic}")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(len(shape)))
    if dims != shape:
        raise MnistDataError(f"{path}: header says shape {dims}, expected {shape}")
    size = int(np.prod(shape))
    if len(data) - header != size:
        raise MnistDataError(
            f"{path}: {len(data) - header} data bytes, expected {size} (truncated)"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


def standardize(images: Tensor, mean: float, std: float) -> Tensor:
    """``(images - mean) / std``, the network's input scaling."""
    return (images - mean) / std
