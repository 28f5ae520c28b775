"""CAM methods that weight channels by re-running the model on perturbed inputs or layers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camkit import _maps
from camkit.base import BaseCAM, LayerSpec
from camkit.context import LayerContext
from camkit.errors import CamkitValueError

__all__ = ["AblationCAM", "ScoreCAM"]


class _Batched(BaseCAM):
    """A method whose weights need ``N x C`` forward passes, run ``batch_size`` at a time."""

    needs_gradients = False
    differentiable_maps = False

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec | list[LayerSpec],
        *,
        batch_size: int = 64,
        **options: object,
    ) -> None:
        super().__init__(model, layer, **options)  # type: ignore[arg-type]
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise CamkitValueError(f"batch_size: got {batch_size!r}; allowed: a positive int")
        self.batch_size = batch_size

    def _rows(self, n: int, channels: int, device: torch.device) -> list[tuple[Tensor, Tensor]]:
        """(sample, channel) index pairs, ``batch_size`` per forward pass, on ``device``
        (indices already on the activations' device spare a host-to-device copy per pass)."""
        rows = torch.arange(n * channels, device=device)
        chunks = [rows[i : i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
        return [(r // channels, r % channels) for r in chunks]


class ScoreCAM(_Batched):
    r"""Score-CAM: each channel weighted by how much it alone raises the score.

    Wang et al., *Score-CAM: Score-Weighted Visual Explanations for
    Convolutional Neural Networks*, CVPR Workshops 2020,
    https://arxiv.org/abs/1910.01279.

    Each channel :math:`A^k`, upsampled to the input and min-max normalized to
    :math:`[0, 1]` (:math:`H^k`), masks the input; its score increase over the
    all-zero baseline input :math:`X_b` gives the weight:

    .. math::

        \alpha_k^c = \operatorname{softmax}_k\big(
            y^c(X \odot H^k) - y^c(X_b)\big),
        \qquad
        L^c = \mathrm{ReLU}\Big(\sum_k \alpha_k^c A^k\Big).

    The weights sum to 1 over channels. The ``N x C`` masked forward passes run
    ``batch_size`` at a time, without gradients.

    Args:
        model: As for :class:`~camkit.BaseCAM`.
        layer: As for :class:`~camkit.BaseCAM`.
        batch_size: Masked inputs per forward pass.
        **options: ``layout``, ``prefix_tokens``, ``grid`` as for :class:`~camkit.BaseCAM`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
        >>> ScoreCAM(model, "1", batch_size=8)(torch.randn(3, 1, 8, 8)).shape
        torch.Size([3, 8, 8])
    """

    def weights(self, context: LayerContext) -> Tensor:
        r"""Return :math:`\alpha_k^c`, a softmax over channels."""
        a, x = context.activations[:, 0], context.inputs
        n, channels = a.shape[:2]
        size = tuple(x.shape[2:])
        if a.dim() != x.dim():
            raise CamkitValueError(
                f"layer: Score-CAM masks the input with {context.layer!r}'s channels, which "
                f"have {a.dim() - 2} spatial dims while the input has {x.dim() - 2}"
            )
        samples = torch.arange(n, device=a.device)
        baseline = context.score_inputs(torch.zeros_like(x), samples)  # (N, k)
        scores = []
        for sample, channel in self._rows(n, channels, a.device):
            masks = _masks(a[sample, channel], size)
            masked = x[sample] * masks[:, None].to(x.dtype)
            scores.append(context.score_inputs(masked, sample))
        increase = torch.cat(scores).view(n, channels, -1) - baseline[:, None, :]
        return F.softmax(increase, dim=1).transpose(1, 2)


def _masks(channels: Tensor, size: tuple[int, ...]) -> Tensor:
    """Upsample ``(M, *spatial)`` channels to ``size`` and scale each to [0, 1]."""
    return _maps.min_max_normalize_(_maps.upsample(channels, size).contiguous())


class AblationCAM(_Batched):
    r"""Ablation-CAM: each channel weighted by the score drop when it is zeroed.

    Desai & Ramaswamy, *Ablation-CAM: Visual Explanations for Deep
    Convolutional Network via Gradient-free Localization*, WACV 2020,
    https://openaccess.thecvf.com/content_WACV_2020/html/Desai_Ablation-CAM_Visual_Explanations_for_Deep_Convolutional_Network_via_Gradient-free_Localization_WACV_2020_paper.html.

    With :math:`y^c_k` the score when channel :math:`k` of the layer's output
    is set to zero,

    .. math::

        w_k^c = \frac{y^c - y^c_k}{y^c},
        \qquad
        L^c = \mathrm{ReLU}\Big(\sum_k w_k^c A^k\Big).

    A score of exactly 0 is replaced by the smallest positive float32 so the
    division stays finite. The ``N x C`` ablated forward passes run
    ``batch_size`` at a time, without gradients; the layer's output is
    replaced through a hook that is removed afterwards, even on error.

    Args:
        model: As for :class:`~camkit.BaseCAM`.
        layer: As for :class:`~camkit.BaseCAM`.
        batch_size: Ablated copies per forward pass.
        **options: ``layout``, ``prefix_tokens``, ``grid`` as for :class:`~camkit.BaseCAM`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
        >>> AblationCAM(model, "1", batch_size=8)(torch.randn(3, 1, 8, 8)).shape
        torch.Size([3, 8, 8])
    """

    def weights(self, context: LayerContext) -> Tensor:
        """Return :math:`w_k^c`, the relative score drop of each ablated channel."""
        a = context.activations[:, 0]
        n, channels = a.shape[:2]
        scores = []
        every_channel = torch.arange(channels, device=a.device)
        for sample, channel in self._rows(n, channels, a.device):
            # a mask, not an indexed write, which would make the host wait for a GPU
            kept = (every_channel != channel[:, None]).view(
                len(sample), channels, *[1] * (a.dim() - 2)
            )
            ablated = torch.where(kept, a[sample], 0.0)
            scores.append(context.score_activations(ablated, sample))
        ablated_scores = torch.cat(scores).view(n, channels, -1).transpose(1, 2)  # (N, k, C)
        y = context.scores[:, :, None]
        tiny = torch.finfo(torch.float32).tiny
        return (y - ablated_scores) / torch.where(y == 0, tiny, y)
