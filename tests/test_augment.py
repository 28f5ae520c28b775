"""Test-time augmentation: the maps of augmented copies, brought back and averaged."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camkit import (
    CamkitTypeError,
    CamkitValueError,
    GradCAM,
)
from tests.method_cases import CLASSES, SHAPES
from tests.models import conv_net

# --- test-time augmentation ---


def _manual_augmented(cam: Any, x: Tensor, classes: Tensor, pairs: list[Any]) -> Tensor:
    """The mean of x's raw map and each copy's, brought back by hand."""
    options = {"normalize": False}
    total = cam(x, classes, **options)
    for apply, back in pairs:
        total = total + back(cam(apply(x), classes, **options))
    return total / (1 + len(pairs))


def test_augmentations_average_the_maps_brought_back() -> None:
    from camkit.augment import horizontal_flip, photometric, rotation, scaled, vertical_flip

    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(3))
    model.append(nn.Flatten()).append(nn.Linear(36, 5)).eval()
    x = torch.randn(3, 2, 12, 12)
    classes = torch.tensor([1, 4, 0])
    cam = GradCAM(model, "1")
    pairs = [
        (lambda t: t.flip(-1), lambda m: m.flip(-1)),
        (lambda t: t.flip(-2), lambda m: m.flip(-2)),
        (lambda t: torch.rot90(t, 1, (-2, -1)), lambda m: torch.rot90(m, -1, (-2, -1))),
        (
            lambda t: F.interpolate(t, size=(18, 18), mode="bilinear"),
            lambda m: F.interpolate(m[:, None], size=(12, 12), mode="bilinear")[:, 0],
        ),
        (lambda t: 0.5 * t, lambda m: m),
    ]
    expected = _manual_augmented(cam, x, classes, pairs)
    augment = [horizontal_flip, vertical_flip, rotation(1), scaled(1.5)]
    augment.append(photometric(lambda t: 0.5 * t))
    got = cam(x, classes, normalize=False, augment=augment)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_aug_smooth_is_the_horizontal_flip_augmentation() -> None:
    from camkit.augment import horizontal_flip

    model = conv_net(2)
    x = torch.randn(SHAPES[2])
    cam = GradCAM(model, ["2", "4"])
    torch.testing.assert_close(
        cam(x, CLASSES, aug_smooth=True), cam(x, CLASSES, augment=[horizontal_flip])
    )


def test_augmented_copies_explain_the_classes_explained_on_x() -> None:
    from camkit.augment import rotation

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten())
    model.append(nn.Linear(400, 5)).eval()
    x = torch.randn(6, 2, 10, 10)
    predicted = model(x).argmax(1)
    copies = model(torch.rot90(x, 1, (-2, -1))).argmax(1)
    assert not torch.equal(predicted, copies)  # some copy alone would explain another class
    cam = GradCAM(model, "1")
    torch.testing.assert_close(
        cam(x, augment=[rotation(1)]), cam(x, predicted, augment=[rotation(1)])
    )


def test_augmentation_errors_name_the_argument_and_leave_the_model_untouched() -> None:
    from camkit import SegmentationTarget
    from camkit.augment import Augmentation, horizontal_flip, photometric
    from tests.helpers import assert_untouched, snapshot

    model = conv_net(2)
    x = torch.randn(SHAPES[2])
    before = snapshot(model, x)
    cam = GradCAM(model, "4")
    with pytest.raises(CamkitTypeError, match="augment: got 'flip'"):
        cam(x, 1, augment=["flip"])
    bad = Augmentation(lambda t: t, lambda maps, size: maps[..., 1:], "crop")
    with pytest.raises(CamkitValueError, match="augment: 'crop' brought a map"):
        cam(x, 1, augment=[bad])
    pixels = SegmentationTarget(1, mask=torch.ones(11, 9, dtype=torch.bool))
    with pytest.raises(CamkitValueError, match=r"augment: the target .*horizontal flip"):
        cam(x, pixels, augment=[horizontal_flip])
    assert_untouched(before, snapshot(model, x))
    cam(x, 1, augment=[photometric(lambda t: 2 * t)])  # values only: allowed
