"""SESS: any CAM method run on patches of the image at many scales, then fused."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from camkit._engine import map_ops
from camkit._engine.model_outputs import logits_in
from camkit._engine.option_checks import finite_number, positive_int, positive_number
from camkit._engine.pipeline import Explained, Request, bind_and_score, run_pass
from camkit.errors import CamkitTypeError, CamkitValueError
from camkit.explainer import Explainer
from camkit.result import CAMResult
from camkit.targets import Target

__all__ = ["SESS"]


class SESS(Explainer):
    r"""SESS: Saliency Enhancing with Scaling and Sliding, around any CAM method.

    Tianyi et al., *SESS: Saliency Enhancing with Scaling and Sliding*, ECCV
    2022, https://arxiv.org/abs/2207.01769.

    Each image is resized so that its shorter side takes each of the
    ``scales`` (by default ``num_scales`` sizes from the window size up, in
    steps of ``scale_step_ratio`` times it: 224, 288, ... for a 224 x 224
    input, as in the paper), and a square window slides over every scaled
    image (windows at the right and bottom edges are moved back inside). Each
    patch is scored (the softmax probability of the target class, or its
    logit with ``softmax_scores=False``, clipped at 0); the lowest
    ``pre_filter`` fraction is dropped; each remaining patch's map (from the
    wrapped explainer, scaled to [0, 1]) is weighted by its score over the
    largest one, pasted back where the patch came from, and resized to the
    image. The maps are fused by a spatial weighted average (each pixel over
    the patches whose value there exceeds ``theta``), or by their maximum
    with ``pool="max"``; then blurred (an 11 x 11 Gaussian, :math:`\sigma = 5`)
    and scaled to [0, 1]. The steps and defaults are pytorch-grad-cam's
    ``SESS``, whose maps camkit's agree with.

    Args:
        explainer: The CAM run on each patch, such as ``camkit.GradCAM(model, layer)``.
        scales: The sizes of the shorter side, each at least the window; default as above.
        num_scales: How many default scales.
        scale_step_ratio: The step between default scales, as a fraction of the window.
        window: The side of the square window; default the input's shorter side.
        step: The window's stride; default the window (no overlap).
        pre_filter: The fraction of lowest-scoring patches not explained, in [0, 1).
        theta: Map values at or below it do not count in the mean fusion.
        pool: ``"mean"`` or ``"max"``.
        smooth: Blur the fused map.
        softmax_scores: Score patches by probability (the paper), else by logit.
        batch_size: Patches per forward pass.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> import camkit
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
        ...                       nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
        >>> sess = SESS(camkit.GradCAM(model, "1"), num_scales=3)
        >>> sess(torch.randn(2, 3, 16, 16), target=1).shape
        torch.Size([2, 16, 16])
    """

    reports_output = True

    not_differentiable_because = (
        "its maps are pasted together from patches explained outside the autograd graph"
    )

    def __init__(
        self,
        explainer: Explainer,
        *,
        scales: Sequence[int] | None = None,
        num_scales: int = 12,
        scale_step_ratio: float = 2.0 / 7.0,
        window: int | None = None,
        step: int | None = None,
        pre_filter: float = 0.0,
        theta: float = 0.0,
        pool: str = "mean",
        smooth: bool = True,
        softmax_scores: bool = True,
        batch_size: int = 32,
    ) -> None:
        if not isinstance(explainer, Explainer) or explainer.input_channels:
            raise CamkitTypeError(
                f"explainer: got {type(explainer).__name__}; allowed: a camkit explainer with "
                f"one map per image, such as camkit.GradCAM(model, layer)"
            )
        if pool not in ("mean", "max"):
            raise CamkitValueError(f"pool: got {pool!r}; allowed: 'mean', 'max'")
        if not 0.0 <= finite_number(pre_filter, "pre_filter") < 1.0:
            raise CamkitValueError(f"pre_filter: got {pre_filter!r}; allowed: a number in [0, 1)")
        if scales is not None and (
            isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence) or not scales
        ):
            raise CamkitValueError(
                f"scales: got {scales!r}; allowed: a non-empty list of sizes (positive ints), "
                f"or None for num_scales sizes from the window up"
            )
        self.explainer = explainer
        self.model = explainer.model
        self.layer_names = explainer.layer_names
        self.scales = None if scales is None else [positive_int(s, "scales") for s in scales]
        self.num_scales = positive_int(num_scales, "num_scales")
        self.scale_step_ratio = positive_number(scale_step_ratio, "scale_step_ratio")
        self.window = None if window is None else positive_int(window, "window")
        self.step = None if step is None else positive_int(step, "step")
        self.pre_filter = float(pre_filter)
        self.theta = finite_number(theta, "theta")
        self.pool = pool
        self.smooth = smooth
        self.softmax_scores = softmax_scores
        self.batch_size = positive_int(batch_size, "batch_size")

    def settings(self) -> dict[str, Any]:
        """The wrapped explainer's settings and every option of the scaling and sliding."""
        return {
            **super().settings(),
            "explainer": self.explainer.settings(),
            "scales": self.scales,
            "num_scales": self.num_scales,
            "scale_step_ratio": self.scale_step_ratio,
            "window": self.window,
            "step": self.step,
            "pre_filter": self.pre_filter,
            "theta": self.theta,
            "pool": self.pool,
            "smooth": self.smooth,
            "softmax_scores": self.softmax_scores,
            "batch_size": self.batch_size,
        }

    def explain(
        self,
        x: Tensor,
        target: Target = None,
        *,
        upsample: bool = True,
        differentiable: bool = False,
        forward_args: Sequence[Any] = (),
        forward_kwargs: Mapping[str, Any] | None = None,
    ) -> CAMResult:
        """The fused maps ``(N, H, W)`` in [0, 1] of the images ``x`` ``(N, C, H, W)``.

        Args:
            x: The images.
            target: ``None`` for each image's predicted class (on the whole image),
                an ``int``, or one class per image.
            upsample: Only ``True``: the patches' maps are pasted at the image's resolution.
            differentiable: Only ``False`` (see :attr:`not_differentiable_because`).
            forward_args: Only empty: the patches are run through the model alone.
            forward_kwargs: Only ``None``, as ``forward_args``.

        Returns:
            The maps, with the output, scores (the target's logits) and classes of
            the model on the whole images.

        Raises:
            CamkitValueError: For an input that is not a batch of images, a scale
                below the window, a target that is not one class per image, or
                further inputs of the model.
        """
        if forward_args or forward_kwargs:
            raise CamkitValueError(
                "forward_args: SESS runs the model on patches of x alone; a model with "
                "further inputs cannot be explained with SESS"
            )
        return run_pass(
            self, x, target, self._explained, upsample=upsample, differentiable=differentiable
        )

    def _explained(self, request: Request) -> Explained:
        x = request.x
        if x.dim() != 4:
            raise CamkitValueError(
                f"x: SESS slides a window over images, (N, C, H, W); got {tuple(x.shape)}"
            )
        if request.target.function is not None:
            raise CamkitTypeError(
                "target: SESS scores each patch by its class probability, so it needs class "
                "indices or None, not a callable"
            )
        if request.target.multi:
            raise CamkitValueError("target: SESS explains one class per image, not (N, k)")
        with torch.no_grad():
            output = request.run(self.model)
            bound, scores = bind_and_score(request, output)
        classes = cast(Tensor, bound.classes)[:, 0].tolist()
        images = [self._image(request, x[i : i + 1], int(c)) for i, c in enumerate(classes)]
        maps = torch.stack(images)
        return Explained(map_ops.min_max_normalize_(maps)[:, None], {}, output, bound, scores)

    def _image(self, request: Request, image: Tensor, label: int) -> Tensor:
        height, width = image.shape[-2:]
        window = self.window if self.window is not None else min(height, width)
        step = self.step if self.step is not None else window
        patches, places = self._patches(image, window, step)
        scores = self._scores(request, patches, label)
        order = scores.argsort(stable=True)[int(len(scores) * self.pre_filter) :]
        best = scores[order[-1]]
        weights = scores[order] / best if best > 0 else torch.ones(len(order))
        total = image.new_zeros(height, width, dtype=torch.float32)
        counts = torch.zeros_like(total)
        for start in range(0, len(order), self.batch_size):
            chosen = order[start : start + self.batch_size]
            batch = torch.cat([patches[int(i)] for i in chosen])
            with request.precision.callers():  # the wrapped explainer runs as the caller asked
                cams = self.explainer(batch, torch.full((len(chosen),), label)).float()
            batch_weights = weights[start : start + len(chosen)]
            for cam, weight, index in zip(cams, batch_weights, chosen, strict=True):
                pasted = _pasted(cam * float(weight), places[int(index)], (height, width))
                if self.pool == "max":
                    torch.maximum(total, pasted, out=total)
                else:
                    counted = pasted > self.theta
                    total += torch.where(counted, pasted, 0.0)
                    counts += counted
        if self.pool == "mean":
            total = torch.where(counts > 0, total / counts.clamp_min(1), 0.0)
        return _blurred(total) if self.smooth else total

    def _patches(
        self, image: Tensor, window: int, step: int
    ) -> tuple[list[Tensor], list[tuple[int, int, int, int]]]:
        height, width = image.shape[-2:]
        scales = self.scales
        if scales is None:
            size = round(window * self.scale_step_ratio)
            scales = [window + size * i for i in range(self.num_scales)]
        patches, places = [], []
        for scale in scales:
            if scale < window:
                raise CamkitValueError(
                    f"scales: got {scale}; every scale must be at least the window, {window}"
                )
            short, long = (height, width) if height <= width else (width, height)
            other = int(scale * long / short)
            shape = (scale, other) if height <= width else (other, scale)
            # resized in float32 at least (antialiased resizing has no half-precision CPU
            # kernel), then given back to the model in the input's own dtype
            wide = image if image.dtype == torch.float64 else image.float()
            scaled = F.interpolate(
                wide, size=shape, mode="bilinear", align_corners=False, antialias=True
            ).to(image.dtype)
            rows, cols = scaled.shape[-2:]
            for top in _starts(rows, step, window):
                for left in _starts(cols, step, window):
                    patches.append(scaled[..., top : top + window, left : left + window])
                    places.append((left, top, cols, rows))
        return patches, places

    def _scores(self, request: Request, patches: list[Tensor], label: int) -> Tensor:
        scores = []
        with torch.no_grad():
            for start in range(0, len(patches), self.batch_size):
                batch = torch.cat(patches[start : start + self.batch_size])
                logits = logits_in(request.run(self.model, batch))
                values = logits.softmax(-1) if self.softmax_scores else logits
                scores.append(values[:, label].float().cpu())
        return torch.cat(scores).clamp_min(0)


def _starts(length: int, step: int, window: int) -> list[int]:
    """Window starts along one axis; the last is moved back inside the image."""
    starts = []
    for start in range(0, length, step):
        if start + window >= length:
            starts.append(max(length - window, 0))
            break
        starts.append(start)
    return starts


def _pasted(cam: Tensor, place: tuple[int, int, int, int], size: tuple[int, int]) -> Tensor:
    """A patch's map placed where the patch was taken, resized to the image."""
    left, top, cols, rows = place
    canvas = cam.new_zeros(rows, cols)
    canvas[top : top + cam.shape[0], left : left + cam.shape[1]] = cam
    return F.interpolate(canvas[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]


def _blurred(cam: Tensor, size: int = 11, sigma: float = 5.0) -> Tensor:
    """A Gaussian blur with reflected borders (OpenCV's ``GaussianBlur`` defaults)."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(cam.dtype)
    half = size // 2
    mode = "reflect" if min(cam.shape) > half else "replicate"
    padded = F.pad(cam[None, None], (half, half, half, half), mode=mode)
    out = F.conv2d(padded, kernel.view(1, 1, 1, -1))
    out = F.conv2d(out, kernel.view(1, 1, -1, 1))
    return out[0, 0]
