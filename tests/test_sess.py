"""SESS against pytorch-grad-cam's, and its parts by their definitions."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import camkit
from camkit import SESS, CamkitTypeError, CamkitValueError
from tests.helpers import assert_untouched, snapshot


def patch_net() -> nn.Sequential:
    """Full-resolution layer "1"; global pooling, so any patch size works."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 5, 3, padding=1),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(20, 7),
    ).eval()


OPTIONS: list[dict[str, Any]] = [
    {"num_scales": 3},
    {"scales": [16, 23, 30], "step": 8, "pool": "max"},
    {"num_scales": 2, "pre_filter": 0.5, "theta": 0.2, "smooth": False},
    # overlapping windows: with theta = 0, a pixel that one library's resizing leaves at 1e-9
    # and the other's at 0 counts in one mean and not the other; a threshold above it agrees
    {"num_scales": 2, "softmax_scores": False, "window": 10, "step": 5, "theta": 0.05},
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o))
def test_sess_agrees_with_pytorch_grad_cam(options: dict[str, Any]) -> None:
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = patch_net()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 16, 20)
    classes = [3, 5]
    renamed = {"window": "window_size", "step": "step_size", "pre_filter": "pre_filter_ratio"}
    renamed["softmax_scores"] = "use_softmax_scores"
    theirs_options = {renamed.get(k, k): v for k, v in options.items()}
    cam = pytorch_grad_cam.SESS(model, [model[1]], batch_size=8, **theirs_options)
    theirs = torch.from_numpy(cam(x, [ClassifierOutputTarget(c) for c in classes]))
    cam.base_cam.activations_and_grads.release()
    ours = SESS(camkit.GradCAM(model, "1"), batch_size=8, **options)(x, classes)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-4)


def test_one_scale_one_window_no_blur_is_the_explainer_itself() -> None:
    model = patch_net()
    x = torch.randn(2, 3, 12, 12)
    cam = camkit.GradCAM(model, "1")
    sess = SESS(cam, scales=[12], smooth=False)
    torch.testing.assert_close(sess(x, [1, 2]), cam(x, [1, 2]))


def test_blur_is_opencvs_gaussian() -> None:
    import cv2

    from camkit.methods.sess import _blurred

    image = torch.rand(17, 23)
    expected = cv2.GaussianBlur(image.numpy(), (11, 11), 5.0, 0)
    torch.testing.assert_close(_blurred(image), torch.from_numpy(np.asarray(expected)))


def test_sess_predicted_class_and_untouched_model() -> None:
    model = patch_net().train()
    x = torch.randn(2, 3, 12, 12)
    before = snapshot(model, x)
    model.eval()
    predicted = model(x).argmax(1)
    model.train()
    sess = SESS(camkit.GradCAM(model, "1"), num_scales=2)
    torch.testing.assert_close(sess(x), sess(x, predicted))
    assert_untouched(before, snapshot(model, x))


def test_sess_refusals() -> None:
    model = patch_net()
    cam = camkit.GradCAM(model, "1")
    with pytest.raises(CamkitTypeError, match="explainer: got Sequential"):
        SESS(model)  # type: ignore[arg-type]
    with pytest.raises(CamkitValueError, match="pool: got 'median'"):
        SESS(cam, pool="median")
    with pytest.raises(CamkitValueError, match=r"pre_filter: got 1\.0"):
        SESS(cam, pre_filter=1.0)
    with pytest.raises(CamkitValueError, match="scales: got 8; every scale must be at least"):
        SESS(cam, scales=[8])(torch.randn(1, 3, 12, 12))
    with pytest.raises(CamkitTypeError, match="target: SESS scores each patch"):
        SESS(cam)(torch.randn(1, 3, 12, 12), lambda out: out[:, 0])  # type: ignore[arg-type]
    with pytest.raises(CamkitValueError, match="x: SESS slides a window over images"):
        SESS(cam)(torch.randn(1, 3, 12))
    with pytest.raises(CamkitValueError, match="target: SESS explains one class per image"):
        SESS(cam)(torch.randn(2, 3, 12, 12), torch.tensor([[0, 1], [1, 0]]))
    with pytest.raises(CamkitValueError, match="forward_args: SESS runs the model on patches"):
        SESS(cam).explain(torch.randn(1, 3, 12, 12), forward_args=(torch.zeros(1),))
    with pytest.raises(CamkitValueError, match=r"^upsample: SESS has only input-resolution"):
        SESS(cam).explain(torch.randn(1, 3, 12, 12), upsample=False)
