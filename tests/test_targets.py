"""Ready-made targets: segmentation, detection, similarity, binary and regression outputs.

Scores are checked against direct computations on the output, maps against
plain autograd for the same score, and per-sample parameters against one call
per sample (Score-CAM and Ablation-CAM re-run the model on rows of the batch,
so a target must pick each row's own class, mask, box or reference).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import camkit
from camkit.targets import (
    BinaryTarget,
    DetectionTarget,
    RegressionTarget,
    SegmentationTarget,
    SimilarityTarget,
    box_iou,
)
from tests.helpers import assert_untouched, finish, reference_gradcam_at, snapshot

PER_SAMPLE_METHODS: dict[str, Callable[[nn.Module, str], camkit.BaseCAM]] = {
    "GradCAM": lambda m, layer: camkit.GradCAM(m, layer),
    "ScoreCAM": lambda m, layer: camkit.ScoreCAM(m, layer, batch_size=5),
    "AblationCAM": lambda m, layer: camkit.AblationCAM(m, layer, batch_size=5),
}


class SegNet(nn.Module):
    """A tiny fully convolutional net, returning ``{"out": (N, 3, 8, 8)}`` as torchvision's do."""

    def __init__(self, container: bool = True) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.ReLU())
        self.classifier = nn.Conv2d(6, 3, 1)
        self.container = container

    def forward(self, x: Tensor) -> Any:
        out = self.classifier(self.body(x))
        return {"out": out, "aux": out.mean()} if self.container else out


def _seg() -> tuple[nn.Module, Tensor]:
    return SegNet().eval(), torch.randn(4, 2, 8, 8)


MASK = torch.zeros(8, 8, dtype=torch.bool)
MASK[2:5, 1:7] = True


@pytest.mark.parametrize(
    ("region", "weights"),
    [
        ({}, torch.ones(8, 8)),
        ({"mask": MASK}, MASK.float()),
        ({"box": (1, 2, 7, 5)}, MASK.float()),  # the same pixels as MASK
    ],
)
def test_segmentation_scores_sum_the_class_logit_over_the_region(
    region: dict[str, Any], weights: Tensor
) -> None:
    model, x = _seg()
    target = SegmentationTarget([0, 2, 1, 2], **region)
    out = model(x)["out"]
    expected = torch.stack([(out[i, c] * weights).sum() for i, c in enumerate([0, 2, 1, 2])])
    torch.testing.assert_close(target(model(x)), expected)
    result = camkit.GradCAM(model, "body.1").explain(x, target)
    torch.testing.assert_close(result.scores, expected.detach())
    raw = reference_gradcam_at(model, model.body[1], x, target)
    torch.testing.assert_close(result.maps.double(), finish(raw, (8, 8)), atol=1e-5, rtol=1e-4)


def test_a_mask_at_another_resolution_is_averaged_onto_the_output_grid() -> None:
    model, x = _seg()
    fine = torch.rand(16, 16)
    coarse = F.avg_pool2d(fine[None, None], 2)[0, 0]
    got = SegmentationTarget(1, mask=fine)(model(x))
    torch.testing.assert_close(got, SegmentationTarget(1, mask=coarse)(model(x)))


@pytest.mark.parametrize("method", PER_SAMPLE_METHODS)
def test_per_sample_classes_masks_and_boxes_follow_each_sample(method: str) -> None:
    model, x = _seg()
    classes = [0, 2, 1, 2]
    masks = torch.rand(4, 8, 8) > 0.5
    boxes = torch.tensor([[0, 0, 4, 4], [2, 2, 8, 8], [1, 0, 8, 5], [0, 3, 6, 8]])
    for region in ({"mask": masks}, {"box": boxes}):
        cam = PER_SAMPLE_METHODS[method](model, "body.1")
        got = cam(x, SegmentationTarget(classes, **region))
        alone = [
            cam(x[i : i + 1], SegmentationTarget(c, **{k: v[i] for k, v in region.items()}))
            for i, c in enumerate(classes)
        ]
        torch.testing.assert_close(got, torch.cat(alone), atol=1e-5, rtol=1e-4)


