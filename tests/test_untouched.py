"""After every call, successful or failing, the model is exactly as it was."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from camkit import CamkitError, CamkitTypeError, CamkitValueError, GradCAM
from tests.helpers import assert_untouched, snapshot
from tests.models import conv_net


class Branchy(nn.Module):
    """A model with an unused branch, two heads and a tuple-returning block."""

    def __init__(self) -> None:
        super().__init__()
        self.body = conv_net(2, classes=4)
        self.unused = nn.Conv2d(2, 2, 1)
        self.pair = Pair()
        self.other_head = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        self.pair(x)
        return {"main": self.body(x), "other": self.other_head(torch.ones(len(x), 3))}


class Pair(nn.Module):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x, x


def _dirty(model: nn.Module) -> nn.Module:
    """Train mode, accumulated .grad on some parameters, one frozen parameter, user hooks."""
    model.train()
    x = torch.randn(4, 2, 8, 8)
    model(x)["main"].sum().backward()
    first = next(model.parameters())
    first.grad = None
    first.requires_grad_(False)
    model.get_submodule("body.2").register_forward_hook(lambda *a: None)
    return model


def _main(out: dict[str, Tensor]) -> Tensor:
    return out["main"][:, 1]


CASES: list[tuple[str, str, Callable[[], Any], Any, type[CamkitError]]] = [
    ("ok-callable", "body.4", lambda: torch.randn(3, 2, 8, 8), _main, type(None)),  # type: ignore[list-item]
    ("class-target-on-dict", "body.4", lambda: torch.randn(3, 2, 8, 8), 1, CamkitTypeError),
    ("float-target", "body.4", lambda: torch.randn(3, 2, 8, 8), 1.5, CamkitTypeError),
    ("bool-target", "body.4", lambda: torch.randn(3, 2, 8, 8), True, CamkitTypeError),
    ("negative-target", "body.4", lambda: torch.randn(3, 2, 8, 8), -1, CamkitValueError),
    ("wrong-count", "body.4", lambda: torch.randn(3, 2, 8, 8), [1, 2], CamkitValueError),
    (
        "bad-callable",
        "body.4",
        lambda: torch.randn(3, 2, 8, 8),
        lambda o: o["main"][:, None],
        CamkitValueError,
    ),
    ("not-reached", "unused", lambda: torch.randn(3, 2, 8, 8), _main, CamkitValueError),
    (
        "not-connected",
        "body.4",
        lambda: torch.randn(3, 2, 8, 8),
        lambda o: o["other"][:, 0],
        CamkitValueError,
    ),
    ("tuple-layer", "pair", lambda: torch.randn(3, 2, 8, 8), _main, CamkitTypeError),
    (
        "int-input",
        "body.4",
        lambda: torch.ones(3, 2, 8, 8, dtype=torch.int64),
        _main,
        CamkitTypeError,
    ),
    ("empty-batch", "body.4", lambda: torch.randn(0, 2, 8, 8), _main, CamkitValueError),
    ("model-error", "body.4", lambda: torch.randn(3, 5, 8, 8), _main, RuntimeError),  # type: ignore[list-item]
]


@pytest.mark.parametrize(
    ("case", "layer", "make_x", "target", "error"), CASES, ids=[c[0] for c in CASES]
)
def test_model_untouched(
    case: str, layer: str, make_x: Callable[[], Tensor], target: Any, error: type[Exception]
) -> None:
    model = _dirty(Branchy())
    probe = torch.randn(2, 2, 8, 8)
    before = snapshot(model.body, probe)
    before_all = snapshot(model)
    cam = GradCAM(model, layer)
    assert_untouched(before_all, snapshot(model))  # construction attaches nothing
    if error is type(None):
        maps = cam(make_x(), target)
        assert maps.shape == (3, 8, 8)
    else:
        with pytest.raises(error):
            cam(make_x(), target)
    assert_untouched(before, snapshot(model.body, probe))
    assert_untouched(before_all, snapshot(model))


def test_hooks_are_really_gone() -> None:
    model = conv_net(2)
    cam = GradCAM(model, "4")
    cam(torch.randn(2, 2, 8, 8), 0)
    with pytest.raises(CamkitValueError):
        cam(torch.randn(2, 2, 8, 8), 99)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(not m._backward_hooks for m in model.modules())


def _maps(model: nn.Module, x: Tensor) -> Tensor:
    return GradCAM(model, "4")(x, [0, 1, 2, 3])


def test_train_mode_frozen_and_no_grad_give_the_eval_map() -> None:
    model = conv_net(2)
    model.insert(3, nn.Dropout(0.5))
    x = torch.randn(4, 2, 10, 10)
    expected = _maps(model, x)

    model.train()
    before = snapshot(model)
    torch.testing.assert_close(_maps(model, x), expected)
    assert_untouched(before, snapshot(model))
    assert model.training
    assert all(m.training for m in model.modules())

    model.eval().requires_grad_(False)
    torch.testing.assert_close(_maps(model, x), expected)
    assert not any(p.requires_grad for p in model.parameters())

    model.requires_grad_(True)
    with torch.no_grad():
        torch.testing.assert_close(_maps(model, x), expected)
        assert not torch.is_grad_enabled()
    assert torch.is_grad_enabled()

    with torch.inference_mode():
        torch.testing.assert_close(_maps(model, x), expected)
        torch.testing.assert_close(_maps(model, x.clone()), expected)  # an inference tensor
        assert torch.is_inference_mode_enabled()


def test_layer_on_an_inference_tensor() -> None:
    model = nn.Sequential(nn.Identity(), conv_net(2))
    x = torch.randn(2, 2, 8, 8)
    expected = GradCAM(model, "0")(x, 1)
    with torch.inference_mode():
        x_inference = x.clone()
    torch.testing.assert_close(GradCAM(model, "0")(x_inference, 1), expected)


def test_input_that_requires_grad_is_left_alone() -> None:
    model = conv_net(2)
    x = torch.randn(2, 2, 8, 8, requires_grad=True)
    GradCAM(model, "4")(x, 1)
    assert x.grad is None


def test_nothing_is_backpropagated_below_the_layer() -> None:
    # Gradients reach only the layer: parameters before it never see a backward pass.
    model = conv_net(2)
    seen: list[str] = []
    for name, p in model.named_parameters():
        p.register_hook(lambda g, name=name: seen.append(name) or g)
    GradCAM(model, "4")(torch.randn(2, 2, 8, 8), 1)
    assert seen == []
    assert all(p.grad is None for p in model.parameters())


class GradModeProbe(nn.Module):
    """Records whether autograd was recording when it ran."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append(torch.is_grad_enabled())
        return x


