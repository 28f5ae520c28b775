"""A map with no information in it, to measure the other methods against."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from camkit._engine.option_checks import seed_or_none
from camkit.base import BaseCAM, LayerSpec
from camkit.context import LayerContext

__all__ = ["RandomCAM"]


class RandomCAM(BaseCAM):
    r"""Random-CAM: the layer's channels with random weights, a baseline for the metrics.

    pytorch-grad-cam's ``RandomCAM``: each weight drawn uniformly from
    :math:`[-1, 1]`, independently per sample, target and channel,

    .. math::

        w_k \sim \mathcal{U}(-1, 1), \qquad L = \mathrm{ReLU}\Big(\sum_k w_k A^k\Big).

    A method that scores no better than Random-CAM on a metric has shown
    nothing on it; unlike a uniform-noise map, Random-CAM keeps the layer's
    spatial structure, so it is the harder baseline for localization metrics.

    Args:
        model: As for :class:`~camkit.BaseCAM`.
        layer: As for :class:`~camkit.BaseCAM`.
        seed: Seed of a generator made for each call (the same weights every call);
            ``None`` draws from torch's global generator. The weights are drawn for
            the whole batch, so a sample's map depends on the batch it is in: the
            same batch gives the same maps, the sample alone another.
        **options: ``layout``, ``prefix_tokens``, ``grid`` as for :class:`~camkit.BaseCAM`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
        >>> RandomCAM(model, "1", seed=0)(torch.randn(3, 1, 8, 8)).shape
        torch.Size([3, 8, 8])
    """

    needs_gradients = False
    differentiable = False
    not_differentiable_because = "its weights are random draws, a baseline and not a signal"

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec | list[LayerSpec],
        *,
        seed: int | None = None,
        **options: object,
    ) -> None:
        super().__init__(model, layer, **options)  # type: ignore[arg-type]
        self.seed = seed_or_none(seed)

    def settings(self) -> dict[str, Any]:
        """The shared settings and ``seed``."""
        return {**super().settings(), "seed": self.seed}

    def weights(self, context: LayerContext) -> Tensor:
        """Return weights drawn from :math:`\\mathcal{U}(-1, 1)`, ``(N, k, C)``."""
        a = context.activations
        shape = (a.shape[0], context.scores.shape[1], a.shape[2])
        generator = None
        if self.seed is not None:
            generator = torch.Generator(a.device).manual_seed(self.seed)
        return torch.rand(shape, generator=generator, device=a.device) * 2 - 1
