"""camkit's maps against pytorch-grad-cam's and TorchCAM's, where they define a method alike.

The peers are test dependencies (the ``peers`` extra), so these tests always run.
Every model keeps the input's resolution up to the explained layer, so no
peer resizes a map (pytorch-grad-cam with OpenCV, TorchCAM with its own
interpolation) and the maps compare value for value after each library's
min-max scaling. Methods whose conventions differ are listed at the end with
the reason, which the docstrings also give.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import camkit

pgc = pytest.importorskip
import pytorch_grad_cam  # noqa: E402
import torchcam.methods  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

SIZE = 8


def peer_net() -> nn.Sequential:
    """Two same-padded convs (layers "1" and "3", full resolution), then a curved head."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * SIZE * SIZE, 16),
        nn.Tanh(),
        nn.Linear(16, 10),
    ).eval()


def _inputs() -> tuple[Tensor, list[int]]:
    torch.manual_seed(1)
    return torch.randn(3, 3, SIZE, SIZE), [2, 7, 4]


def _pytorch_grad_cam(method: str, layer: str, **options: Any) -> Callable[..., np.ndarray]:
    def run(model: nn.Module, x: Tensor, classes: list[int] | None) -> np.ndarray:
        targets = None if classes is None else [ClassifierOutputTarget(c) for c in classes]
        cam = getattr(pytorch_grad_cam, method)(model, [model.get_submodule(layer)], **options)
        with contextlib.redirect_stderr(io.StringIO()):  # its progress bars
            maps: np.ndarray = cam(x, targets)
        cam.activations_and_grads.gradients = []  # its release() fails on ShapleyCAM's views
        cam.activations_and_grads.release()
        return maps

    return run


# camkit explainer, pytorch-grad-cam's name, layer; the camkit options make the two alike
PYTORCH_GRAD_CAM: dict[str, tuple[Callable[[nn.Module], Any], str, str]] = {
    "GradCAM": (lambda m: camkit.GradCAM(m, "3"), "GradCAM", "3"),
    "XGradCAM": (lambda m: camkit.XGradCAM(m, "3"), "XGradCAM", "3"),
    "HiResCAM": (lambda m: camkit.HiResCAM(m, "3"), "HiResCAM", "3"),
    "LayerCAM": (lambda m: camkit.LayerCAM(m, "3"), "LayerCAM", "3"),
    "GradCAMElementWise": (
        lambda m: camkit.GradCAMElementWise(m, "3"),
        "GradCAMElementWise",
        "3",
    ),
    "ShapleyCAM": (lambda m: camkit.ShapleyCAM(m, "3"), "ShapleyCAM", "3"),
    "FEM": (lambda m: camkit.FEM(m, "3"), "FEM", "3"),
    "SegEigenCAM": (lambda m: camkit.SegEigenCAM(m, "3"), "SegEigenCAM", "3"),
    "KPCA_CAM": (lambda m: camkit.KPCACAM(m, "3"), "KPCA_CAM", "3"),
    "KPCA_CAM rbf": (lambda m: camkit.KPCACAM(m, "3", kernel="rbf"), "KPCA_CAM", "3"),
    "ScoreCAM": (lambda m: camkit.ScoreCAM(m, "2", batch_size=16), "ScoreCAM", "2"),
    "AblationCAM": (lambda m: camkit.AblationCAM(m, "3", batch_size=16), "AblationCAM", "3"),
}


@pytest.mark.parametrize("name", list(PYTORCH_GRAD_CAM))
def test_maps_agree_with_pytorch_grad_cam(name: str) -> None:
    make, method, layer = PYTORCH_GRAD_CAM[name]
    model = peer_net()
    x, classes = _inputs()
    options = {"kernel": "rbf"} if name.endswith("rbf") else {}
    theirs = torch.from_numpy(_pytorch_grad_cam(method, layer, **options)(model, x, classes))
    ours = make(model)(x, classes)
    assert float(ours.amax(dim=(1, 2)).min()) == 1.0  # not a blank map
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_gradcam_pp_agrees_with_pytorch_grad_cam_where_its_epsilon_is_negligible() -> None:
    # pytorch-grad-cam adds 1e-6 to the denominator 2 g^2 + sum(A) g^3, which matters for
    # gradients near 1e-3 (as here); with the output scaled up 1000 times it does not
    model = peer_net()
    x, classes = _inputs()
    theirs = torch.from_numpy(_pytorch_grad_cam("GradCAMPlusPlus", "3")(model, x, classes))
    ours = camkit.GradCAMPlusPlus(model, "3")(x, classes)
    assert not torch.allclose(ours, theirs, atol=1e-4)
    with torch.no_grad():
        model[-1].weight.mul_(1000)
    theirs = torch.from_numpy(_pytorch_grad_cam("GradCAMPlusPlus", "3")(model, x, classes))
    ours = camkit.GradCAMPlusPlus(model, "3")(x, classes)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


