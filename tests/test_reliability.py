"""Reliability: threads, long runs, hostile input, precisions, odd models, safe loading."""

from __future__ import annotations

import gc
import re
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

from camkit import (
    AblationCAM,
    CamkitError,
    CamkitModelError,
    CamkitValueError,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    LayerCAM,
    ScoreCAM,
)
from tests.helpers import assert_untouched, snapshot
from tests.models import conv_net

ROOT = Path(__file__).parents[1]


def _train_mode_net() -> nn.Sequential:
    """BatchNorm and Dropout in train mode: any eval-mode race changes the maps."""
    model = conv_net(2)
    model.insert(3, nn.Dropout(0.5))
    return model.train()


def test_threads_on_one_model_equal_serial_results() -> None:
    model = _train_mode_net()
    x = torch.randn(4, 2, 10, 10)
    jobs = [
        (GradCAM, "1", [0, 1, 2, 3]),
        (GradCAMPlusPlus, "5", [4, 3, 2, 1]),
        (LayerCAM, "6", None),
        (EigenCAM, "2", 2),
        (ScoreCAM, "5", [1, 1, 1, 1]),
        (AblationCAM, "7", [0, 2, 4, 1]),
    ]
    serial = [method(model, layer)(x, target) for method, layer, target in jobs]
    before = snapshot(model)
    start = threading.Barrier(len(jobs))

    def run(i: int) -> list[Tensor]:
        method, layer, target = jobs[i]
        cam = method(model, layer)
        start.wait()
        return [cam(x, target) for _ in range(15)]

    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(run, range(len(jobs))))
    for expected, runs in zip(serial, results, strict=True):
        for maps in runs:
            torch.testing.assert_close(maps, expected)
    assert_untouched(before, snapshot(model))
    assert model.training


def _rss_kib() -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", text).group(1))  # type: ignore[union-attr]


def test_ten_thousand_calls_keep_memory_flat_and_leave_no_hooks() -> None:
    model = conv_net(2, in_channels=1)
    cam = GradCAM(model, "4")
    x = torch.randn(1, 1, 8, 8)
    for _ in range(1000):
        cam(x, 1)
    gc.collect()
    warm = _rss_kib()
    for i in range(10_000):
        cam(x, i % 5)
    gc.collect()
    assert _rss_kib() < 1.05 * warm
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


