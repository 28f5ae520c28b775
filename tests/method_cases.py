"""Shared cases of the method tests: input shapes, classes, nets with curvature, and the
raw signed maps and plain-autograd references they compare."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from tests.helpers import reference_activations_and_gradients

SHAPES = {1: (2, 2, 13), 2: (2, 2, 11, 9), 3: (2, 2, 7, 6, 8)}
CLASSES = torch.tensor([[1, 3], [4, 0]])


def raw_maps(cam: Any, x: Tensor, classes: Any = CLASSES) -> Tensor:
    return cam(x, classes, relu=False, upsample=False, normalize=False).double()


def reference(model: nn.Module, layer: str, x: Tensor, classes: Tensor = CLASSES) -> Any:
    a, g = reference_activations_and_gradients(model, model.get_submodule(layer), x, classes)
    return a, g


def smooth_net(dims: int = 2) -> nn.Sequential:
    """conv -> tanh -> conv ("2") -> softplus -> flatten -> linear: a tail with curvature."""
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    size = {1: 9, 2: 9 * 7, 3: 5 * 4 * 6}[dims]
    torch.manual_seed(1)
    return nn.Sequential(
        conv(2, 4, 3, padding=1),
        nn.Tanh(),
        conv(4, 3, 3, padding=1),
        nn.Softplus(),
        nn.Flatten(),
        nn.Linear(3 * size, 5),
    ).eval()


SMOOTH_SHAPES = {1: (2, 2, 9), 2: (2, 2, 9, 7), 3: (2, 2, 5, 4, 6)}