def test_k_segmentation_classes_give_k_maps_equal_to_separate_calls() -> None:
    model, x = _seg()
    cam = camkit.GradCAM(model, "body.1")
    both = cam(x, SegmentationTarget([[0, 2]] * 4, mask=MASK))
    assert both.shape == (4, 2, 8, 8)
    for j, c in enumerate([0, 2]):
        torch.testing.assert_close(both[:, j], cam(x, SegmentationTarget(c, mask=MASK)))


def test_a_plain_segmentation_tensor_output_works_too() -> None:
    model = SegNet(container=False).eval()
    x = torch.randn(2, 2, 8, 8)
    out = model(x)
    torch.testing.assert_close(SegmentationTarget(1)(out), out[:, 1].sum((1, 2)))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: SegmentationTarget(1, mask=MASK, box=(0, 0, 1, 1)), "give a mask or a box"),
        (lambda: SegmentationTarget(-1), "must be non-negative"),
        (lambda: SegmentationTarget(1.5), "integer class indices"),  # type: ignore[arg-type]
        (lambda: SegmentationTarget(1, box=(0, 0, 1)), r"a box is \(x0, y0, x1, y1\)"),
    ],
)
def test_bad_segmentation_targets_are_refused_on_construction(
    make: Callable[[], Any], message: str
) -> None:
    with pytest.raises(camkit.CamkitError, match=message):
        make()


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (SegmentationTarget(3), "class 3 is out of range; the output has 3 classes"),
        (SegmentationTarget([0, 1]), "classes: got 2 rows for a batch of 4"),
        (SegmentationTarget(0, mask=torch.ones(1, 2, 3, 3)), r"mask: got shape \(1, 2, 3, 3\)"),
    ],
)
def test_segmentation_targets_that_do_not_fit_the_output_are_clear_errors(
    target: SegmentationTarget, message: str
) -> None:
    model, x = _seg()
    before = snapshot(model)
    with pytest.raises(camkit.CamkitValueError, match=message):
        camkit.GradCAM(model, "body.1")(x, target)
    assert_untouched(before, snapshot(model))


def test_aug_smooth_refuses_targets_tied_to_positions() -> None:
    model, x = _seg()
    with pytest.raises(camkit.CamkitValueError, match="aug_smooth: the target"):
        camkit.GradCAM(model, "body.1")(x, SegmentationTarget(1, mask=MASK), aug_smooth=True)


class ToyDetector(nn.Module):
    """A detector with torchvision's eval output: per image, a dict of boxes, labels, scores.

    Two fixed candidate boxes per image; their scores (sigmoid of pooled
    features) and labels depend on the features, so gradients reach the layer.
    """

    BOXES = torch.tensor([[0.0, 0.0, 4.0, 4.0], [3.0, 3.0, 8.0, 8.0]])

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> list[dict[str, Tensor]]:
        features = self.body(x)
        outputs = []
        for f in features:
            logits = torch.stack([self.head(f[:, :4, :4].mean((1, 2))), self.head(f.mean((1, 2)))])
            scores, labels = torch.sigmoid(logits).max(1)
            outputs.append({"boxes": self.BOXES.clone(), "labels": labels + 1, "scores": scores})
        return outputs


def _detector() -> tuple[nn.Module, Tensor, list[dict[str, Tensor]]]:
    model, x = ToyDetector().eval(), torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        found = model(x)
    return model, x, found


def test_box_iou_matches_torchvision() -> None:
    from torchvision import ops  # a test dependency: fails, rather than skips, without it

    a = torch.rand(5, 2) * 10
    a = torch.cat([a, a + torch.rand(5, 2) * 5], 1)
    b = torch.cat([a[:3] + 1, torch.tensor([[20.0, 20, 21, 21]])])
    torch.testing.assert_close(box_iou(a, b), ops.box_iou(a, b))