class Recording(nn.Module):
    """A layer that remembers weak references to the tensors it produced."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.produced: list[weakref.ref[Tensor]] = []

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.conv(x))
        self.produced.append(weakref.ref(out))
        return out


def test_no_activation_or_gradient_outlives_the_call() -> None:
    layer = Recording()
    model = nn.Sequential(layer, nn.Flatten(), nn.Linear(3 * 6 * 6, 4)).eval()
    cam = GradCAM(model, "0")
    result = cam.explain(torch.randn(2, 2, 8, 8), 1)
    gc.collect()
    assert layer.produced
    assert all(ref() is None for ref in layer.produced)
    assert not any(isinstance(v, Tensor) for v in vars(cam).values())
    assert set(vars(result)) == {"maps", "output", "scores", "classes", "layer_maps"}


# --- hostile input, generated ---

BAD_INPUTS = st.one_of(
    st.just(torch.randn(3)),
    st.just(torch.randn(3, 2)),
    st.just(torch.randn(0, 2, 8, 8)),
    st.just(torch.randn(2, 5, 8, 8)),  # wrong channel count
    st.just(torch.randn(2, 2, 8, 8, 8, 8)),
    st.just(torch.ones(2, 2, 8, 8, dtype=torch.int32)),
    st.just(torch.ones(2, 2, 8, 8, dtype=torch.bool)),
    st.sampled_from([None, "image", 3.0, [[1.0]]]),
    st.just(np.zeros((2, 2, 8, 8), dtype=np.float32)),
    st.builds(
        lambda v, i: torch.randn(2, 2, 8, 8).index_put_((torch.tensor([i % 2]),), torch.tensor(v)),
        st.sampled_from([float("nan"), float("inf"), -float("inf")]),
        st.integers(0, 1),
    ),
)
BAD_TARGETS = st.one_of(
    st.integers(-10, -1),
    st.integers(5, 10**6),
    st.floats(allow_nan=True),
    st.lists(st.integers(0, 4), min_size=3, max_size=5),
    st.lists(st.integers(0, 4), min_size=0, max_size=1),
    st.just(torch.tensor([0.5, 1.5])),
    st.just(torch.tensor([[[0, 1]]])),
    st.just(torch.zeros(2, dtype=torch.long, device="meta")),
    st.sampled_from(["1", b"1", {1: 2}, True, object()]),
    st.just(lambda out: out),
    st.just(lambda out: out[:, 0].long()),
    st.just(lambda out: out[:, 0] * float("nan")),
)
BAD_LAYERS = st.sampled_from(["", "nope", "4.weight", "pair", "unused", "head", "body.99"])


class Hostile(nn.Module):
    """A body, an unused module, a tuple-returning block, and a head the score can avoid."""

    def __init__(self) -> None:
        super().__init__()
        self.body = conv_net(2)
        self.pair = Pair()
        self.unused = nn.ReLU()
        self.head = nn.Linear(5, 5)

    def forward(self, x: Tensor) -> Tensor:
        self.pair(x)
        return self.body(x)


class Pair(nn.Module):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x, x


def _call_and_check(model: nn.Module, layer: str, x: Any, target: Any) -> None:
    before = snapshot(model)
    try:
        maps = GradCAM(model, layer)(x, target)
    except CamkitError:
        pass
    else:
        assert torch.isfinite(maps).all()
        assert maps.dtype == torch.float32
    assert_untouched(before, snapshot(model))


@given(BAD_INPUTS)
def test_hostile_inputs(x: Any) -> None:
    _call_and_check(Hostile().eval(), "body.4", x, 1)


@given(BAD_TARGETS)
def test_hostile_targets(target: Any) -> None:
    _call_and_check(Hostile().eval(), "body.4", torch.randn(2, 2, 8, 8), target)


@given(BAD_LAYERS, st.sampled_from([None, 1, lambda out: out[:, 0]]))
def test_hostile_layers(layer: str, target: Any) -> None:
    _call_and_check(Hostile().eval(), layer, torch.randn(2, 2, 8, 8), target)


def test_model_errors_are_reported_with_the_input() -> None:
    with pytest.raises(CamkitModelError, match=r"x of shape \(2, 5, 8, 8\).*RuntimeError") as info:
        GradCAM(conv_net(2), "4")(torch.randn(2, 5, 8, 8), 1)
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(CamkitValueError, match="x: contains 1 NaN"):
        GradCAM(conv_net(2), "4")(
            torch.randn(2, 2, 8, 8).index_put_(
                (torch.tensor([0]), torch.tensor([0]), torch.tensor([0]), torch.tensor([0])),
                torch.tensor(float("nan")),
            ),
            1,
        )


def test_finite_check_tells_overflowing_sums_from_nan_scores() -> None:
    x = torch.randn(3, 2, 8, 8)
    huge = GradCAM(conv_net(2), "4")(x, lambda out: out[:, 0] + 3e38)  # finite; the sum is inf
    assert huge.shape == (3, 8, 8) and torch.isfinite(huge).all()

    def nan_for_sample_1(out: Tensor) -> Tensor:
        return torch.where(torch.arange(len(out)) == 1, float("nan"), out[:, 0])

    with pytest.raises(CamkitValueError, match=r"target: the score .* sample\(s\) \[1\]"):
        GradCAM(conv_net(2), "4")(x, nan_for_sample_1)


# --- precisions ---


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_give_float32_maps_close_to_float32(dtype: torch.dtype) -> None:
    model = conv_net(2)
    x = torch.randn(3, 2, 12, 12)
    expected = GradCAM(model, "4")(x, [0, 1, 2])
    low = GradCAM(model.to(dtype), "4")(x.to(dtype), [0, 1, 2])
    assert low.dtype == torch.float32
    assert torch.isfinite(low).all()
    torch.testing.assert_close(low, expected, atol=0.06, rtol=0)


# --- odd models ---


def test_data_parallel_wrapped_model() -> None:
    model = conv_net(2)
    x = torch.randn(2, 2, 8, 8)
    wrapped = nn.DataParallel(model)
    torch.testing.assert_close(GradCAM(wrapped, "module.4")(x, 1), GradCAM(model, "4")(x, 1))


def test_compiled_model(recwarn: pytest.WarningsRecorder) -> None:
    model = conv_net(2)
    x = torch.randn(2, 2, 8, 8)
    compiled = torch.compile(model, backend="eager")
    maps = GradCAM(compiled, "_orig_mod.4")(x, 1)
    # camkit's hooks run eagerly; Dynamo does not try (and warn about failing) to trace them
    assert not [w for w in recwarn if "_dynamo" in w.filename], [str(w.message) for w in recwarn]
    torch.testing.assert_close(maps, GradCAM(model, "4")(x, 1))
    assert all(not m._forward_hooks for m in model.modules())


class TwoInputs(nn.Module):
    """forward(image, extra, *, scale): the extra per-sample input joins after the conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.fc = nn.Linear(4 + 3, 5)

    def forward(self, image: Tensor, extra: Tensor, *, scale: float = 1.0) -> Tensor:
        pooled = torch.relu(self.conv(image)).mean(dim=(2, 3))
        return self.fc(torch.cat([pooled * scale, extra], dim=1))


def test_models_with_several_inputs_and_keywords() -> None:
    model = TwoInputs().eval()
    x, extra = torch.randn(3, 2, 9, 9), torch.randn(3, 3)
    for method in (GradCAM, ScoreCAM, AblationCAM):
        cam = method(model, "conv")
        maps = cam(x, [0, 1, 2], forward_args=(extra,), forward_kwargs={"scale": 2.0})
        assert maps.shape == (3, 9, 9)
        # each sample alone, with its own extra input, gives its own map
        single = cam(x[1:2], [1], forward_args=(extra[1:2],), forward_kwargs={"scale": 2.0})
        torch.testing.assert_close(single[0], maps[1], atol=1e-5, rtol=1e-4)
    with pytest.raises(CamkitModelError, match="missing"):
        GradCAM(model, "conv")(x, 0)


class TupleOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = conv_net(2)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.body(x)
        return logits, logits.softmax(1)


def test_tuple_outputs_through_a_callable_target() -> None:
    model = TupleOut().eval()
    x = torch.randn(2, 2, 8, 8)
    result = GradCAM(model, "body.4").explain(x, lambda out: out[0][:, 3])
    assert isinstance(result.output, tuple)
    torch.testing.assert_close(result.maps, GradCAM(model.body, "4")(x, 3))


def test_every_checkpoint_load_is_weights_only() -> None:
    sources = [p for p in ROOT.rglob("*.py") if ".git" not in p.parts and "build" not in p.parts]
    calls = 0
    for path in sources:
        text = path.read_text()
        for match in re.finditer(r"torch\.load\(([^)]*)\)", text):
            calls += 1
            assert "weights_only=True" in match.group(1), f"{path}: {match.group(0)}"
    assert calls >= 1
