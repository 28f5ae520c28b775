"""Training the MNIST ConvNet on confounded MNIST: plainly, guided by camkit maps, or by RRR.

Every run trains a fresh :class:`~examples.mnist.model.MnistNet` with the same
seed, data order, optimizer and schedule; only the loss differs:

* ``plain``: cross-entropy.
* ``camkit``: cross-entropy plus ``weight`` times the mean over the batch of
  the sum, over the square's pixels, of the squared camkit map: one call of
  ``explain(..., differentiable=True)`` gives both the logits for the
  cross-entropy and the maps, from one forward pass.
* ``rrr``: Ross et al., *Right for the Right Reasons* (IJCAI 2017): plus
  ``weight`` times the squared input gradient of the summed log-probabilities
  over the square's pixels.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

import camkit
from examples.confounded.data import Confounded
from examples.mnist.data import standardize
from examples.mnist.model import MnistNet
from examples.mnist.train import Checkpoint, one_cycle

SCORES: dict[str, Callable[[Tensor], Callable[[Tensor], Tensor] | Tensor]] = {
    "logit": lambda labels: labels,
    "all log-probabilities": lambda labels: lambda out: out.log_softmax(1).sum(1),
}
"""What a camkit guide explains, from the batch's labels: a camkit target."""


@dataclass(frozen=True)
class Guide:
    """How one training run is guided.

    Attributes:
        name: The run's name in the report.
        kind: ``"plain"``, ``"camkit"`` or ``"rrr"``.
        method: The camkit method's class name (``kind="camkit"``).
        layer: The layer it explains.
        score: A key of :data:`SCORES`: the label's logit, or the sum of all
            log-probabilities (RRR's choice).
        relu: Whether the map keeps positive evidence only (the default maps) or is signed.
        normalize: Whether each map is scaled to [0, 1] before the penalty.
        upsample: Whether the penalty reads the map upsampled to the input, over the
            square's pixels, or at the layer's resolution, over every cell whose receptive
            field touches the square (see :func:`layer_masks`).
        weight: The penalty's weight.
    """

    name: str
    kind: str = "plain"
    method: str = "HiResCAM"
    layer: str = "features.relu"
    score: str = "logit"
    relu: bool = False
    normalize: bool = False
    upsample: bool = True
    weight: float = 1.0


def train_guided(
    data: Confounded,
    guide: Guide,
    *,
    epochs: int = 3,
    batch_size: int = 128,
    lr: float = 0.01,
    seed: int = 0,
    progress: bool = True,
) -> tuple[Checkpoint, float]:
    """Train a fresh network under ``guide``; return it and the training time in seconds."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    images, labels = data.split.images, data.split.labels
    mean, std = float(images.mean()), float(images.std())
    x = standardize(images, mean, std)
    model = MnistNet()
    step = _step_function(model, guide)
    optimizer, schedule = one_cycle(model, lr, epochs * math.ceil(len(x) / batch_size))
    started = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        bar = tqdm(
            range(0, len(x), batch_size),
            desc=f"{guide.name}: epoch {epoch + 1}/{epochs}",
            unit="batch",
            disable=not progress,
            mininterval=0.5,
        )
        for start in bar:
            index = order[start : start + batch_size]
            task, penalty = step(x[index], labels[index], data.masks[index])
            optimizer.zero_grad(set_to_none=True)
            (task + penalty).backward()
            optimizer.step()
            schedule.step()
            bar.set_postfix(
                {"loss": f"{task.item():.3f}", "penalty": f"{penalty.item():.3f}"}, refresh=False
            )
    return Checkpoint(model.eval(), mean, std), time.perf_counter() - started


RECEPTIVE_FIELDS = {"features.relu1": (5, 1), "features.relu": (14, 2)}
"""Each explained layer's receptive field in input pixels, and its stride: a cell of
``features.relu`` (8 x 8) sees 14 x 14 input pixels, two apart."""


def layer_masks(masks: Tensor, layer: str) -> Tensor:
    """The cells of ``layer`` whose receptive field touches the masked pixels ``(N, 1, H, W)``."""
    size, stride = RECEPTIVE_FIELDS[layer]
    return F.max_pool2d(masks, size, stride)


Step = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
"""``step(x, labels, masks) -> (task loss, penalty)``, both in the autograd graph."""


def _step_function(model: MnistNet, guide: Guide) -> Step:
    if guide.kind == "plain":
        return lambda x, y, masks: (F.cross_entropy(model(x), y), torch.zeros(()))
    if guide.kind == "rrr":
        return lambda x, y, masks: _rrr_step(model, guide.weight, x, y, masks)
    if guide.kind == "camkit":
        cam = getattr(camkit, guide.method)(model, guide.layer)
        target = SCORES[guide.score]

        def step(x: Tensor, y: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
            explained = cam.explain(
                x,
                target(y),
                differentiable=True,
                relu=guide.relu,
                normalize=guide.normalize,
                upsample=guide.upsample,
            )
            region = masks if guide.upsample else layer_masks(masks, guide.layer)
            penalty = (explained.maps[:, None] * region).square().sum() / len(x)
            return F.cross_entropy(explained.output, y), guide.weight * penalty

        return step
    raise ValueError(f"guide.kind: got {guide.kind!r}; allowed: 'plain', 'camkit', 'rrr'")


def _rrr_step(
    model: MnistNet, weight: float, x: Tensor, y: Tensor, masks: Tensor
) -> tuple[Tensor, Tensor]:
    """Ross et al.'s loss: ``weight * sum (mask * d/dx sum_k log p_k)^2``, per sample."""
    x = x.clone().requires_grad_(True)
    logits = model(x)
    (gradient,) = torch.autograd.grad(logits.log_softmax(1).sum(), x, create_graph=True)
    penalty = (masks * gradient).square().sum() / len(x)
    return F.cross_entropy(logits, y), weight * penalty