def test_a_detection_target_scores_the_matching_detection() -> None:
    model, x, found = _detector()
    labels = torch.stack([f["labels"] for f in found])  # (N, 2): the two boxes' labels
    shifted = ToyDetector.BOXES + torch.tensor([0.3, 0.0, 0.3, 0.0])  # IoU about 0.9
    target = DetectionTarget(labels, shifted.expand(3, 2, 4))
    scores = target(model(x))
    torch.testing.assert_close(scores, torch.stack([f["scores"] for f in found]))
    summed = DetectionTarget(labels, shifted.expand(3, 2, 4), reduce="sum")(model(x))
    torch.testing.assert_close(summed, scores.sum(1))


def test_detection_maps_equal_plain_autograd_and_the_model_is_untouched() -> None:
    model, x, found = _detector()
    labels = torch.stack([f["labels"][1:] for f in found])
    target = DetectionTarget(labels, ToyDetector.BOXES[1:].expand(3, 1, 4))
    before = snapshot(model)
    maps = camkit.GradCAM(model, "body.1")(x, target)
    assert maps.shape == (3, 1, 8, 8)
    assert_untouched(before, snapshot(model))
    raw = reference_gradcam_at(model, model.body[1], x, lambda out: target(out)[:, 0])
    torch.testing.assert_close(maps[:, 0].double(), finish(raw, (8, 8)), atol=1e-5, rtol=1e-4)


def test_every_detection_is_one_of_k_maps_in_one_pass() -> None:
    model, x, found = _detector()
    target = DetectionTarget.every(min_score=0.0)
    result = camkit.GradCAM(model, "body.1").explain(x, target)
    assert result.maps.shape == (3, 2, 8, 8)
    torch.testing.assert_close(target.labels, torch.stack([f["labels"] for f in found]))
    torch.testing.assert_close(target.boxes, ToyDetector.BOXES.expand(3, 2, 4))
    torch.testing.assert_close(result.scores, torch.stack([f["scores"] for f in found]))
    for j in range(2):
        alone = camkit.GradCAM(model, "body.1")(
            x, DetectionTarget(target.labels[:, j : j + 1], ToyDetector.BOXES[j].expand(3, 1, 4))
        )
        torch.testing.assert_close(result.maps[:, j], alone[:, 0])


def test_every_detection_pads_images_with_fewer_and_refuses_none() -> None:
    model, x, found = _detector()
    cutoff = float(torch.stack([f["scores"] for f in found]).flatten().sort().values[2])
    target = DetectionTarget.every(min_score=cutoff)
    result = camkit.GradCAM(model, "body.1").explain(x, target)
    padded = target.labels == -1
    assert padded.any()
    assert (result.scores[padded] == 0).all()
    assert (result.maps[padded] == 0).all()
    with pytest.raises(camkit.CamkitValueError, match=r"no detection scores min_score=2\.0"):
        camkit.GradCAM(model, "body.1")(x, DetectionTarget.every(min_score=2.0))


def test_a_box_without_a_match_is_a_clear_error_in_the_explained_pass() -> None:
    model, x, found = _detector()
    wrong_label = int(found[0]["labels"][0]) % 2 + 1
    target = DetectionTarget(wrong_label, ToyDetector.BOXES[0].expand(3, 1, 4))
    with pytest.raises(camkit.CamkitValueError, match=r"box 0 of sample \d .*matches no detection"):
        camkit.GradCAM(model, "body.1")(x, target)
    far = DetectionTarget(1, torch.tensor([[20.0, 20.0, 30.0, 30.0]]))
    with pytest.raises(camkit.CamkitValueError, match=r"best IoU .* is 0, below iou_thresh"):
        far(found)


def test_a_box_without_a_match_scores_zero_when_the_model_is_re_run() -> None:
    _, _, found = _detector()
    far = DetectionTarget(1, torch.tensor([[20.0, 20.0, 30.0, 30.0]]))
    assert (far(found, samples=torch.arange(3)) == 0).all()


def test_a_detection_target_needs_detections() -> None:
    with pytest.raises(camkit.CamkitTypeError, match="list of dicts with 'boxes', 'labels'"):
        DetectionTarget(1, [0, 0, 1, 1])(torch.zeros(2, 3))


class Embedder(nn.Module):
    def __init__(self, key: str | None = None) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU())
        self.proj = nn.Linear(5, 6)
        self.key = key

    def forward(self, x: Tensor) -> Any:
        embedding = self.proj(self.body(x).mean((2, 3)))
        return {self.key: embedding, "other": embedding[:, 0]} if self.key else embedding


