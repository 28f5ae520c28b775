"""Segmentation and detection models from torchvision, random weights, small inputs.

For each model and layer, camkit's raw Grad-CAM equals plain autograd's for
the same target (the score taken from the same forward pass), and the model
is left as it was. torchvision is a test dependency: this module fails,
rather than skips, without it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torchvision.models import detection, segmentation

from camkit import DetectionTarget, GradCAM, SegmentationTarget
from camkit.layers import resolve_layer
from tests.helpers import (
    GradCAMMagnitude,
    assert_gradcam_close,
    assert_untouched,
    reference_gradcam_at,
    snapshot,
)

Pick = Callable[[Any], Tensor]

RANDOM = {"weights": None, "weights_backbone": None}
SMALL = {"min_size": 96, "max_size": 96}
TWO_STAGE_OPTIONS = {"rpn_post_nms_top_n_test": 40, "box_detections_per_img": 4, **SMALL}
ONE_STAGE_OPTIONS = {"score_thresh": 0.0, "topk_candidates": 40, "detections_per_img": 4}


def _build(builder: Callable[..., nn.Module], **options: Any) -> Callable[[], nn.Module]:
    return lambda: builder(**RANDOM, **options)


SEGMENTERS: dict[str, tuple[Callable[[], nn.Module], dict[str, Pick]]] = {
    # name: (builder, {layer: how plain autograd picks the same tensor from the module's output})
    "deeplabv3_mobilenet_v3_large": (
        _build(segmentation.deeplabv3_mobilenet_v3_large, num_classes=4),
        {"backbone['out']": lambda out: out["out"], "classifier.0": lambda out: out},
    ),
    "lraspp_mobilenet_v3_large": (
        _build(segmentation.lraspp_mobilenet_v3_large, num_classes=4),
        {"backbone[high]": lambda out: out["high"], "backbone['low']": lambda out: out["low"]},
    ),
    "fcn_resnet50": (
        _build(segmentation.fcn_resnet50, num_classes=4),
        {"backbone['out']": lambda out: out["out"], "classifier.2": lambda out: out},
    ),
}

DETECTORS: dict[str, tuple[Callable[[], nn.Module], dict[str, Pick]]] = {
    "fasterrcnn_mobilenet_v3_large_fpn": (
        _build(detection.fasterrcnn_mobilenet_v3_large_fpn, num_classes=3, **TWO_STAGE_OPTIONS),
        {"backbone[0]": lambda out: out["0"], "backbone.body['1']": lambda out: out["1"]},
    ),
    "fcos_resnet50_fpn": (
        _build(detection.fcos_resnet50_fpn, num_classes=3, **ONE_STAGE_OPTIONS, **SMALL),
        {"backbone.body.layer4": lambda out: out, "backbone.body.layer3": lambda out: out},
    ),
    "retinanet_resnet50_fpn": (
        _build(detection.retinanet_resnet50_fpn, num_classes=3, **ONE_STAGE_OPTIONS, **SMALL),
        {"backbone.body.layer4": lambda out: out, "backbone.body.layer3": lambda out: out},
    ),
    "ssdlite320_mobilenet_v3_large": (
        _build(detection.ssdlite320_mobilenet_v3_large, num_classes=3, **ONE_STAGE_OPTIONS),
        # every level is computed from '0' inside the backbone: the map includes those paths
        {"backbone['0']": lambda out: out["0"], "backbone.features.0": lambda out: out},
    ),
    "maskrcnn_resnet50_fpn": (
        _build(detection.maskrcnn_resnet50_fpn, num_classes=3, **TWO_STAGE_OPTIONS),
        {"backbone['0']": lambda out: out["0"], "backbone.body.layer3": lambda out: out},
    ),
}


def _raw_gradcam(model: nn.Module, layer: str, x: Tensor, target: Any) -> Tensor:
    return GradCAM(model, layer)(x, target, relu=False, upsample=False, normalize=False)


def _close(got: Tensor, expected: Tensor) -> None:
    scale = expected.abs().max()
    assert scale > 0
    torch.testing.assert_close(got.double() / scale, expected / scale, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(SEGMENTERS))
def test_segmentation_models_match_plain_autograd(name: str) -> None:
    builder, layers = SEGMENTERS[name]
    torch.manual_seed(0)
    model = builder().eval()
    x = torch.randn(2, 3, 64, 64)
    mask = torch.zeros(2, 64, 64, dtype=torch.bool)
    mask[0, 10:40, 5:30] = True
    mask[1, 30:, 30:] = True
    target = SegmentationTarget([1, 3], mask=mask)
    before = snapshot(model)
    for layer, pick in layers.items():
        module = resolve_layer(model, layer).module
        expected = reference_gradcam_at(model, module, x, target, pick=pick)
        _close(_raw_gradcam(model, layer, x, target), expected)
        maps = GradCAM(model, layer)(x, target)
        assert maps.shape == (2, 64, 64)
    assert_untouched(before, snapshot(model))


@pytest.fixture(scope="module", params=list(DETECTORS))
def detector(request: pytest.FixtureRequest) -> tuple[str, nn.Module, Tensor, list[Any]]:
    torch.manual_seed(0)
    model = DETECTORS[request.param][0]().eval()
    x = torch.rand(2, 3, 64, 80)
    with torch.no_grad():
        found = model(x)
    assert all(len(f["scores"]) >= 2 for f in found), "the random detector found too little"
    return request.param, model, x, found


def test_detection_models_match_plain_autograd(
    detector: tuple[str, nn.Module, Tensor, list[Any]],
) -> None:
    name, model, x, found = detector
    labels = torch.stack([f["labels"][:2] for f in found])
    boxes = torch.stack([f["boxes"][:2] for f in found])
    target = DetectionTarget(labels, boxes)
    before = snapshot(model)
    for layer, pick in DETECTORS[name][1].items():
        module = resolve_layer(model, layer).module
        raw = _raw_gradcam(model, layer, x, target)
        assert raw.shape[:2] == (2, 2)
        for j in range(2):

            def score(out: Any, j: int = j) -> Tensor:
                return target(out)[:, j]

            expected = reference_gradcam_at(model, module, x, score, pick=pick)
            _close(raw[:, j], expected)
    assert_untouched(before, snapshot(model))


def test_every_detection_of_a_detection_model_in_one_pass(
    detector: tuple[str, nn.Module, Tensor, list[Any]],
) -> None:
    name, model, x, found = detector
    layer = next(iter(DETECTORS[name][1]))
    target = DetectionTarget.every(min_score=0.0)
    result = GradCAM(model, layer).explain(x, target)
    k = max(len(f["scores"]) for f in found)
    assert result.maps.shape == (2, k, 64, 80)
    for i, f in enumerate(found):
        n = len(f["scores"])
        torch.testing.assert_close(result.scores[i, :n], f["scores"], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(target.labels[i, :n], f["labels"])
    assert torch.isfinite(result.maps).all()


WITH_FPN = [name for name in DETECTORS if not name.startswith("ssd")]
TWO_STAGE = ["fasterrcnn_mobilenet_v3_large_fpn", "maskrcnn_resnet50_fpn"]


@pytest.mark.parametrize("detector", WITH_FPN, indirect=True)
def test_the_backbone_and_its_fpn_name_the_same_levels(
    detector: tuple[str, nn.Module, Tensor, list[Any]],
) -> None:
    _, model, x, _ = detector
    target = DetectionTarget.every(min_score=0.0)
    whole = GradCAM(model, ["backbone['0']", "backbone['1']"])(x, target)
    fpn = GradCAM(model, ["backbone.fpn['0']", "backbone.fpn['1']"])(x, target)
    torch.testing.assert_close(whole, fpn)


@pytest.mark.parametrize("detector", TWO_STAGE, indirect=True)
def test_the_box_head_is_differentiated_for_the_explained_boxes_only(
    detector: tuple[str, nn.Module, Tensor, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import camkit._engine.detection

    name, model, x, _ = detector
    assert len(camkit._engine.detection.box_heads(model)) == 1
    rows: list[int] = []
    backward = camkit._engine.detection._Rowwise.backward

    def counting(ctx: Any, grad: Tensor) -> Any:
        rows.append(int(grad.flatten(1).ne(0).any(1).sum()))
        return backward(ctx, grad)

    monkeypatch.setattr(camkit._engine.detection._Rowwise, "backward", staticmethod(counting))
    layer = next(iter(DETECTORS[name][1]))
    target = DetectionTarget.every(min_score=0.0)
    # In float64 the pruned and the plain backward pass add the same terms in another order
    # with a rounding far below float32's, so the float32 maps agree to float32's rounding
    # of the map's terms, on any CPU kernels and thread count.
    model, x = copy.deepcopy(model).double(), x.double()  # the fixture's model is shared
    options: dict[str, Any] = {"relu": False, "normalize": False}
    pruned = GradCAM(model, layer)(x, target, **options)
    assert rows and max(rows) <= 2 * 4  # the explained detections' proposals, not all 40
    sizes = GradCAMMagnitude(model, layer)
    magnitude = sizes(x, target, **options)
    monkeypatch.setattr(camkit._engine.detection, "box_heads", lambda model: [])
    plain = GradCAM(model, layer)(x, target, **options)
    assert_gradcam_close(pruned, plain, magnitude, sizes.channels)
