"""Medical volumes and video: the recipes of the "Medical volumes and video" page, tested.

Every map is checked against plain autograd on the same layer (and MONAI's Grad-CAM on
its own networks); a video's map is one map per frame, ``(N, T, H, W)``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models.video import mc3_18, r2plus1d_18, r3d_18, swin3d_t

import camkit
from camkit import GradCAM, SegmentationTarget, list_layers
from camkit.layers import resolve_layer
from tests.helpers import (
    GradCAMMagnitude,
    assert_gradcam_close,
    assert_untouched,
    finish,
    reference_activations_and_gradients,
    reference_gradcam_at,
    snapshot,
)

CLIP = (3, 8, 32, 32)  # (C, T, H, W), torchvision's video layout


def _raw(model: nn.Module, layer: str, x: Tensor, target: Any, **options: Any) -> Tensor:
    raw = {"relu": False, "upsample": False, "normalize": False}
    return GradCAM(model, layer, **options).explain(x, target, **raw).maps


def _check(
    model: nn.Module,
    layer: str,
    x: Tensor,
    target: Any,
    pick: Any = lambda output: output,
    **options: Any,
) -> None:
    """camkit's raw Grad-CAM at ``layer`` (``pick``: the part of the module's output it
    names) equals plain autograd within float32's rounding."""
    module = resolve_layer(model, layer).module
    layout = options.get("layout", "channels_first")
    if layout == "channels_last":
        arrange = lambda t: t.movedim(-1, 1)  # noqa: E731
    elif layout == "tokens":
        grid, prefix = options["grid"], options.get("prefix_tokens", 0)
        arrange = lambda t: t[:, prefix:].reshape(len(t), *grid, t.shape[-1]).movedim(-1, 1)  # noqa: E731
    else:
        arrange = lambda t: t  # noqa: E731
    score = target if callable(target) else lambda out: out[torch.arange(len(x)), target]
    expected = reference_gradcam_at(model, module, x, score, pick=pick, arrange=arrange)
    magnitude = GradCAMMagnitude(model, layer, **options)
    size = magnitude.explain(x, target, relu=False, upsample=False, normalize=False).maps
    assert_gradcam_close(
        _raw(model, layer, x, target, **options), expected, size, magnitude.channels
    )


# Each layer's (time, height, width) on an 8 x 32 x 32 clip: R3D and R(2+1)D halve time at
# layer2, 3 and 4, so at layer4 one time step serves all 8 frames; MC3 keeps every frame.
VIDEO_CNNS = {
    "r3d_18": (r3d_18, [(8, 16, 16), (4, 8, 8), (2, 4, 4), (1, 2, 2)]),
    "mc3_18": (mc3_18, [(8, 16, 16), (8, 8, 8), (8, 4, 4), (8, 2, 2)]),
    "r2plus1d_18": (r2plus1d_18, [(8, 16, 16), (4, 8, 8), (2, 4, 4), (1, 2, 2)]),
}


@pytest.mark.parametrize("name", list(VIDEO_CNNS))
def test_torchvision_video_cnns_give_a_map_per_frame(name: str) -> None:
    build, grids = VIDEO_CNNS[name]
    torch.manual_seed(0)
    model = build(num_classes=5).eval()
    x = torch.randn(2, *CLIP)
    before = snapshot(model)
    found = {info.name: info.grid for info in list_layers(model, x)}
    assert [found[f"layer{i}"] for i in (1, 2, 3, 4)] == grids
    _check(model, "layer2", x, [1, 3])
    maps = GradCAM(model, "layer2")(x, [1, 3])
    assert maps.shape == (2, 8, 32, 32)  # one map per frame
    assert not torch.equal(maps[:, 0], maps[:, -1])  # time is resolved
    last = GradCAM(model, "layer4")(x, [1, 3])
    same_for_every_frame = bool((last == last[:, :1]).all())
    assert same_for_every_frame == (grids[3][0] == 1)
    assert_untouched(before, snapshot(model))


