"""Vision-language models: where their image tokens lie, and their images as patches.

A vision-language model's image becomes tokens in two places: the vision
tower's patches, and the image tokens in the language model's sequence.
:func:`image_grid` reads the grid of the latter from a model's config and its
processor's inputs (for :class:`~camkit.TAM`); :func:`patchify` turns images
into the flattened patches Qwen2-VL's vision tower takes, differentiably, so
that a gradient CAM can take the image itself as its input and explain a
vision block with ``layout="merged_tokens"`` (see :doc:`/vision-language`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from camkit._engine.option_checks import is_int, positive_int
from camkit.errors import CamkitTypeError, CamkitValueError

__all__ = ["image_grid", "patchify"]


def patchify(
    images: Tensor, patch_size: int, merge_size: int = 2, temporal_patch_size: int = 2
) -> tuple[Tensor, Tensor]:
    """Images ``(N, C, H, W)`` or videos ``(N, C, T, H, W)``, already resized and
    normalised, as Qwen2-VL's flattened patches: ``pixel_values``
    ``(N * t * h * w, C * temporal_patch_size * patch_size ** 2)`` and the grids
    ``(N, 3)`` with rows ``(t, h, w)``: ``h = H / patch_size``, ``w = W / patch_size``,
    and ``t = 1`` for an image, ``T / temporal_patch_size`` for a video (its last frame
    repeated to fill the last group, as the processor does).

    The patches run in blocks of ``merge_size`` x ``merge_size`` (the blocks
    row-major, then the patches in each block), frame group after frame group, each
    sample's after the other's, as ``Qwen2VLImageProcessor`` and
    ``Qwen2VLVideoProcessor`` lay them out (an image is repeated over the
    ``temporal_patch_size`` frames); the result is differentiable in ``images``, so a
    CAM can take the images or clips as its input. Pass the grids as
    ``image_grid_thw`` (images) or ``video_grid_thw`` (videos).

    Raises:
        CamkitTypeError: If ``images`` is not a floating-point tensor.
        CamkitValueError: If the input is not ``(N, C, H, W)`` or ``(N, C, T, H, W)``
            with ``H`` and ``W`` whole numbers of ``patch_size * merge_size``, or a size
            is not a positive int.

    Example:
        >>> import torch
        >>> pixel_values, grid = patchify(torch.rand(2, 3, 56, 84), patch_size=14)
        >>> pixel_values.shape, grid.tolist()
        (torch.Size([48, 1176]), [[1, 4, 6], [1, 4, 6]])
        >>> patchify(torch.rand(1, 3, 4, 56, 84), patch_size=14)[1].tolist()  # a clip
        [[2, 4, 6]]
    """
    if not isinstance(images, Tensor) or not images.is_floating_point():
        what = f"dtype {images.dtype}" if isinstance(images, Tensor) else type(images).__name__
        raise CamkitTypeError(
            f"images: got {what}; allowed: a floating-point tensor (N, C, H, W) or "
            f"(N, C, T, H, W), resized and normalised"
        )
    for value, name in ((patch_size, "patch_size"), (merge_size, "merge_size"),
                        (temporal_patch_size, "temporal_patch_size")):  # fmt: skip
        positive_int(value, name)
    side = patch_size * merge_size
    if images.dim() not in (4, 5) or images.shape[-2] % side or images.shape[-1] % side:
        raise CamkitValueError(
            f"images: got shape {tuple(images.shape)}; patchify needs (N, C, H, W) or "
            f"(N, C, T, H, W) with H and W multiples of patch_size * merge_size = {side}"
        )
    frames = images[:, :, None] if images.dim() == 4 else images  # (N, C, T, H, W)
    if pad := -frames.shape[2] % temporal_patch_size:
        frames = torch.cat([frames, frames[:, :, -1:].expand(-1, -1, pad, -1, -1)], dim=2)
    n, c, length, height, width = frames.shape
    t, h, w = length // temporal_patch_size, height // patch_size, width // patch_size
    m, p, tp = merge_size, patch_size, temporal_patch_size
    split = frames.reshape(n, c, t, tp, h // m, m, p, w // m, m, p)
    # (N, t, h / m, w / m, m, m, C, tp, p, p): blocks, patches in a block, then a patch's values
    ordered = split.permute(0, 2, 4, 7, 5, 8, 1, 3, 6, 9)
    pixel_values = ordered.reshape(n * t * h * w, c * tp * p * p)
    grid = torch.tensor([[t, h, w]], device=images.device).expand(n, 3)
    return pixel_values, grid


def image_grid(config: Any, inputs: Mapping[str, Any], index: int = 0) -> tuple[int, ...]:
    """The grid of the image tokens a vision-language model puts in its sequence, read from
    its config and inputs (never from a checkpoint's name).

    - Qwen2-VL and its kin: ``image_grid_thw`` (or ``video_grid_thw``) row ``index``,
      ``(t, h, w)`` in patches, merged by the vision config's ``spatial_merge_size``:
      ``(h / m, w / m)`` for an image, ``(t, h / m, w / m)`` for a video.
    - LLaVA and other fixed-size towers: ``image_size / patch_size`` on each side.

    Raises:
        CamkitTypeError: If ``inputs`` is not a mapping or ``index`` not an int.
        CamkitValueError: If ``index`` is not a row of the grids, or neither the inputs
            nor the config give a grid.

    Example:
        >>> import torch
        >>> from types import SimpleNamespace
        >>> vision = SimpleNamespace(spatial_merge_size=2)
        >>> image_grid(SimpleNamespace(vision_config=vision),
        ...            {"image_grid_thw": torch.tensor([[1, 16, 22]])})
        (8, 11)
    """
    if not isinstance(inputs, Mapping):
        raise CamkitTypeError(
            f"inputs: got {type(inputs).__name__}; allowed: the processor's output, a mapping "
            f"such as {{'image_grid_thw': ...}}"
        )
    if not is_int(index):
        raise CamkitTypeError(f"index: got {index!r}; allowed: an int (the image's row)")
    vision = getattr(config, "vision_config", None)
    for key in ("image_grid_thw", "video_grid_thw"):
        thw = inputs.get(key)
        if isinstance(thw, Tensor):
            if thw.dim() != 2 or thw.shape[1] != 3 or not 0 <= index < len(thw):
                raise CamkitValueError(
                    f"index: got {index} for {key} of shape {tuple(thw.shape)}; allowed: a row "
                    f"of its (images, 3) grids, from 0 to {len(thw) - 1}"
                )
            merge = int(getattr(vision, "spatial_merge_size", 1) or 1)
            t, h, w = (int(v) for v in thw[int(index)])
            grid = (h // merge, w // merge)
            return (t, *grid) if key == "video_grid_thw" else grid
    size = getattr(vision, "image_size", None)
    patch = getattr(vision, "patch_size", None)
    if isinstance(size, int) and isinstance(patch, int) and patch > 0:
        return size // patch, size // patch
    raise CamkitValueError(
        "config: found neither image_grid_thw/video_grid_thw in the inputs nor "
        "vision_config.image_size and patch_size; give TAM's grid=(h, w)"
    )
