"""Sanity checks for saliency maps (Adebayo et al., NeurIPS 2018): do maps depend on the weights?"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from camkit._engine import map_ops
from camkit._engine.option_checks import seed_value
from camkit.errors import CamkitValueError
from camkit.metrics._common import check_batch, classes_of
from camkit.metrics._sorting import average_ranks
from camkit.metrics._weights import chosen_layers, parameterized_layers, randomize, reduce_channels
from camkit.targets import Target

__all__ = ["RandomizationResult", "randomization_test", "spearman", "ssim"]


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of each pair of maps ``(N, *spatial)``; ``(N,)``, float64.

    The Pearson correlation of average ranks; ``NaN`` where a map is constant.

    Example:
        >>> import torch
        >>> spearman(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[10.0, 30.0, 20.0]]))
        tensor([0.5000], dtype=torch.float64)
    """
    if a.shape != b.shape:
        raise CamkitValueError(f"b: shape {tuple(b.shape)} differs from a's {tuple(a.shape)}")
    ra, rb = average_ranks(a.flatten(1)), average_ranks(b.flatten(1))  # float64
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return (ra * rb).sum(1) / ((ra * ra).sum(1) * (rb * rb).sum(1)).sqrt()


def _correlations(original: Tensor, after: Tensor) -> Tensor:
    """Spearman correlation of ``original`` ``(N, ...)`` with each of ``after`` ``(S, N,
    ...)``, ``(S, N)``: the original's ranks computed once, every step's in one call."""
    ra = average_ranks(original.flatten(1))  # float64, from maps in their own dtype
    ra = ra - ra.mean(1, keepdim=True)
    steps, n = after.shape[:2]
    rb = average_ranks(after.reshape(steps * n, -1)).view(steps, n, -1)
    rb = rb - rb.mean(2, keepdim=True)
    return (ra * rb).sum(2) / ((ra * ra).sum(1) * (rb * rb).sum(2)).sqrt()


def _band(taps: Tensor, length: int) -> Tensor:
    """The ``(length, length - len(taps) + 1)`` matrix whose product with a row of
    ``length`` values is its valid correlation with ``taps``."""
    outputs = length - len(taps) + 1
    # entry (i, j) is taps[i - j] where 0 <= i - j < len(taps), else 0
    lag = torch.arange(length, device=taps.device)[:, None] - torch.arange(
        outputs, device=taps.device
    )
    inside = (lag >= 0) & (lag < len(taps))
    return torch.where(inside, taps[lag.clamp(0, len(taps) - 1)], 0.0)


def ssim(
    a: Tensor, b: Tensor, *, data_range: float = 1.0, window: int = 11, sigma: float = 1.5
) -> Tensor:
    """Structural similarity of each pair of 2-D maps ``(N, H, W)``; ``(N,)``, float64.

    Wang et al., *Image Quality Assessment: From Error Visibility to Structural
    Similarity*, IEEE TIP 2004: Gaussian window (11, sigma 1.5, shrunk to fit
    small maps), ``K1 = 0.01``, ``K2 = 0.03``, mean over valid positions.

    Example:
        >>> import torch
        >>> m = torch.rand(2, 16, 16)
        >>> ssim(m, m)
        tensor([1., 1.], dtype=torch.float64)
    """
    if a.shape != b.shape or a.dim() != 3:
        raise CamkitValueError(
            f"a, b: SSIM compares 2-D maps of equal shape (N, H, W), got {tuple(a.shape)} "
            f"and {tuple(b.shape)}"
        )
    size = min(window, a.shape[1], a.shape[2])
    size -= 1 - size % 2
    half = size // 2
    taps = torch.exp(-(torch.arange(-half, half + 1, dtype=torch.float64) ** 2) / (2 * sigma**2))
    taps = (taps / taps.sum()).to(a.device)

    x, y = a.double(), b.double()
    # the Gaussian window is separable: one pass along the rows, one along the columns,
    # for all five local means at once, each as a product with a banded matrix (in
    # float64 on the CPU five times faster than a convolution)
    stacked = torch.stack([x, y, x * x, y * y, x * y], dim=1).flatten(0, 1)
    means = torch.matmul(_band(taps, a.shape[1]).T, stacked @ _band(taps, a.shape[2]))
    mx, my, mxx, myy, mxy = means.view(len(x), 5, *means.shape[-2:]).unbind(1)
    vx, vy = mxx - mx**2, myy - my**2
    cov = mxy - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    index = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    result: Tensor = index.flatten(1).mean(1)
    return result


