"""Reliability: threads, long runs, hostile input, precisions, odd models, safe loading."""

from __future__ import annotations

import copy
import gc
import re
import threading
import weakref
from collections.abc import Callable, Iterator
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
    CamkitTypeError,
    CamkitValueError,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    GuidedBackprop,
    GuidedGradCAM,
    LayerCAM,
    ScoreCAM,
)
from camkit._engine import map_ops
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


def test_two_models_sharing_a_backbone_keep_it_in_eval_mode_across_threads() -> None:
    """Thread 1's call on model A ends while thread 2's call on model B (same backbone) runs."""
    backbone = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    a = nn.Sequential(backbone, nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).train()
    b = nn.Sequential(backbone, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).train()
    x = torch.randn(2, 2, 10, 10)
    a_done, b_inside = threading.Event(), threading.Event()
    seen_in_b: list[bool] = []

    def score_a(output: Tensor) -> Tensor:
        b_inside.wait(timeout=10)  # A's call ends only once B's call is under way
        return output[:, 0]

    def score_b(output: Tensor) -> Tensor:
        b_inside.set()
        a_done.wait(timeout=10)
        seen_in_b.append(backbone[1].training)  # A has restored its flags by now
        return output[:, 1]

    def run_a() -> Tensor:
        try:
            return GradCAM(a, "0.2")(x, score_a)
        finally:
            a_done.set()

    with ThreadPoolExecutor(2) as pool:
        first, second = pool.submit(run_a), pool.submit(lambda: GradCAM(b, "0.2")(x, score_b))
        first.result(timeout=30), second.result(timeout=30)
    assert seen_in_b and not any(seen_in_b), seen_in_b  # BatchNorm stayed in eval mode
    assert all(m.training for m in (*a.modules(), *b.modules()))


def test_nested_eval_mode_on_models_sharing_modules_restores_at_the_last_exit() -> None:
    from camkit._engine.model import eval_mode

    shared = nn.BatchNorm1d(3)
    a, b = nn.Sequential(shared, nn.ReLU()).train(), nn.Sequential(nn.Tanh(), shared).train()
    b[0].eval()  # a flag that differs from the rest comes back as it was
    outer = eval_mode(a)
    outer.__enter__()
    with eval_mode(b):
        assert not shared.training and not b.training
        outer.__exit__(None, None, None)
        assert not shared.training  # still held by b's call
        assert a.training and not a[0].training
    assert shared.training and b.training and not b[0].training


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


class _FailsAfterTheLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.calls = nn.Conv2d(2, 3, 3), 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        self.conv(x)
        raise KeyError("a genuine bug in the user's model")


def test_a_failing_model_runs_once_and_reports_one_error() -> None:
    model = _FailsAfterTheLayer().eval()
    with pytest.raises(CamkitModelError, match="genuine bug") as info:
        GradCAM(model, "conv")(torch.randn(2, 2, 8, 8), 1)
    assert model.calls == 1
    assert isinstance(info.value.__cause__, KeyError)
    assert info.value.__context__ is info.value.__cause__  # not a second try's chain


def test_an_in_place_write_to_the_first_layer_is_rerun_with_a_copy() -> None:
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(3 * 6 * 6, 4)
    ).eval()
    x = torch.randn(2, 2, 8, 8)
    fresh = copy.deepcopy(model)  # a module camkit has not seen yet
    maps = GradCAM(fresh, "0")(x, 1, relu=False, upsample=False, normalize=False)
    reference = nn.Sequential(model[0], nn.ReLU(), *model[2:]).eval()
    expected = GradCAM(reference, "0")(x, 1, relu=False, upsample=False, normalize=False)
    torch.testing.assert_close(maps, expected)


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
    # float64: a batch of 3 and a batch of 1 run other kernels, whose float64 rounding stays
    # far below the float32 maps' (so the tolerance holds on any CPU)
    model = TwoInputs().double().eval()
    x, extra = torch.randn(3, 2, 9, 9).double(), torch.randn(3, 3).double()
    for method in (GradCAM, ScoreCAM, AblationCAM):
        cam = method(model, "conv")
        maps = cam(x, [0, 1, 2], forward_args=(extra,), forward_kwargs={"scale": 2.0})
        assert maps.shape == (3, 9, 9)
        # each sample alone, with its own extra input, gives its own map
        single = cam(x[1:2], [1], forward_args=(extra[1:2],), forward_kwargs={"scale": 2.0})
        torch.testing.assert_close(single[0], maps[1], atol=1e-5, rtol=1e-4)
    with pytest.raises(CamkitModelError, match="missing"):
        GradCAM(model, "conv")(x, 0)