def test_swin3d_reads_channels_last_and_list_layers_says_so() -> None:
    torch.manual_seed(0)
    model = swin3d_t(num_classes=4).eval()
    x = torch.randn(1, 3, 4, 64, 64)
    info = next(i for i in list_layers(model, x) if i.name == "features.4")
    assert info.layout == "channels_last" and info.grid == (2, 4, 4)
    _check(model, "features.4", x, [2], **info.options)
    assert GradCAM(model, "features.4", **info.options)(x, 2).shape == (1, 4, 64, 64)


def test_mvit_tokens_run_frame_by_frame() -> None:
    """torchvision's MViT (a small configuration): its blocks return ``(tokens, thw)``;
    ``list_layers`` finds the tokens' time grid, and the maps equal plain autograd."""
    from torchvision.models.video.mvit import MSBlockConfig, MViT

    blocks = [
        MSBlockConfig(1, 16, 16, [3, 3, 3], [3, 3, 3], [1, 1, 1], [1, 2, 2]),
        MSBlockConfig(2, 16, 32, [3, 3, 3], [3, 3, 3], [1, 2, 2], [1, 1, 1]),
    ]
    torch.manual_seed(0)
    model = MViT(
        spatial_size=(32, 32), temporal_size=8, block_setting=blocks, residual_pool=True,
        residual_with_cls_embed=False, rel_pos_embed=True, proj_after_attn=True, num_classes=3,
    ).eval()  # fmt: skip
    x = torch.randn(2, *CLIP)
    info = next(i for i in list_layers(model, x) if i.name == "blocks.0[0]")
    assert info.options == {"layout": "tokens", "prefix_tokens": 1, "grid": (4, 8, 8)}
    _check(model, "blocks.0[0]", x, [1, 2], pick=lambda out: out[0], **info.options)
    assert GradCAM(model, "blocks.0[0]", **info.options)(x, [1, 2]).shape == (2, 8, 32, 32)


class ClipFirst(nn.Module):
    """A Hugging Face video classifier, called with torchvision's ``(N, C, T, H, W)`` clips:
    Hugging Face takes ``(N, T, C, H, W)``, and camkit maps the axes after the channels."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, clip: Tensor) -> Tensor:
        logits: Tensor = self.model(pixel_values=clip.transpose(1, 2)).logits
        return logits


def test_videomae_tokens_on_a_time_grid() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.VideoMAEConfig(
        image_size=32, patch_size=8, num_frames=8, tubelet_size=2, hidden_size=32,
        num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=3,
    )  # fmt: skip
    torch.manual_seed(0)
    model = ClipFirst(transformers.VideoMAEForVideoClassification(config)).eval()
    x = torch.randn(2, *CLIP)
    layer = "model.videomae.encoder.layer.1"
    info = next(i for i in list_layers(model, x) if i.name == layer + "[0]" or i.name == layer)
    assert info.options == {"layout": "tokens", "prefix_tokens": 0, "grid": (4, 4, 4)}
    _check(model, info.name, x, [0, 2], **info.options)
    assert GradCAM(model, info.name, **info.options)(x, [0, 2]).shape == (2, 8, 32, 32)


def test_timesformer_tokens_run_patch_by_patch() -> None:
    """TimeSformer gives each patch's frames in turn: grid ``(t, h, w)`` read with
    ``token_order=(1, 2, 0)``; maps equal plain autograd on the tokens so arranged."""
    transformers = pytest.importorskip("transformers")
    config = transformers.TimesformerConfig(
        image_size=32, patch_size=8, num_frames=4, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, num_labels=3,
    )  # fmt: skip
    torch.manual_seed(0)
    model = ClipFirst(transformers.TimesformerForVideoClassification(config)).eval()
    x = torch.randn(2, 3, 4, 32, 32)
    layer = "model.timesformer.encoder.layer.0[0]"  # only CLS leaves the last layer
    options = {"layout": "tokens", "prefix_tokens": 1, "grid": (4, 4, 4), "token_order": (1, 2, 0)}
    module = resolve_layer(model, layer).module  # its output's element 0: the tokens

    def arrange(t: Tensor) -> Tensor:  # (N, 1 + h w t, C) -> (N, C, t, h, w)
        return t[:, 1:].reshape(len(t), 4, 4, 4, t.shape[-1]).permute(0, 4, 3, 1, 2)

    score = lambda out: out[torch.arange(2), torch.tensor([0, 2])]  # noqa: E731
    expected = reference_gradcam_at(model, module, x, score, pick=lambda o: o[0], arrange=arrange)
    got = _raw(model, layer, x, [0, 2], **options)
    magnitude = GradCAMMagnitude(model, layer, **options)
    size = magnitude.explain(x, [0, 2], relu=False, upsample=False, normalize=False).maps
    assert_gradcam_close(got, expected, size, magnitude.channels)
    row_major = _raw(model, layer, x, [0, 2], **{**options, "token_order": None})
    assert float((row_major - got).abs().max()) > 1e-3  # the order matters


def test_a_token_order_round_trips() -> None:
    from camkit._engine.layout import Layout

    layout = Layout("tokens", prefix_tokens=1, grid=(2, 3, 4), token_order=(1, 2, 0))
    tokens = torch.randn(2, 1 + 24, 5)
    grid = layout.to_channels_first(tokens, "x")
    assert grid.shape == (2, 5, 2, 3, 4)
    # token 1 + (h * 4 + w) * 2 + t is cell (t, h, w)
    assert torch.equal(grid[:, :, 1, 2, 3], tokens[:, 1 + (2 * 4 + 3) * 2 + 1])
    assert torch.equal(layout.from_channels_first(grid, tokens), tokens)
    with pytest.raises(camkit.CamkitValueError, match="token_order: got"):
        Layout("tokens", grid=(2, 3), token_order=(0, 0))


@pytest.fixture(scope="module")
def monai_nets() -> Any:
    """MONAI's networks (the integrations extra: without it these tests fail, not skip)."""
    return importlib.import_module("monai.networks.nets")