def test_similarity_is_the_cosine_similarity_to_each_reference() -> None:
    model, x = Embedder("image_embeds").eval(), torch.randn(4, 3, 8, 8)
    refs = torch.randn(2, 6)
    embedding = model(x)["image_embeds"]
    expected = F.cosine_similarity(embedding[:, None], refs[None], dim=-1)
    torch.testing.assert_close(SimilarityTarget(refs, key="image_embeds")(model(x)), expected)
    one = SimilarityTarget(refs[1], key="image_embeds")
    torch.testing.assert_close(one(model(x)), expected[:, 1])
    maps = camkit.GradCAM(model, "body.1")(x, SimilarityTarget(refs, key="image_embeds"))
    assert maps.shape == (4, 2, 8, 8)
    raw = reference_gradcam_at(model, model.body[1], x, one)
    torch.testing.assert_close(maps[:, 1].double(), finish(raw, (8, 8)), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", PER_SAMPLE_METHODS)
def test_per_sample_references_follow_each_sample(method: str) -> None:
    model, x = Embedder().eval(), torch.randn(4, 3, 8, 8)
    refs = torch.randn(4, 6)
    cam = PER_SAMPLE_METHODS[method](model, "body.1")
    got = cam(x, SimilarityTarget(refs, per_sample=True))
    alone = [cam(x[i : i + 1], SimilarityTarget(refs[i])) for i in range(4)]
    torch.testing.assert_close(got, torch.cat(alone), atol=1e-5, rtol=1e-4)


def test_similarity_names_the_field_it_cannot_find() -> None:
    model, x = Embedder("image_embeds").eval(), torch.randn(1, 3, 8, 8)
    with pytest.raises(camkit.CamkitTypeError, match=r"its fields: \['image_embeds', 'other'\]"):
        camkit.GradCAM(model, "body.1")(x, SimilarityTarget(torch.randn(6)))


class OneLogit(nn.Module):
    def __init__(self, outputs: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
        self.head = nn.Linear(4, outputs)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x).mean((2, 3)))


def test_binary_targets_are_the_logit_and_its_negative() -> None:
    model, x = OneLogit().eval(), torch.randn(5, 1, 8, 8)
    logit = model(x)[:, 0]
    torch.testing.assert_close(BinaryTarget(1)(model(x)), logit)
    torch.testing.assert_close(
        BinaryTarget([0, 1, 0, 1, 1])(model(x)), logit * torch.tensor([-1.0, 1, -1, 1, 1])
    )
    predicted = BinaryTarget(None)
    torch.testing.assert_close(predicted(model(x)), logit.abs())
    cam = camkit.GradCAM(model, "body.1")
    one = cam(x, BinaryTarget(1), relu=False, normalize=False)
    zero = cam(x, BinaryTarget(0), relu=False, normalize=False)
    torch.testing.assert_close(zero, -one)


def test_binary_targets_refuse_several_logits() -> None:
    model = OneLogit(outputs=3).eval()
    with pytest.raises(camkit.CamkitValueError, match=r"one logit per sample.*got shape \(2, 3\)"):
        camkit.GradCAM(model, "body.1")(torch.randn(2, 1, 8, 8), BinaryTarget(1))
    with pytest.raises(camkit.CamkitValueError, match="a binary target takes 0 or 1"):
        BinaryTarget(2)


def test_regression_targets_read_the_value_and_can_negate_it() -> None:
    model, x = OneLogit(outputs=3).eval(), torch.randn(5, 1, 8, 8)
    out = model(x)
    torch.testing.assert_close(RegressionTarget(index=2)(out), out[:, 2])
    torch.testing.assert_close(RegressionTarget(index=[0, 2])(out), out[:, [0, 2]])
    torch.testing.assert_close(RegressionTarget()(out[:, :1]), out[:, 0])
    cam = camkit.GradCAM(model, "body.1")
    up = cam(x, RegressionTarget(index=1), relu=False, normalize=False)
    down = cam(x, RegressionTarget(index=1, negate=True), relu=False, normalize=False)
    torch.testing.assert_close(down, -up)
    with pytest.raises(camkit.CamkitValueError, match=r"index: the output has shape \(5, 3\)"):
        cam(x, RegressionTarget())