class TwoInputsWithReLU(TwoInputs):
    def __init__(self) -> None:
        super().__init__()
        self.relu = nn.ReLU()

    def forward(self, image: Tensor, extra: Tensor, *, scale: float = 1.0) -> Tensor:
        pooled = self.relu(self.conv(image)).mean(dim=(2, 3))
        return self.fc(torch.cat([pooled * scale, extra], dim=1))


@pytest.mark.parametrize("method", [GuidedBackprop, GuidedGradCAM])
def test_guided_methods_take_the_models_further_inputs(method: Any) -> None:
    model = TwoInputsWithReLU().double().eval()  # float64: as above
    x, extra = torch.randn(3, 2, 9, 9).double(), torch.randn(3, 3).double()
    cam = method(model) if method is GuidedBackprop else method(model, "relu")
    maps = cam(x, [0, 1, 2], forward_args=(extra,), forward_kwargs={"scale": 2.0})
    assert maps.shape == (3, 2, 9, 9) and maps.abs().sum() > 0
    single = cam(x[1:2], [1], forward_args=(extra[1:2],), forward_kwargs={"scale": 2.0})
    torch.testing.assert_close(single[0], maps[1], atol=1e-6, rtol=1e-4)
    with pytest.raises(CamkitModelError, match="missing"):
        cam(x, 0)


@pytest.mark.parametrize("method", [GuidedBackprop, GuidedGradCAM])
def test_guided_methods_refuse_a_score_that_does_not_depend_on_the_input(method: Any) -> None:
    model = conv_net(2)
    before = snapshot(model)
    cam = method(model) if method is GuidedBackprop else method(model, "2")
    with pytest.raises(CamkitValueError, match="does not depend on the input"):
        cam(torch.randn(2, 2, 8, 8), lambda out: torch.ones(len(out)))
    assert_untouched(before, snapshot(model))


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


class _ModelOutput(dict):  # type: ignore[type-arg]
    """Like Hugging Face's ModelOutput: a dict whose entries are attributes too."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as error:
            raise AttributeError(name) from error


class ContainerOut(nn.Module):
    """The classifier's logits inside a container: a ModelOutput, or a dict by key."""

    def __init__(self, wrap: Callable[[Tensor], Any]) -> None:
        super().__init__()
        self.body, self.wrap = conv_net(2), wrap

    def forward(self, x: Tensor) -> Any:
        return self.wrap(self.body(x))


CONTAINERS: dict[str, Callable[[Tensor], Any]] = {
    "ModelOutput": lambda t: _ModelOutput(loss=None, logits=t),
    "dict logits": lambda t: {"hidden": t.detach() * 0, "logits": t},
    "dict out": lambda t: {"out": t, "aux": t.detach()},  # torchvision's key
}


@pytest.mark.parametrize("container", list(CONTAINERS))
@pytest.mark.parametrize("target", [None, 3, [0, 4], [[1, 2], [3, 4]]])
def test_class_targets_read_the_logits_in_output_containers(container: str, target: Any) -> None:
    model = ContainerOut(CONTAINERS[container]).eval()
    x = torch.randn(2, 2, 8, 8)
    for method in (GradCAM, ScoreCAM, AblationCAM):
        result = method(model, "body.4").explain(x, target)
        plain = method(model.body, "4").explain(x, target)  # the same net, a plain output
        torch.testing.assert_close(result.maps, plain.maps)
        torch.testing.assert_close(result.scores, plain.scores)
        assert type(result.output) is type(CONTAINERS[container](torch.zeros(1)))


@pytest.mark.parametrize("container", list(CONTAINERS))
def test_guided_grad_cam_reads_the_logits_in_output_containers(container: str) -> None:
    model = ContainerOut(CONTAINERS[container]).eval()
    x = torch.randn(2, 2, 8, 8)
    torch.testing.assert_close(GuidedGradCAM(model, "body.4")(x), GuidedGradCAM(model.body, "4")(x))


def test_a_container_without_logits_names_what_a_class_target_reads() -> None:
    model = ContainerOut(lambda t: {"scores": t}).eval()
    with pytest.raises(CamkitTypeError, match=r"\.logits, or its 'logits' or 'out' entry"):
        GradCAM(model, "body.4")(torch.randn(2, 2, 8, 8), 1)


def test_every_checkpoint_load_is_weights_only() -> None:
    # the project's own code only: a virtual environment inside the checkout is not ours
    folders = ("camkit", "examples", "benchmarks", "tests", "docs")
    sources = [p for folder in folders for p in (ROOT / folder).rglob("*.py")]
    calls = 0
    for path in sources:
        text = path.read_text()
        for match in re.finditer(r"torch\.load\(([^)]*)\)", text):
            calls += 1
            assert "weights_only=True" in match.group(1), f"{path}: {match.group(0)}"
    assert calls >= 1


