"""Training the example's networks: seeded, Adam, a few epochs on the CPU."""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from examples.volumes.data import Placed

HERE = Path(__file__).parent
WEIGHTS = {"volume": HERE / "volume-weights.pt", "clip": HERE / "clip-weights.pt"}
"""The shipped weights of each network, trained by ``python -m examples.volumes --train``."""


def train(
    model: nn.Module,
    data: Placed,
    *,
    epochs: int = 4,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = True,
) -> float:
    """Train ``model`` in place with Adam and cross-entropy; returns the seconds it took."""
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * -(-len(data.labels) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    model.train()
    bar = tqdm(total=steps, desc=f"training {type(model).__name__}", disable=not progress)
    for _ in range(epochs):
        order = torch.randperm(len(data.labels), generator=generator)
        for rows in order.split(batch_size):
            loss = F.cross_entropy(model(data.inputs[rows]), data.labels[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    return time.perf_counter() - started


@torch.no_grad()
def accuracy(model: nn.Module, inputs: Tensor, labels: Tensor, batch_size: int = 256) -> float:
    """The fraction of inputs whose predicted class is the label."""
    hits = sum(
        int((model(x).argmax(1) == y).sum())
        for x, y in zip(inputs.split(batch_size), labels.split(batch_size), strict=True)
    )
    return hits / len(labels)
