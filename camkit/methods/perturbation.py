"""CAM methods that weight channels by re-running the model on perturbed inputs or layers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camkit._engine import map_ops
from camkit._engine.option_checks import non_negative, positive_int, seed_or_none
from camkit.base import BaseCAM, LayerSpec
from camkit.context import LayerContext
from camkit.errors import CamkitValueError

__all__ = ["ISCAM", "SSCAM", "AblationCAM", "ScoreCAM"]


def _chunks(rows: Tensor, batch_size: int) -> list[Tensor]:
    return [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]


class ScoreCAM(BaseCAM):
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

    The weights sum to 1 over channels. A softmax does not change when the
    same number is subtracted from all its inputs, so :math:`y^c(X_b)` cancels
    and is not computed. The ``N x C`` masked forward passes run
    ``batch_size`` at a time, without gradients; a constant channel (all
    zeros after a ReLU), whose mask is all zeros, masks the input to zeros,
    so its score is computed once per sample instead of once per channel.

    **Top channels only** (the "Faster Score-CAM" of the Score-CAM authors'
    code): with ``top_channels=K``, only the ``K`` channels of each sample
    with the largest spatial variance of :math:`A^k` (``rank_by="variance"``)
    or mean (``rank_by="mean"``) mask the input; the softmax runs over those,
    and the other channels get weight 0. ``N x K`` forward passes instead of
    ``N x C``.

    Args:
        model: As for :class:`~camkit.BaseCAM`.
        layer: As for :class:`~camkit.BaseCAM`.
        batch_size: Masked inputs per forward pass.
        top_channels: Mask with only this many channels per sample (all when
            ``None``, or when the layer has fewer).
        rank_by: How ``top_channels`` ranks channels: ``"variance"`` or ``"mean"``
            of each channel's activations over its positions.
        **options: ``layout``, ``prefix_tokens``, ``grid`` as for :class:`~camkit.BaseCAM`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
        >>> ScoreCAM(model, "1", batch_size=8)(torch.randn(3, 1, 8, 8)).shape
        torch.Size([3, 8, 8])
        >>> ScoreCAM(model, "1", top_channels=2)(torch.randn(3, 1, 8, 8)).shape
        torch.Size([3, 8, 8])
    """

    needs_gradients = False
    differentiable = False
    smoothing_samples = 1
    """How many masked copies per channel :meth:`varied` makes (1: the mask itself)."""
    seed: int | None = None
    """The seed of the random numbers :meth:`varied` draws (``None``: torch's global generator)."""
    zero_masks_stay_zero = True
    """Whether :meth:`varied` keeps an all-zero mask all zeros. Then a constant channel (all
    zeros after a ReLU, commonly), whose mask is all zeros, is not run: its score is that of
    an all-zero input, computed once per sample. The maps are the same either way."""

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec | list[LayerSpec],
        *,
        batch_size: int = 64,
        top_channels: int | None = None,
        rank_by: str = "variance",
        **options: object,
    ) -> None:
        super().__init__(model, layer, **options)  # type: ignore[arg-type]
        self.batch_size = positive_int(batch_size, "batch_size")
        if not isinstance(rank_by, str) or rank_by not in _RANKINGS:
            raise CamkitValueError(f"rank_by: got {rank_by!r}; allowed: {sorted(_RANKINGS)}")
        self.top_channels = (
            None if top_channels is None else positive_int(top_channels, "top_channels")
        )
        self.rank_by = rank_by

    def settings(self) -> dict[str, Any]:
        """The shared settings and the masking: ``batch_size``, ``top_channels``, ``rank_by``."""
        own = {"batch_size": self.batch_size, "top_channels": self.top_channels}
        return {**super().settings(), **own, "rank_by": self.rank_by}

    def varied(self, masks: Tensor, sample: int, generator: torch.Generator | None) -> Tensor:
        """The masks ``(M, *spatial)`` of smoothing sample ``sample`` (``0 <= sample <
        smoothing_samples``), drawing any random numbers from ``generator``; Score-CAM uses
        the masks as they are. ``masks`` is camkit's own tensor."""
        return masks

    def weights(self, context: LayerContext) -> Tensor:
        r"""Return :math:`\alpha_k^c`, a softmax over (the chosen) channels."""
        a, x = context.activations[:, 0], context.inputs
        n, channels = a.shape[:2]
        size = tuple(x.shape[2:])
        if a.dim() != x.dim():
            raise CamkitValueError(
                f"layer: {type(self).__name__} masks the input with {context.layer!r}'s "
                f"channels, which have {a.dim() - 2} spatial dims while the input has "
                f"{x.dim() - 2}"
            )
        chosen = self._chosen(a)  # (N, K)
        kept = chosen.shape[1]
        rows = torch.arange(n * kept, device=a.device)
        if self.zero_masks_stay_zero:  # skip the rows of constant channels: all-zero masks
            flat = a.flatten(2).gather(1, chosen[:, :, None].expand(-1, -1, a[0, 0].numel()))
            varying = flat.amax(dim=2) != flat.amin(dim=2)
            rows = rows[varying.flatten().nonzero()[:, 0]]  # the one read of the device
        generator = None
        if self.seed is not None:
            generator = torch.Generator(a.device).manual_seed(self.seed)
        passes = []  # smoothing samples outermost, as the SS-CAM and IS-CAM references draw
        for smoothing in range(self.smoothing_samples):
            scores = []
            for chunk in _chunks(rows, self.batch_size):
                sample = chunk // kept
                masks = _masks(a[sample, chosen.flatten()[chunk]], size)
                masks = self.varied(masks, smoothing, generator)
                masked = x[sample] * masks[:, None].to(x.dtype)
                scores.append(context.score_inputs(masked, sample))
            passes.append(torch.cat(scores) if scores else None)
        mean = self._every_row(passes, rows, n * kept, context).view(n, kept, -1)
        softmax = F.softmax(mean, dim=1)
        weights = softmax.new_zeros(n, channels, softmax.shape[2])
        weights.scatter_(1, chosen[:, :, None].expand_as(softmax), softmax)
        return weights.transpose(1, 2)

    def _every_row(
        self, passes: list[Tensor | None], rows: Tensor, total: int, context: LayerContext
    ) -> Tensor:
        """The mean score of every row, ``(total, k)``: the masked passes' for ``rows``, and
        for the others (all-zero masks) the score of an all-zero input, once per sample."""
        parts = [p for p in passes if p is not None]
        mean = torch.stack(parts).mean(0) if parts else None
        if len(rows) == total:
            return cast(Tensor, mean)
        inputs = context.inputs
        samples = torch.arange(len(inputs), device=inputs.device)
        zeros = context.score_inputs(torch.zeros_like(inputs), samples)  # (N, k)
        every = zeros.repeat_interleave(total // len(inputs), dim=0)
        return every if mean is None else every.index_copy(0, rows, mean)

    def _chosen(self, a: Tensor) -> Tensor:
        """The channels that mask the input, ``(N, K)``: all, or the top ``top_channels``."""
        n, channels = a.shape[:2]
        if self.top_channels is None or self.top_channels >= channels:
            return torch.arange(channels, device=a.device).expand(n, channels)
        ranking = _RANKINGS[self.rank_by](a.flatten(2))
        return ranking.topk(self.top_channels, dim=1).indices.sort(dim=1).values


class SSCAM(ScoreCAM):
    r"""SS-CAM: Score-CAM with each mask smoothed by Gaussian noise, averaged over samples.

    Wang et al., *SS-CAM: Smoothed Score-CAM for Sharper Visual Feature
    Localization*, 2020, https://arxiv.org/abs/2006.14255.

    With :math:`H^k` Score-CAM's mask (channel :math:`k` upsampled and scaled
    to :math:`[0, 1]`) and :math:`\varepsilon_i` noise drawn per pixel from
    :math:`\mathcal{N}(0, \sigma^2)`,

    .. math::

        \alpha_k^c = \operatorname{softmax}_k\Big(\frac{1}{S} \sum_{i=1}^{S}
            y^c\big(X \odot (H^k + \varepsilon_i)\big) - y^c(X_b)\Big),
        \qquad
        L^c = \mathrm{ReLU}\Big(\sum_k \alpha_k^c A^k\Big).

    The defaults are the paper's (and TorchCAM's): :math:`S = 35` samples,
    :math:`\sigma = 2`. ``S x N x C`` forward passes (``S x N x K`` with
    ``top_channels``). The noise of sample :math:`i` is drawn for every mask
    before sample :math:`i + 1`'s, as TorchCAM draws it. TorchCAM scales each
    channel to [0, 1] at the layer's resolution and then upsamples it, while
    camkit (like the paper's :math:`H^k`) upsamples and then scales; so,
    seeded alike on the CPU, the two give the same maps for a layer at the
    input's resolution (a test checks this), and different maps where the
    layer is smaller than the input.

    Args:
        model: As for :class:`~camkit.BaseCAM`.
        layer: As for :class:`~camkit.BaseCAM`.
        samples: :math:`S`, noisy copies of each mask.
        noise_std: :math:`\sigma`, in units of the [0, 1] mask.
        seed: Seed of a generator made for each call (reproducible maps); ``None``
            draws from torch's global generator. The noise is drawn for the whole
            batch, so a sample's map depends on the batch it is in: the same batch
            gives the same maps, the sample alone another.
        batch_size: Masked inputs per forward pass.
        top_channels: As for :class:`ScoreCAM`.
        rank_by: As for :class:`ScoreCAM`.
        **options: ``layout``, ``prefix_tokens``, ``grid`` as for :class:`~camkit.BaseCAM`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
        >>> SSCAM(model, "1", samples=4, seed=0)(torch.randn(3, 1, 8, 8)).shape
        torch.Size([3, 8, 8])
    """

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec | list[LayerSpec],
        *,
        samples: int = 35,
        noise_std: float = 2.0,
        seed: int | None = None,
        batch_size: int = 64,
        top_channels: int | None = None,
        rank_by: str = "variance",
        **options: object,
    ) -> None:
        super().__init__(
            model,
            layer,
            batch_size=batch_size,
            top_channels=top_channels,
            rank_by=rank_by,
            **options,
        )
        self.smoothing_samples = positive_int(samples, "samples")
        self.noise_std = non_negative(noise_std, "noise_std")
        self.seed = seed_or_none(seed)

    def settings(self) -> dict[str, Any]:
        """Score-CAM's settings and the noise: ``samples``, ``noise_std``, ``seed``."""
        noise = {"samples": self.smoothing_samples, "noise_std": self.noise_std}
        return {**super().settings(), **noise, "seed": self.seed}

    zero_masks_stay_zero = False  # the noise makes them noise

    def varied(self, masks: Tensor, sample: int, generator: torch.Generator | None) -> Tensor:
        r"""Add :math:`\varepsilon_i`, drawn from ``generator``."""
        noise = torch.randn(masks.shape, generator=generator, device=masks.device)
        return masks.add_(noise.to(masks.dtype), alpha=self.noise_std)