@dataclass(frozen=True)
class RandomizationResult:
    """Similarities between the original maps and the maps after each randomization step.

    Attributes:
        mode: ``"cascading"`` or ``"independent"``.
        layers: The layers randomized, in the order of the steps.
        spearman: ``(steps, N)`` rank correlation of the signed maps.
        spearman_abs: ``(steps, N)`` rank correlation of the absolute maps.
        ssim: ``(steps, N)`` SSIM of the maps scaled to [0, 1] (2-D maps, unless the test
            ran with ``structural=False``; else NaN).
        maps: ``(steps + 1, N, *spatial)`` the original maps, then each step's.
    """

    mode: str
    layers: list[str]
    spearman: Tensor
    spearman_abs: Tensor
    ssim: Tensor
    maps: Tensor

    def passes(self, threshold: float = 0.5) -> bool:
        """Whether the maps changed: mean absolute rank correlation at the last step below it.

        For the cascading test the last step has every layer randomized; for the
        independent test the mean is over all layers.
        """
        final = self.spearman_abs[-1] if self.mode == "cascading" else self.spearman_abs
        return bool(final.nanmean() < threshold)


def _scaled(m: Tensor) -> Tensor:
    return map_ops.min_max_normalize_(m.double().clone())


def randomization_test(
    model: nn.Module,
    method: Callable[[nn.Module], Callable[[Tensor, Tensor], Tensor]],
    x: Tensor,
    target: Target = None,
    *,
    mode: str = "cascading",
    layers: str | list[str] | None = None,
    seed: int = 0,
    reseed: str = "each",
    structural: bool = True,
    progress: bool = False,
) -> RandomizationResult:
    """Model-parameter randomization test (Adebayo et al., *Sanity Checks for Saliency Maps*).

    Adebayo et al., NeurIPS 2018, https://arxiv.org/abs/1810.03292. The maps of
    ``method`` on ``model`` are compared with its maps on copies of the model
    whose layers are re-initialized: in ``"cascading"`` mode from the logits
    down, one more layer at each step; in ``"independent"`` mode one layer at a
    time. A method whose maps stay similar does not explain the model.
    Similarity: Spearman rank correlation (of the maps and of their absolute
    values) and SSIM of the maps scaled to [0, 1]. The model itself is never
    changed: only deep copies are randomized.

    Args:
        model: The model.
        method: Builds the explainer for a model, e.g. ``lambda m: GradCAM(m, "layer4")``;
            the explainer is called as ``explainer(x, classes)``.
        x: Inputs ``(N, C, *spatial)``.
        target: ``None`` (the original model's predicted class), an int, or one
            class per sample; the same classes are explained at every step.
        mode: ``"cascading"`` or ``"independent"``.
        layers: The layers to randomize, one name or a list; by default every
            module that owns parameters, in forward order.
        seed: Seed of the re-initialization.
        reseed: ``"each"``: step ``i``'s layer re-initialized from ``seed + i``;
            ``"quantus"``: every layer from ``seed + 1``, as Quantus 0.6's ``MPRT``
            does (its ``seed`` is 42; tested equal, its ``spearman`` of absolute
            maps camkit's ``spearman_abs``).
        structural: Compute SSIM (the costliest of the three similarities on large
            maps); ``False`` leaves ``ssim`` NaN.
        progress: Show a progress bar over the steps.

    Returns:
        The similarities per step and sample, and all maps.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from camkit import GradCAM
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
        >>> result = randomization_test(model, lambda m: GradCAM(m, "1"), torch.randn(2, 1, 8, 8))
        >>> result.layers, result.spearman.shape
        (['3', '0'], torch.Size([2, 2]))
    """
    if mode not in ("cascading", "independent"):
        raise CamkitValueError(f"mode: got {mode!r}; allowed: 'cascading', 'independent'")
    if reseed not in ("each", "quantus"):
        raise CamkitValueError(f"reseed: got {reseed!r}; allowed: 'each', 'quantus'")
    seed_value(seed)
    check_batch(x, 1)
    classes = classes_of(model, x, target, 256)
    order = parameterized_layers(model, x)
    chosen = chosen_layers(layers, order)
    steps = list(reversed(chosen)) if mode == "cascading" else chosen
    original = reduce_channels(method(model)(x, classes).detach(), x)
    all_maps = [original]
    twin = copy.deepcopy(model)
    for i, name in enumerate(
        tqdm(steps, desc=f"{mode} randomization", disable=not progress, mininterval=0.5)
    ):
        if mode == "independent":
            twin = copy.deepcopy(model)
        randomize(twin.get_submodule(name), seed + 1 if reseed == "quantus" else seed + i)
        all_maps.append(reduce_channels(method(twin)(x, classes).detach(), x))
    stacked = torch.stack(all_maps)
    after = stacked[1:]
    rho = _correlations(original, after)
    # maps without negative values are their own magnitudes: the same correlations
    signed = bool((original < 0).any()) or bool((after < 0).any())
    rho_abs = _correlations(original.abs(), after.abs()) if signed else rho.clone()
    if original.dim() == 3 and structural:
        structure = torch.stack([ssim(_scaled(original), _scaled(m)) for m in after])
    else:
        structure = torch.full_like(rho, float("nan"))
    return RandomizationResult(mode, steps, rho, rho_abs, structure, stacked)
