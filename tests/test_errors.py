"""Bad input gets an error that names the argument, what it got and what is allowed."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from camkit import CamkitError, CamkitTypeError, CamkitValueError, GradCAM, find_layer
from examples.mnist.model import MnistNet
from tests.helpers import WRONG_VALUES


@pytest.fixture
def net() -> MnistNet:
    return MnistNet().eval()


def test_error_family() -> None:
    assert issubclass(CamkitValueError, CamkitError)
    assert issubclass(CamkitValueError, ValueError)
    assert issubclass(CamkitTypeError, CamkitError)
    assert issubclass(CamkitTypeError, TypeError)


@pytest.mark.parametrize(
    ("wrong", "suggested"),
    [
        ("features.rlu", "'features.relu'"),
        ("relu", "'features.relu'"),
        ("features.conv", "'features.conv1'"),
        ("Linear", "'classifier.1' (Linear)"),
    ],
)
def test_unknown_layer_lists_closest_names(net: MnistNet, wrong: str, suggested: str) -> None:
    with pytest.raises(CamkitValueError, match="layer") as info:
        GradCAM(net, wrong)
    assert repr(wrong) in str(info.value)
    assert suggested in str(info.value)


def test_layer_by_module_and_bad_layer_types(net: MnistNet) -> None:
    assert GradCAM(net, net.features.relu).layer_name == "features.relu"
    with pytest.raises(CamkitValueError, match=r"not a submodule"):
        GradCAM(net, nn.ReLU())
    with pytest.raises(CamkitTypeError, match=r"layer: expected .* got int"):
        GradCAM(net, 3)  # type: ignore[arg-type]
    with pytest.raises(CamkitValueError, match="empty name"):
        GradCAM(net, "")
    with pytest.raises(CamkitTypeError, match=r"model: expected a torch\.nn\.Module, got str"):
        find_layer("net", "x")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("target", "error", "message"),
    [
        (10, CamkitValueError, r"target: class 10 .* 10 classes, so allowed: 0 to 9"),
        ([1, 2, 12], CamkitValueError, r"class 12 \(sample 2\) is out of range"),
        (-1, CamkitValueError, r"target: got -1; class indices must be non-negative"),
        ([0, -3, 1], CamkitValueError, r"target\[1\]: got -3"),
        (torch.tensor([0, -3, 1]), CamkitValueError, r"got class -3"),
        (2.0, CamkitTypeError, r"target: class indices must be ints, got 2.0 \(float\)"),
        ({1: 2}, CamkitTypeError, r"target: got dict; allowed: None, an int"),
        ([0, 1.5, 2], CamkitTypeError, r"target\[1\]: class indices must be ints, got 1.5"),
        (True, CamkitTypeError, r"class indices must be ints, got True"),
        ([1, 2], CamkitValueError, r"target: got 2 classes for a batch of 3"),
        (torch.tensor([1.0, 2.0, 3.0]), CamkitTypeError, r"integer dtype, got torch.float32"),
        (torch.tensor([1, 2]), CamkitValueError, r"must have shape \(3,\).* got \(2,\)"),
        (torch.zeros(3, 1, 2, dtype=torch.int64), CamkitValueError, r"got \(3, 1, 2\)"),
        (torch.zeros(3, 0, dtype=torch.int64), CamkitValueError, r"got \(3, 0\)"),
        ([[1, 2], [3], [4, 5]], CamkitValueError, r"same, non-zero number of classes"),
        ([[1, 2], [3, 1.5], [4, 5]], CamkitTypeError, r"target\[1\]\[1\]: class indices"),
        ("3", CamkitTypeError, r"target: got str"),
        (lambda out: out[:, None], CamkitValueError, r"callable must return .* \(3, 1, 10\)"),
        (lambda out: out[:2, 0], CamkitValueError, r"callable must return .* shape \(2,\)"),
        (lambda out: out.argmax(1), CamkitTypeError, r"callable must return float scores"),
        (lambda out: 1.0, CamkitValueError, r"returned float"),
    ],
)
def test_bad_targets(net: MnistNet, target: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        GradCAM(net, "features.relu")(torch.randn(3, 1, 28, 28), target)


def test_integer_like_targets_are_accepted(net: MnistNet) -> None:
    x = torch.randn(3, 1, 28, 28)
    cam = GradCAM(net, "features.relu")
    expected = cam(x, [4, 4, 4])
    for target in (
        4,
        np.int64(4),
        torch.tensor(4),
        np.array([4, 4, 4]),
        (4, 4, 4),
        torch.tensor([4, 4, 4], dtype=torch.int32),
    ):
        torch.testing.assert_close(cam(x, target), expected)


@pytest.mark.parametrize(
    ("x", "error", "message"),
    [
        ([[1.0]], CamkitTypeError, r"x: expected a torch.Tensor, got list"),
        (torch.ones(2, 1, 28, 28, dtype=torch.uint8), CamkitTypeError, r"x: .*floating.*uint8"),
        (torch.ones(2, 1, 28, 28, dtype=torch.bool), CamkitTypeError, r"dtype torch.bool"),
        (torch.ones(0, 1, 28, 28), CamkitValueError, r"x: expected a non-empty batch"),
        (torch.ones(5), CamkitValueError, r"got shape \(5,\)"),
    ],
)
def test_bad_inputs(net: MnistNet, x: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        GradCAM(net, "features.relu")(x, 0)


def test_layer_problems_found_in_the_forward_pass(net: MnistNet) -> None:
    x = torch.randn(2, 1, 28, 28)
    with pytest.raises(CamkitValueError, match=r"'classifier.1' returned shape \(2, 10\)"):
        GradCAM(net, "classifier.1")(x, 0)
    model = Skipping().eval()
    with pytest.raises(CamkitValueError, match="'spare' was not reached"):
        GradCAM(model, "spare")(x, 0)


class Skipping(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.spare = nn.ReLU()
        self.fc = nn.Linear(2 * 26 * 26, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).flatten(1))


def test_unrelated_score_is_refused(net: MnistNet) -> None:
    with pytest.raises(CamkitValueError, match=r"score does not depend on layer 'features\.relu'"):
        GradCAM(net, "features.relu")(torch.randn(2, 1, 28, 28), lambda out: torch.ones(2))


def _entry_points(folder: Any) -> dict[str, tuple[Any, Any, dict[str, Any]]]:
    """The public functions beyond the explainers and metrics (which have their own such
    tests), each with a way to make its required arguments, and options that keep it quiet."""
    import tempfile

    from torch.utils.data import DataLoader, TensorDataset

    import camkit
    import camkit.metrics as metrics
    import camkit.plot as plot

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 64, 3)).eval()  # fmt: skip
    loader = DataLoader(TensorDataset(torch.rand(6, 1, 8, 8), torch.arange(6) % 3), batch_size=4)
    cam = GradCAM(model, "1")
    store = camkit.explain_dataset(cam, loader, folder / "store", progress=False)
    image, one = torch.rand(3, 8, 8), torch.rand(8, 8)
    volume, volume_map = torch.rand(6, 8, 8), torch.rand(6, 8, 8)
    clip, clip_maps = torch.rand(3, 4, 8, 8), torch.rand(4, 8, 8)
    quiet = {"progress": False}
    return {
        "explain_dataset": (camkit.explain_dataset,
                            lambda: (cam, loader, tempfile.mkdtemp(dir=folder)), quiet),
        "view": (camkit.view, lambda: (store, tempfile.mkdtemp(dir=folder)), quiet),
        "evaluate": (metrics.evaluate,
                     lambda: (model, cam, loader, {"deletion": metrics.deletion}), quiet),
        "compare": (metrics.compare,
                    lambda: (model, loader, {"gc": cam}, {"deletion": metrics.deletion}),
                    {"resamples": 20, **quiet}),
        "blend": (plot.blend, lambda: (image, one), {}),
        "overlay": (plot.overlay, lambda: (image, one), {}),
        "grid": (plot.grid, lambda: ([image, image], [one, None]), {}),
        "plot.compare": (plot.compare, lambda: (image, torch.rand(3, 8, 8)), {}),
        "concepts": (plot.concepts, lambda: (image, torch.rand(2, 8, 8)), {}),
        "tokens": (plot.tokens, lambda: (image, torch.rand(2, 8, 8), ["a", "b"]), {}),
        "orthogonal_slices": (plot.orthogonal_slices, lambda: (volume, volume_map), {}),
        "slice_grid": (plot.slice_grid, lambda: (volume, volume_map), {}),
        "frame_strip": (plot.frame_strip, lambda: (clip, clip_maps), {}),
        "animate": (plot.animate,
                    lambda: (clip, clip_maps, tempfile.mktemp(suffix=".gif", dir=folder)), {}),
    }  # fmt: skip


@pytest.mark.parametrize(
    "name",
    ["explain_dataset", "view", "evaluate", "compare", "blend", "overlay", "grid", "plot.compare",
     "concepts", "tokens", "orthogonal_slices", "slice_grid", "frame_strip", "animate"],
)  # fmt: skip
def test_every_option_of_the_entry_points_refuses_values_of_the_wrong_kind(
    name: str, tmp_path: Any
) -> None:
    """Each keyword option given ten wrong values (a string for a number, an int for a
    function, a device this machine lacks, ...) gets camkit's error, never a raw one."""
    import inspect

    import matplotlib.pyplot as plt

    function, arguments, quiet = _entry_points(tmp_path)[name]
    raw = []
    for option in inspect.signature(function).parameters.values():
        if option.default is option.empty or option.kind is option.VAR_KEYWORD:
            continue
        for wrong in WRONG_VALUES:
            if (
                (wrong is None and option.default is None)
                or (wrong is True and isinstance(option.default, bool))
                or (option.name == "device" and wrong == 0 and torch.cuda.is_available())
            ):  # a right value: a flag's True, or cuda:0 where there is one
                continue
            try:
                function(*arguments(), **{**quiet, option.name: wrong})
            except CamkitError:
                continue
            except Exception as error:  # a raw error: what the test looks for
                raw.append(f"{option.name}={wrong!r}: {type(error).__name__}"[:100])
            finally:
                plt.close("all")
    assert not raw, f"{name}: raw errors for " + "; ".join(raw)


def test_the_testing_helpers_refuse_what_is_not_a_model_or_an_input() -> None:
    from camkit.testing import model_state

    with pytest.raises(CamkitTypeError, match=r"^model: got str; allowed: a torch.nn.Module"):
        model_state("resnet18")  # type: ignore[arg-type]
    with pytest.raises(CamkitTypeError, match=r"^x: got list; allowed: a tensor, or None"):
        model_state(nn.Linear(2, 2), [1.0, 2.0])  # type: ignore[arg-type]
    assert model_state(nn.Linear(2, 2), torch.ones(1, 2)).output is not None