def test_no_graph_is_recorded_before_the_layer() -> None:
    before, after = GradModeProbe(), GradModeProbe()
    model = nn.Sequential(before, conv_net(2), after)
    GradCAM(model, "1.4")(torch.randn(2, 2, 8, 8), 1)
    assert before.seen
    assert set(before.seen) == {False}  # every pass (one more if the net writes in place)
    assert set(after.seen) == {True}
    assert torch.is_grad_enabled()


class Switchable(nn.Module):
    """conv ("conv") -> ReLU ("act") -> [in-place += 1 when switched on] -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.act = nn.ReLU()
        self.fc = nn.Linear(3 * 6 * 6, 4)
        self.in_place = False
        self.passes = 0

    def forward(self, x: Tensor) -> Tensor:
        self.passes += 1
        h = self.act(self.conv(x))
        if self.in_place:
            h += 1.0
        return self.fc(torch.relu(h).flatten(1))


@pytest.mark.parametrize("layers", [["act"], ["conv", "act"]])
def test_copies_only_where_the_network_writes_in_place(layers: list[str]) -> None:
    # A layer's output is copied only once the network was seen to modify it in place;
    # when an uncopied activation gets overwritten, the call runs again with copies.
    from tests.helpers import finish, reference_gradcam

    model = Switchable().eval()
    x = torch.randn(3, 2, 8, 8)
    cam = GradCAM(model, layers)
    for in_place, passes in ((False, 1), (False, 1), (True, 2), (True, 1), (False, 1), (True, 2)):
        model.in_place = in_place
        expected = finish(reference_gradcam(model, model.act, x, torch.tensor([0, 1, 2])), (8, 8))
        model.passes = 0
        result = cam.explain(x, [0, 1, 2])
        assert model.passes == passes
        torch.testing.assert_close(
            result.layer_maps["act"].double(), expected, rtol=1e-4, atol=1e-5
        )