def test_many_targets_are_differentiated_in_chunks_equal_to_separate_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import camkit._engine.gradients

    monkeypatch.setattr(camkit._engine.gradients, "CHUNK", 2)  # 5 targets: chunks of 2, 2 and 1
    model, x = OneLogit(outputs=5).eval(), torch.randn(3, 1, 8, 8)
    cam = camkit.GradCAM(model, "body.1")
    together = cam(x, RegressionTarget(index=[4, 0, 1, 3, 2]))
    for j, index in enumerate([4, 0, 1, 3, 2]):
        torch.testing.assert_close(together[:, j], cam(x, RegressionTarget(index=index)))


def test_a_box_of_zero_area_matches_itself() -> None:
    empty = torch.tensor([[60.0, 47.0, 60.0, 48.0]])
    iou = box_iou(torch.cat([empty, empty + 1]), empty)
    torch.testing.assert_close(iou, torch.tensor([[1.0], [0.0]]))


def _classifier() -> tuple[nn.Module, Tensor]:
    return OneLogit(outputs=4).eval(), torch.randn(3, 1, 8, 8)


def _predicted(model: nn.Module, x: Tensor) -> Tensor:
    return model(x).argmax(1)  # under inference_mode: an inference tensor, as users make them


INFERENCE_TARGETS: dict[str, tuple[Callable[[], tuple[nn.Module, Tensor]], str, Any]] = {
    "classes": (_classifier, "body.1", _predicted),
    "class tensor": (_classifier, "body.1", lambda m, x: torch.tensor([3, 0, 1])),
    "finer": (_classifier, "body.1", lambda m, x: camkit.FinerTarget(_predicted(m, x))),
    "binary": (lambda: (OneLogit().eval(), torch.randn(3, 1, 8, 8)), "body.1",
               lambda m, x: BinaryTarget(torch.tensor([1, 0, 1]))),
    "regression": (_classifier, "body.1", lambda m, x: RegressionTarget(torch.tensor([0, 2]))),
    "similarity": (lambda: (Embedder().eval(), torch.randn(3, 3, 8, 8)), "body.1",
                   lambda m, x: SimilarityTarget(m(x))),
    "similarity per sample": (lambda: (Embedder().eval(), torch.randn(3, 3, 8, 8)), "body.1",
                              lambda m, x: SimilarityTarget(m(x).flip(0), per_sample=True)),
    "segmentation mask": (_seg, "body.1", lambda m, x: SegmentationTarget(1, mask=MASK.clone())),
    "segmentation box": (_seg, "body.1", lambda m, x: SegmentationTarget(
        torch.tensor([1, 2, 0, 1]), box=torch.tensor([1, 2, 7, 5]))),
    "detection": (lambda: _detector()[:2], "body.1", lambda m, x: DetectionTarget(
        torch.tensor([1, 1, 1]), ToyDetector.BOXES[:1].clone())),
}  # fmt: skip


@pytest.mark.parametrize("method", PER_SAMPLE_METHODS)
@pytest.mark.parametrize("kind", INFERENCE_TARGETS)
def test_targets_made_under_inference_mode_give_the_same_maps(method: str, kind: str) -> None:
    """Tensors made under torch.inference_mode (classes predicted there, say) cannot be saved
    for a backward pass; a target holding them explains as a target made outside does, the
    call itself under inference_mode or not."""
    make_model, layer, make_target = INFERENCE_TARGETS[kind]
    torch.manual_seed(0)
    model, x = make_model()
    cam = PER_SAMPLE_METHODS[method](model, layer)
    with torch.no_grad():
        expected = cam(x, make_target(model, x))
    with torch.inference_mode():
        target = make_target(model, x)
        inside = cam(x, target)
    assert torch.equal(inside, expected)
    with torch.inference_mode():
        target = make_target(model, x)
    assert torch.equal(cam(x, target), expected)