@pytest.fixture(scope="module")
def monai_visualize() -> Any:
    """MONAI's Grad-CAM and Grad-CAM++."""
    return importlib.import_module("monai.visualize")


def test_monai_densenet121_3d_equals_plain_autograd_and_monai(
    monai_nets: Any, monai_visualize: Any
) -> None:
    torch.manual_seed(0)
    model = monai_nets.DenseNet121(spatial_dims=3, in_channels=1, out_channels=3).eval()
    x = torch.randn(2, 1, 64, 64, 64)
    before = snapshot(model)
    layer = "features.denseblock4"
    _check(model, layer, x, [0, 2])
    ours = GradCAM(model, layer)(x, [0, 2])
    assert_untouched(before, snapshot(model))
    theirs = monai_visualize.GradCAM(model, target_layers=layer)
    flipped = torch.cat([theirs(x[i : i + 1], class_idx=c) for i, c in enumerate([0, 2])])
    # MONAI's normaliser maps the largest value to 0 and the smallest to 1
    torch.testing.assert_close(ours, 1 - flipped[:, 0], rtol=0, atol=1e-5)
    with pytest.raises(AssertionError, match="hooks changed"):
        assert_untouched(before, snapshot(model))  # MONAI leaves its hooks on the layer


def test_monai_gradcampp_sums_the_cubed_gradients_over_positions(
    monai_nets: Any, monai_visualize: Any
) -> None:
    """MONAI's Grad-CAM++ divides by ``2 g² + sum over positions of A g³`` (+ 1e-7) where
    Eq. 19 has ``2 g² + (sum over positions of A) g³``: its maps equal that formula (the
    ``exp(score)`` factor, one number per sample, cancels in the scaling), not camkit's."""
    torch.manual_seed(0)
    model = monai_nets.DenseNet121(spatial_dims=3, in_channels=1, out_channels=3).eval()
    x = torch.randn(1, 1, 64, 64, 64)
    layer = "features.denseblock4"
    ours = camkit.GradCAMPlusPlus(model, layer)(x, 2)  # before MONAI leaves its hooks there
    theirs = monai_visualize.GradCAMpp(model, target_layers=layer)(x, class_idx=2)[:, 0]
    activations, gradients = reference_activations_and_gradients(
        model, model.get_submodule(layer), x, torch.tensor([[2]])
    )
    a, g = activations, gradients[:, 0]
    spatial = (2, 3, 4)
    denominator = 2 * g**2 + (a * g**3).sum(spatial, keepdim=True)
    alpha = g**2 / (torch.where(denominator != 0, denominator, 1.0) + 1e-7)
    weights = (alpha * g.clamp_min(0)).sum(spatial, keepdim=True)
    monai_formula = finish((weights * a).sum(1), (64, 64, 64))
    torch.testing.assert_close(1 - theirs.double(), monai_formula, rtol=0, atol=1e-4)
    assert float((ours.double() - monai_formula).abs().max()) > 1e-2