@pytest.mark.parametrize("base", ["GradCAM", "GradCAMPlusPlus"])
def test_refine_cam_agrees_with_pytorch_grad_cam(base: str) -> None:
    from pytorch_grad_cam import RefineCAM

    model = peer_net()
    with torch.no_grad():
        model[-1].weight.mul_(1000)  # gradients well above Grad-CAM++'s epsilon (see above)
    x, classes = _inputs()
    layers = [model.get_submodule("1"), model.get_submodule("3")]
    cam = RefineCAM(model, layers, base_method=getattr(pytorch_grad_cam, base))
    theirs = torch.from_numpy(cam(x, [ClassifierOutputTarget(c) for c in classes]))
    for each in cam.base_cam_per_layer:
        each.activations_and_grads.release()
    if base == "GradCAM":
        ours = camkit.GradCAM(model, ["1", "3"], fuse="product")(x, classes)
    else:
        ours = camkit.RefineCAM(model, ["1", "3"])(x, classes)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_fullgrad_agrees_with_pytorch_grad_cam() -> None:
    from pytorch_grad_cam import FullGrad

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * SIZE * SIZE, 10),
    )
    model[1].running_mean.uniform_(-1, 1)
    model[1].running_var.uniform_(0.5, 2)
    model.eval()
    x, classes = _inputs()
    cam = FullGrad(model, [])
    theirs = torch.from_numpy(cam(x, [ClassifierOutputTarget(c) for c in classes]))
    cam.activations_and_grads.release()
    ours = camkit.FullGrad(model, scaling="per_channel")(x, classes)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_finer_cam_agrees_with_pytorch_grad_cam() -> None:
    from pytorch_grad_cam import FinerCAM

    model = peer_net()
    x, _ = _inputs()
    cam = FinerCAM(model, [model.get_submodule("3")])
    theirs = torch.from_numpy(cam(x))  # the predicted class against the 3 most similar
    cam.base_cam.activations_and_grads.release()
    ours = camkit.FinerCAM(model, "3")(x)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def _torchcam(method: str, **options: Any) -> Callable[[nn.Module, Tensor, list[int]], Tensor]:
    def run(model: nn.Module, x: Tensor, classes: list[int]) -> Tensor:
        extractor = getattr(torchcam.methods, method)
        with extractor(model, "2", input_shape=tuple(x.shape[1:]), **options) as cam:
            with torch.no_grad():
                model(x)
            maps: Tensor = cam(class_idx=classes)[0]
        return maps

    return run


# camkit explainer and TorchCAM's, the same options; the seed makes the noise the same
TORCHCAM: dict[str, tuple[Callable[[nn.Module], Any], Callable[..., Tensor]]] = {
    "ScoreCAM": (
        lambda m: camkit.ScoreCAM(m, "2", batch_size=4),
        _torchcam("ScoreCAM", batch_size=4),
    ),
    "SSCAM": (
        lambda m: camkit.SSCAM(m, "2", samples=3, noise_std=0.5, batch_size=4),
        _torchcam("SSCAM", batch_size=4, num_samples=3, std=0.5),
    ),
    "ISCAM": (
        lambda m: camkit.ISCAM(m, "2", samples=5, batch_size=4),
        _torchcam("ISCAM", batch_size=4, num_samples=5),
    ),
}


@pytest.mark.parametrize("name", list(TORCHCAM))
def test_maps_agree_with_torchcam(name: str) -> None:
    make, theirs_of = TORCHCAM[name]
    model = peer_net()
    x, classes = _inputs()
    torch.manual_seed(5)
    theirs = theirs_of(model, x, classes)
    torch.manual_seed(5)
    ours = make(model)(x, classes, upsample=False)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_the_documented_differences_are_real() -> None:
    """Where camkit follows the paper and a peer does not, the maps do differ: the
    docstrings' reasons are about methods that would otherwise agree."""
    model = peer_net()
    x, classes = _inputs()
    # Eigen-Grad-CAM: pytorch-grad-cam centres the matrix and keeps the SVD's sign
    theirs = torch.from_numpy(_pytorch_grad_cam("EigenGradCAM", "3")(model, x, classes))
    ours = camkit.EigenGradCAM(model, "3")(x, classes)
    assert not torch.allclose(ours, theirs, atol=1e-3)
    # Smooth Grad-CAM++: TorchCAM sums A * D3 over positions and uses the last copy's ReLU(g)
    torch.manual_seed(2)
    with torchcam.methods.SmoothGradCAMpp(model, "3", input_shape=(3, SIZE, SIZE)) as cam:
        scores = model(x)
        theirs = cam(class_idx=classes, scores=scores)[0]
    ours = camkit.SmoothGradCAMPlusPlus(model, "3", seed=2)(x, classes, upsample=False)
    assert not torch.allclose(ours, theirs, atol=1e-3)


def test_ss_cam_differs_from_torchcam_where_the_layer_is_smaller_than_the_input() -> None:
    """TorchCAM scales each channel before upsampling it, camkit after: the same at the
    input's resolution (above), not at a pooled layer."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 4, 3, padding=1),
        nn.ReLU(), nn.Flatten(), nn.Linear(4 * (SIZE // 2) ** 2, 10),
    ).eval()  # fmt: skip
    x, classes = _inputs()
    torch.manual_seed(5)
    theirs = _torchcam("SSCAM", batch_size=4, num_samples=3, std=0.5)(model, x, classes)
    torch.manual_seed(5)
    ours = camkit.SSCAM(model, "4", samples=3, noise_std=0.5, batch_size=4)
    assert not torch.allclose(ours(x, classes, upsample=False), theirs, atol=1e-3)