class _BackwardCalls(torch.autograd.Function):
    """Identity whose backward may fail once, or read a number (which vmap cannot batch)."""

    fail_first = False
    read_a_number = False
    calls = 0

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        _BackwardCalls.calls += 1
        if _BackwardCalls.fail_first and _BackwardCalls.calls == 1:
            raise RuntimeError("boom: a genuine failure in the model's backward")
        if _BackwardCalls.read_a_number:
            grad = grad * (1.0 + 0.0 * float(grad.sum()))
        return grad


class _WithBackward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(2, 3, 3), nn.Linear(3 * 6 * 6, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(_BackwardCalls.apply(self.conv(x)).flatten(1))


@pytest.fixture
def backward_calls() -> Iterator[type[_BackwardCalls]]:
    _BackwardCalls.fail_first = _BackwardCalls.read_a_number = False
    _BackwardCalls.calls = 0
    yield _BackwardCalls
    _BackwardCalls.fail_first = _BackwardCalls.read_a_number = False


def test_k_targets_fall_back_to_one_backward_per_target_only_where_vmap_cannot(
    backward_calls: type[_BackwardCalls],
) -> None:
    model, x = _WithBackward().eval(), torch.randn(3, 2, 8, 8)
    backward_calls.read_a_number = True
    targets = [[0, 2], [1, 3], [3, 0]]
    maps = GradCAM(model, "conv")(x, targets)
    assert backward_calls.calls > 2  # the batched pass failed and each target got its own
    for j in range(2):
        torch.testing.assert_close(maps[:, j], GradCAM(model, "conv")(x, [t[j] for t in targets]))


def test_a_genuine_error_in_a_batched_backward_is_not_swallowed(
    backward_calls: type[_BackwardCalls],
) -> None:
    model, x = _WithBackward().eval(), torch.randn(3, 2, 8, 8)
    backward_calls.fail_first = True
    with pytest.raises(RuntimeError, match="boom"):
        GradCAM(model, "conv")(x, torch.tensor([[0, 1]] * 3))
    assert backward_calls.calls == 1  # no silent second try


@pytest.mark.parametrize("container", list(CONTAINERS))
def test_metrics_read_the_logits_in_output_containers(container: str) -> None:
    from camkit import metrics

    model = ContainerOut(CONTAINERS[container]).eval()
    x = torch.rand(3, 2, 8, 8)
    maps = GradCAM(model.body, "4")(x, 2)
    for metric in (metrics.average_drop, metrics.increase_in_confidence):
        torch.testing.assert_close(
            metric(model, x, maps, 2).values, metric(model.body, x, maps, 2).values
        )
    with pytest.raises(CamkitTypeError, match="metrics need"):
        metrics.average_drop(ContainerOut(lambda t: {"scores": t}), x, maps, 2)


def test_a_map_constant_up_to_rounding_scales_to_zeros_not_to_noise() -> None:
    c = torch.tensor(0.0257, dtype=torch.float32)
    ulp = torch.nextafter(c, torch.tensor(1.0)) - c
    flat = torch.full((2, 1, 6), float(c))
    flat[0, 0, 2] += ulp  # one unit of rounding: constant up to rounding
    flat[1, 0, 2] += 1000 * ulp  # a real, if small, variation
    for scaled in (map_ops.scale_maps_(flat.clone()), map_ops.scaled_maps(flat)):
        assert scaled[0].eq(0).all()
        assert scaled[1].amax() == 1 and scaled[1].amin() == 0
    # The case the property test found: a 1-D net whose layer "6" holds the same bias
    # term at every position of sample 2, so its map differs only in the last bits.
    torch.manual_seed(289)
    model = conv_net(1, in_channels=1, classes=5).double()
    x = torch.randn(3, 1, 15, dtype=torch.float64) * 0.1
    cam = GradCAM(model, "6")
    raw = cam(x, lambda out: 3 * out[:, 2], normalize=False)
    top, bottom = raw.amax(1), raw.amin(1)
    assert (top > bottom).any()  # rounding makes one map non-constant
    flat_up_to_rounding = top - bottom <= 16 * torch.finfo(torch.float32).eps * top
    assert flat_up_to_rounding.any()
    maps = cam(x, lambda out: 3 * out[:, 2])
    assert maps[flat_up_to_rounding].eq(0).all()
    torch.testing.assert_close(maps, cam(x, lambda out: out[:, 2]))