def test_monai_unet_segmentation_over_a_3d_mask(monai_nets: Any) -> None:
    torch.manual_seed(0)
    model = monai_nets.UNet(
        spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8, 16), strides=(2, 2),
        num_res_units=1,
    ).eval()  # fmt: skip
    x = torch.randn(2, 1, 16, 16, 16)
    mask = torch.zeros(16, 16, 16, dtype=torch.bool)
    mask[4:10, 6:12, 2:8] = True  # a lesion's voxels
    target = SegmentationTarget(1, mask=mask)
    name = next(i.name for i in list_layers(model, x) if i.grid == (4, 4, 4))
    _check(model, name, x, target)
    assert GradCAM(model, name)(x, target).shape == (2, 16, 16, 16)


def test_monai_swinunetr_segmentation_over_a_3d_mask(monai_nets: Any) -> None:
    """SwinUNETR (MONAI's transformer segmenter; 64³ is the least its instance norms take):
    a decoder stage and a Swin stage, both channels first, against plain autograd."""
    torch.manual_seed(0)
    model = monai_nets.SwinUNETR(
        in_channels=1, out_channels=2, feature_size=12, spatial_dims=3
    ).eval()
    x = torch.randn(1, 1, 64, 64, 64)
    mask = torch.zeros(64, 64, 64, dtype=torch.bool)
    mask[20:40, 10:30, 30:50] = True
    target = SegmentationTarget(1, mask=mask)
    grids = {info.name: info.grid for info in list_layers(model, x)}
    assert grids["decoder4"] == (8, 8, 8) and grids["swinViT[3]"] == (4, 4, 4)
    before = snapshot(model)
    _check(model, "decoder4", x, target)
    _check(model, "swinViT[3]", x, target, pick=lambda hidden: hidden[3])
    assert GradCAM(model, "decoder4")(x, target).shape == (1, 64, 64, 64)
    assert_untouched(before, snapshot(model))


def test_occlusion_on_a_volume_finds_the_voxels_the_score_reads() -> None:
    """A model that reads only one corner of the volume: every drop lies there."""

    class Corner(nn.Module):
        def forward(self, v: Tensor) -> Tensor:
            corner = v[:, :, :4, :4, :4].flatten(1).sum(1)
            return torch.stack([corner, -corner], 1)

    x = torch.rand(2, 1, 12, 12, 12) + 0.5
    maps = camkit.OcclusionSensitivity(Corner(), mask_size=4, stride=4, fill=0.0)(x, 0)
    assert bool((maps[:, :4, :4, :4] == 1).all())
    assert float(maps[:, 4:].abs().max()) == 0 and float(maps[:, :, 4:].abs().max()) == 0


@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_the_map_store_holds_3d_maps(tmp_path: Path, dtype: str) -> None:
    """Volumes through explain_dataset: stored and read back as ``(D, H, W)``, equal to the
    maps of a direct call (uint8 within half a step of 1/255)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()  # fmt: skip
    volumes = torch.randn(6, 1, 6, 8, 8)
    loader = DataLoader(TensorDataset(volumes, torch.tensor([0, 1, 2, 0, 1, 2])), batch_size=4)
    for explainer in (GradCAM(model, "1"), camkit.OcclusionSensitivity(model, 4, stride=2)):
        folder = tmp_path / f"{type(explainer).__name__}-{dtype}"
        store = camkit.explain_dataset(
            explainer, loader, folder, target="label", dtype=dtype, progress=False
        )
        assert store is not None and store.verify().ok
        # the same batches as the loader's, so the same arithmetic
        direct = torch.cat([explainer(volumes[:4], [0, 1, 2, 0]), explainer(volumes[4:], [1, 2])])
        step = 0.5 / 255 if dtype == "uint8" else 0.0
        for i in range(6):
            assert store.map(i).shape == (6, 8, 8)
            assert float((store.map(i) - direct[i]).abs().max()) <= step