class ISCAM(ScoreCAM):
    r"""IS-CAM: Score-CAM with each mask's score integrated along a path of growing scales.

    Naidu et al., *IS-CAM: Integrated Score-CAM for axiomatic-based
    explanations*, 2020, https://arxiv.org/abs/2010.03023.

    With :math:`H^k` Score-CAM's mask and :math:`S` integration steps, step
    :math:`i` scales the mask by :math:`c_i = \sum_{j=1}^{i} j / S`:

    .. math::

        \alpha_k^c = \operatorname{softmax}_k\Big(\frac{1}{S} \sum_{i=1}^{S}
            y^c\big(X \odot c_i H^k\big) - y^c(X_b)\Big),
        \qquad
        L^c = \mathrm{ReLU}\Big(\sum_k \alpha_k^c A^k\Big).

    :math:`c_i` is the running sum of TorchCAM's implementation (TorchCAM's
    docstring writes the sum from :math:`j = 0` to :math:`i - 1`; its code,
    which camkit follows, adds :math:`j = 1` to :math:`i`). As for
    :class:`SSCAM`, TorchCAM scales each channel before upsampling it and
    camkit after, so the two agree for a layer at the input's resolution
    only. ``S x N x C`` forward passes; :math:`S = 10` by default, as in
    TorchCAM.

    Args:
        model: As for :class:`~camkit.BaseCAM`.
        layer: As for :class:`~camkit.BaseCAM`.
        samples: :math:`S`, the integration steps.
        batch_size: Masked inputs per forward pass.
        top_channels: As for :class:`ScoreCAM`.
        rank_by: As for :class:`ScoreCAM`.
        **options: ``layout``, ``prefix_tokens``, ``grid`` as for :class:`~camkit.BaseCAM`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
        >>> ISCAM(model, "1", samples=4)(torch.randn(3, 1, 8, 8)).shape
        torch.Size([3, 8, 8])
    """

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec | list[LayerSpec],
        *,
        samples: int = 10,
        batch_size: int = 64,
        top_channels: int | None = None,
        rank_by: str = "variance",
        **options: object,
    ) -> None:
        super().__init__(
            model,
            layer,
            batch_size=batch_size,
            top_channels=top_channels,
            rank_by=rank_by,
            **options,
        )
        self.smoothing_samples = positive_int(samples, "samples")

    def settings(self) -> dict[str, Any]:
        """Score-CAM's settings and ``samples``."""
        return {**super().settings(), "samples": self.smoothing_samples}

    def varied(self, masks: Tensor, sample: int, generator: torch.Generator | None) -> Tensor:
        """Scale by :math:`c_i` (``sample`` is :math:`i - 1`)."""
        step = sample + 1
        return masks.mul_(step * (step + 1) / (2 * self.smoothing_samples))


