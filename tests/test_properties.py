"""Properties of Grad-CAM maps over shapes, batch sizes, dimensions and targets."""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

from camkit import GradCAM
from camkit._engine.map_ops import ROUNDING_ULPS
from tests.models import conv_net

CLASSES = 5


@st.composite
def problems(draw: st.DrawFn) -> tuple[torch.nn.Module, str, torch.Tensor, Any]:
    """A random 1-D, 2-D or 3-D conv net (float32 or 64), odd input sizes, a layer, a target."""
    dims = draw(st.sampled_from([1, 2, 3]))
    batch = draw(st.integers(1, 4))
    channels = draw(st.integers(1, 3))
    top = {1: 24, 2: 14, 3: 8}[dims]
    spatial = draw(st.lists(st.integers(6, top), min_size=dims, max_size=dims))
    torch.manual_seed(draw(st.integers(0, 2**16)))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    model = conv_net(dims, in_channels=channels, classes=CLASSES).to(dtype)
    x = torch.randn(batch, channels, *spatial, dtype=dtype) * draw(st.sampled_from([0.1, 1, 10]))
    layer = draw(st.sampled_from(["0", "2", "3", "4", "5", "6"]))
    kind = draw(st.sampled_from(["none", "int", "list", "tensor", "callable"]))
    target: Any = {
        "none": None,
        "int": draw(st.integers(0, CLASSES - 1)),
        "list": draw(st.lists(st.integers(0, CLASSES - 1), min_size=batch, max_size=batch)),
        "tensor": torch.randint(0, CLASSES, (batch,)),
        "callable": lambda out: out.log_softmax(1)[:, 0],
    }[kind]
    return model, layer, x, target


@given(problems())
def test_maps_are_well_formed(problem: tuple[torch.nn.Module, str, torch.Tensor, Any]) -> None:
    model, layer, x, target = problem
    maps = GradCAM(model, layer)(x, target)
    assert maps.shape == (x.shape[0], *x.shape[2:])
    assert maps.dtype == torch.float32
    assert maps.device == x.device
    assert torch.isfinite(maps).all()
    flat = maps.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    assert (lo == 0).all()
    # every map is either constant (all zeros) or spans [0, 1] exactly
    assert ((hi == 1) | (hi == 0)).all()
    raw = GradCAM(model, layer)(x, target, normalize=False).flatten(1)
    top, bottom = raw.max(1).values, raw.min(1).values
    # constant up to rounding: the range within ROUNDING_ULPS units of the magnitude
    rounding = ROUNDING_ULPS * torch.finfo(raw.dtype).eps * torch.maximum(top.abs(), bottom.abs())
    assert ((hi == 0) == (top - bottom <= rounding)).all()


@given(problems(), st.floats(0.01, 100.0))
def test_positive_score_scaling_leaves_maps_unchanged(
    problem: tuple[torch.nn.Module, str, torch.Tensor, Any], factor: float
) -> None:
    model, layer, x, _ = problem
    cam = GradCAM(model, layer)
    raw = cam(x, lambda out: out[:, 2], normalize=False)
    raw_scaled = cam(x, lambda out: factor * out[:, 2], normalize=False)
    # float32 rounding of the weighted channel sum, cancellation between channels included
    error = 1e-4 * raw.flatten(1).abs().amax(1) + 1e-12
    assert ((raw_scaled - factor * raw).flatten(1).abs().amax(1) <= factor * error).all()
    plain = cam(x, lambda out: out[:, 2])
    scaled = cam(x, lambda out: factor * out[:, 2])
    # Scaling divides by the map's range, and so does the rounding error: a nearly flat
    # map (a flat one is all zeros either way) is compared more loosely.
    span = raw.flatten(1).amax(1) - raw.flatten(1).amin(1)
    tolerance = 2e-4 + 4 * error / span.where(span > 0, 1.0)
    assert ((scaled - plain).flatten(1).abs().amax(1) <= tolerance).all()


@given(problems(), st.data())
def test_sample_map_does_not_depend_on_the_batch(
    problem: tuple[torch.nn.Module, str, torch.Tensor, Any], data: st.DataObject
) -> None:
    model, layer, x, _ = problem
    cam = GradCAM(model, layer)
    classes = torch.randint(0, CLASSES, (len(x),))
    together = cam(x, classes, normalize=False)
    i = data.draw(st.integers(0, len(x) - 1))
    alone = cam(x[i : i + 1], classes[i : i + 1], normalize=False)
    scale = together[i].abs().max().clamp(min=1e-6)
    torch.testing.assert_close(alone[0] / scale, together[i] / scale, atol=2e-4, rtol=1e-3)


@given(problems())
def test_predicted_class_equals_explicit_argmax(
    problem: tuple[torch.nn.Module, str, torch.Tensor, Any],
) -> None:
    model, layer, x, _ = problem
    result = GradCAM(model, layer).explain(x)
    assert result.classes is not None
    assert torch.equal(result.classes, result.output.argmax(1))
    torch.testing.assert_close(result.maps, GradCAM(model, layer)(x, result.classes))


def test_interpolation_matrices_kept_between_calls_stay_within_their_bound() -> None:
    from camkit._engine import map_ops, state

    cache = state.MatrixCache(max_bytes=64 * 1024)

    def get(size_in: int, size_out: int, dtype: torch.dtype = torch.float32) -> Tensor:
        key = (size_in, size_out, dtype, "cpu")
        return cache.get(key, lambda: map_ops._linear_weights(size_in, size_out).to(dtype))

    first = get(7, 224)
    assert get(7, 224) is first  # kept
    for size_out in range(100, 400, 10):  # 30 matrices of 7 x ~1 KiB ... 11 KiB each
        matrix = get(7, size_out)
        assert matrix.shape == (size_out, 7)
        assert cache.bytes <= cache.max_bytes
    assert get(7, 224) is not first  # the oldest went first
    assert get(3, 10**5, torch.float64).shape == (10**5, 3)  # too big to keep
    assert cache.bytes <= cache.max_bytes
    cache.clear()
    assert cache.bytes == 0
    assert state.MATRICES.max_bytes == 16 * 2**20  # the bound the docs state


def test_clear_caches_forgets_what_calls_keep_and_the_maps_stay_the_same() -> None:
    import camkit
    from camkit._engine import state

    model = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(108, 2)
    ).eval()
    cam = GradCAM(model, "0")  # its output is overwritten in place by the ReLU
    x = torch.randn(2, 1, 8, 8)
    before = cam(x, target=1)
    assert state.MATRICES.bytes > 0 and model[0] in state.WRITES_IN_PLACE
    camkit.clear_caches()
    assert state.MATRICES.bytes == 0 and model[0] not in state.WRITES_IN_PLACE
    assert torch.equal(cam(x, target=1), before)


def test_eigh_in_chunks_equals_one_batched_call() -> None:
    from camkit._engine import map_ops

    a = torch.randn(7, 5, 5, dtype=torch.float64)
    gram = a @ a.mT
    values, vectors = map_ops.eigh_in_chunks(gram, 3)  # chunks of 3, 3 and 1
    expected = torch.linalg.eigh(gram)
    torch.testing.assert_close(values, expected.eigenvalues)
    # eigenvectors are defined up to sign: compare the projections they make
    torch.testing.assert_close(vectors.abs(), expected.eigenvectors.abs())
    torch.testing.assert_close(vectors @ torch.diag_embed(values) @ vectors.mT, gram)
