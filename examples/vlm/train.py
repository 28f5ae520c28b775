"""Training the example's model: seeded, Adam, teacher forcing on the answers."""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from examples.vlm.data import PROMPT, Canvases, prompts

WEIGHTS = Path(__file__).parent / "weights.pt"
"""The shipped weights, trained by ``python -m examples.vlm --save-weights``."""


def train(
    model: nn.Module,
    data: Canvases,
    *,
    epochs: int = 6,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool = True,
) -> float:
    """Train ``model`` in place (cross-entropy of each answer token given the ones before
    it); returns the seconds it took."""
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * -(-len(data) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    model.train()
    bar = tqdm(total=steps, desc="training the digit teller", disable=not progress)
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=generator)
        for rows in order.split(batch_size):
            answers = data.answers[rows]
            sequence = torch.cat([prompts(len(rows)), answers], 1)
            logits = model(data.images[rows], sequence)[:, PROMPT - 1 : -1]
            loss = F.cross_entropy(logits.flatten(0, 1), answers.flatten())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    return time.perf_counter() - started