_RANKINGS: dict[str, Callable[[Tensor], Tensor]] = {
    "variance": lambda flat: flat.var(dim=2, correction=0),
    "mean": lambda flat: flat.mean(dim=2),
}


def _masks(channels: Tensor, size: tuple[int, ...]) -> Tensor:
    """Upsample ``(M, *spatial)`` channels to ``size`` and scale each to [0, 1]."""
    return map_ops.min_max_normalize_(map_ops.upsample(channels, size).contiguous())


class AblationCAM(BaseCAM):
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
    division stays finite. The ``N x C`` ablated copies run ``batch_size`` at
    a time, without gradients.

    Only the part of the network after the layer sees an ablated copy, so by
    default only that part is re-run: where :mod:`torch.fx` can trace the model
    (torchvision's CNNs, most ``nn.Sequential`` stacks), the traced graph is
    cut at the layer; the part before it runs once per call, and each batch of
    copies runs through the rest (for a ResNet's ``layer4``, pooling and the
    linear layer). The model is traced once, when the explainer is built: fx
    patches ``torch.nn.Module.__call__`` for the whole process while it
    traces, so build explainers before starting threads that run models.
    Before use, the cut is checked to reproduce the model's scores. Where fx
    cannot trace the model (data-dependent control flow, a layer inside a
    traced-through function), or the check fails, or with
    ``split_tail=False``, every copy re-runs the whole model with the layer's
    output replaced through a hook that is removed afterwards, even on error.
    The maps are the same either way.

    Args:
        model: As for :class:`~camkit.BaseCAM`.
        layer: As for :class:`~camkit.BaseCAM`.
        batch_size: Ablated copies per forward pass.
        split_tail: Re-run only the network after the layer where it can be split
            off (see above); ``False`` re-runs the whole model for every batch.
        **options: ``layout``, ``prefix_tokens``, ``grid`` as for :class:`~camkit.BaseCAM`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
        >>> AblationCAM(model, "1", batch_size=8)(torch.randn(3, 1, 8, 8)).shape
        torch.Size([3, 8, 8])
    """

    needs_gradients = False
    differentiable = False

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec | list[LayerSpec],
        *,
        batch_size: int = 64,
        split_tail: bool = True,
        **options: object,
    ) -> None:
        super().__init__(model, layer, **options)  # type: ignore[arg-type]
        self.batch_size = positive_int(batch_size, "batch_size")
        if not isinstance(split_tail, bool):
            raise CamkitValueError(f"split_tail: got {split_tail!r}; allowed: True or False")
        self.split_tail = split_tail
        if split_tail:
            self.trace_layers()

    def settings(self) -> dict[str, Any]:
        """The shared settings, ``batch_size`` and ``split_tail``."""
        own = {"batch_size": self.batch_size, "split_tail": self.split_tail}
        return {**super().settings(), **own}

    def weights(self, context: LayerContext) -> Tensor:
        """Return :math:`w_k^c`, the relative score drop of each ablated channel."""
        a = context.activations[:, 0]
        n, channels = a.shape[:2]
        scores = []
        every_channel = torch.arange(channels, device=a.device)
        rows = torch.arange(n * channels, device=a.device)
        for chunk in _chunks(rows, self.batch_size):
            sample, channel = chunk // channels, chunk % channels
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
