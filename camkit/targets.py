"""What to explain: turning a ``target`` argument into scores per sample.

A CAM explains a scalar score per sample. camkit accepts the target in the
forms users know from pytorch-grad-cam, TorchCAM and Captum:

* ``None``: each sample's predicted class (argmax of the model output);
* an ``int``: that class for every sample;
* a sequence of ints, or a 1-D integer tensor or array: one class per sample;
* a callable ``f(output) -> Tensor`` returning one score per sample, for
  segmentation, regression, multi-head models, or outputs that are tuples or
  dicts.

Several targets per sample at once: a 2-D integer tensor or array (or a list
of lists) of shape ``(N, k)``, or a callable returning ``(N, k)`` scores, gives
``k`` maps per sample from one forward pass, returned as ``(N, k, *spatial)``.

Class targets read the pre-softmax score from an ``(N, C)`` output, as the
Grad-CAM paper prescribes: the output itself, its ``.logits`` (a Hugging Face
``ModelOutput``), or its ``"logits"`` or ``"out"`` entry (a dict), so models
that return such containers need no callable for a class target.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch import Tensor

__all__ = ["ScoreFunction", "Target", "class_scores"]

ScoreFunction = Callable[[Any], Tensor]
"""A callable mapping the model output to ``(N,)`` scores, or ``(N, k)`` for k targets."""

Target = None | int | Sequence[int] | Sequence[Sequence[int]] | Tensor | np.ndarray | ScoreFunction
"""Every form the ``target`` argument of a CAM may take."""


def class_scores(output: Tensor, classes: Tensor) -> Tensor:
    """Pick class scores per sample from a classifier's ``(N, C)`` output.

    Args:
        output: The model's scores (logits), shape ``(N, C)``.
        classes: Class indices, shape ``(N,)`` or ``(N, k)``.

    Returns:
        ``output[i, classes[i]]`` for every sample, shaped like ``classes``.

    Example:
        >>> import torch
        >>> class_scores(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([1, 0]))
        tensor([2., 3.])
    """
    index = classes.to(output.device)
    return output.gather(1, index.view(len(index), -1)).view(index.shape)
