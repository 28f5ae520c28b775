"""Region perturbation, Selectivity, IROF and Infidelity: hand-derived values on a linear
model, and Quantus 0.6's curves on the MNIST net."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from torch import nn

import camkit
from camkit.errors import CamkitValueError
from camkit.metrics import infidelity, irof, region_perturbation, selectivity
from camkit.metrics.patches import patch_grid
from examples.mnist.data import load_split
from examples.mnist.train import load
from tests.helpers import assert_untouched, snapshot


@pytest.mark.parametrize(("spatial", "size"), [((28, 28), 8), ((6, 7), 4), ((5,), 2),
                                                ((4, 3, 5), 2), ((8, 8), 8)])  # fmt: skip
def test_the_grid_is_quantus_padding(spatial: tuple[int, ...], size: int) -> None:
    # independently: pad an index array by half the shortfall (floor before), cut blocks
    index = np.arange(int(np.prod(spatial))).reshape(spatial)
    pads = []
    for side in spatial:
        shortfall = (size - side % size) % size
        pads.append((shortfall // 2, shortfall - shortfall // 2))
    padded = np.pad(index, pads, constant_values=-1)
    expected = np.empty(index.size, dtype=np.int64)
    blocks = [range(0, s, size) for s in padded.shape]
    for label, corner in enumerate(np.stack(np.meshgrid(*blocks, indexing="ij"), -1)
                                   .reshape(-1, len(spatial))):  # fmt: skip
        block = padded[tuple(slice(c, c + size) for c in corner)]
        expected[block[block >= 0]] = label
    assert patch_grid(spatial, size).tolist() == expected.tolist()


def _linear(positive: bool = False) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).eval()
    if positive:
        with torch.no_grad():
            model[1].weight.uniform_(0, 1)
    return model


def test_region_perturbation_and_selectivity_by_hand() -> None:
    model = _linear()
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    maps = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(2))
    w = model[1].weight.detach()[0].double().view(4, 4)
    state = snapshot(model)
    got = region_perturbation(model, x, maps, 0, patch_size=2, baseline=0.0, softmax=False)
    sel = selectivity(model, x, maps, 0, patch_size=2, baseline=0.0, softmax=False)
    assert_untouched(state, snapshot(model))
    for i in range(3):
        # the four 2x2 patches, ordered by their map mass, each drops its w . x
        quarters = [(slice(r, r + 2), slice(c, c + 2)) for r in (0, 2) for c in (0, 2)]
        masses = [float(maps[i][q].sum()) for q in quarters]
        effects = [float((w[q] * x[i, 0][q].double()).sum()) for q in quarters]
        ranked = sorted(range(4), key=lambda k: -masses[k])
        drops = np.cumsum([effects[k] for k in ranked])
        np.testing.assert_allclose(got.curves[i].numpy(), drops, rtol=1e-6, atol=1e-6)
        assert got.values[i].item() == pytest.approx(drops.sum() / 5, rel=1e-6, abs=1e-6)
        y = float(model(x[i : i + 1])[0, 0].detach())
        scores = np.concatenate([[y], y - drops])
        np.testing.assert_allclose(sel.curves[i].numpy(), scores[1:], rtol=1e-6, atol=1e-6)
        area = np.sum((scores[1:] + scores[:-1]) / 2) / 4
        assert sel.values[i].item() == pytest.approx(area, rel=1e-6, abs=1e-6)
    lerf = region_perturbation(model, x, maps, 0, patch_size=2, order_by="lerf", regions=2)
    assert lerf.curves.shape == (3, 2)
    shuffled = region_perturbation(model, x, maps, 0, patch_size=2, order_by="random")
    assert torch.equal(
        shuffled.curves,
        region_perturbation(model, x, maps, 0, patch_size=2, order_by="random").curves,
    )


def test_irof_by_hand() -> None:
    model = _linear()
    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(3)) + 1
    maps = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(4))
    segments = torch.tensor([[0, 0, 1, 1], [0, 2, 2, 1], [3, 2, 2, 1], [3, 3, 3, 1]])
    segments = torch.stack([segments, (segments + 1) % 4])
    w = model[1].weight.detach()[0].double().view(4, 4)
    b = model[1].bias.detach()[0].double()
    got = irof(model, x, maps, 0, segments=segments, softmax=False)
    quantus_area = irof(model, x, maps, 0, segments=segments, softmax=False, auc="quantus")
    for i in range(2):
        mean = x[i].double().mean()
        means = [float(maps[i][segments[i] == s].mean()) for s in range(4)]
        current = x[i, 0].double().clone()
        y = float((w * current).sum() + b)
        relative = []
        for s in sorted(range(4), key=lambda k: -means[k]):
            current[segments[i] == s] = mean
            relative.append(float((w * current).sum() + b) / y)
        np.testing.assert_allclose(got.curves[i].numpy(), relative, rtol=1e-6, atol=1e-6)
        curve = np.array([1.0, *relative])
        area = 1 - np.sum((curve[1:] + curve[:-1]) / 2) / 4
        assert got.values[i].item() == pytest.approx(area, rel=1e-6, abs=1e-6)
        quantus = 4 - np.sum((curve[2:] + curve[1:-1]) / 2)
        assert quantus_area.values[i].item() == pytest.approx(quantus, rel=1e-6, abs=1e-6)


def test_infidelity_of_the_exact_map_of_a_linear_model_is_zero() -> None:
    model = _linear(positive=True)
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    w = model[1].weight.detach()[0].view(1, 4, 4).expand(3, 4, 4)
    # removing a set S to the baseline lowers the logit by sum_S w_i (x_i - b): the map w
    # predicts every drop; float32 logits round by ~eps |terms|
    exact = infidelity(model, x, w, 0, patch_sizes=(1, 2, 3))
    assert exact.values.abs().max() < 1e-10
    # half the map predicts half of every drop: the loss is the mean of (drop / 2)^2
    half = infidelity(model, x, w / 2, 0, patch_sizes=(2,)).values
    black = x.flatten(1).amin(1)
    for i in range(3):
        effect = (w[i].double() * (x[i, 0].double() - black[i])).view(2, 2, 2, 2)
        drops = effect.permute(0, 2, 1, 3).reshape(4, 4).sum(1).cumsum(0)
        assert half[i].item() == pytest.approx(float(((drops / 2) ** 2).mean()), rel=1e-5)


def test_clear_errors() -> None:
    model = _linear()
    x, maps = torch.rand(2, 1, 4, 4), torch.rand(2, 4, 4)
    with pytest.raises(CamkitValueError, match="order_by: got 'up'"):
        region_perturbation(model, x, maps, 0, order_by="up")
    with pytest.raises(CamkitValueError, match="patch_size: got 0"):
        selectivity(model, x, maps, 0, patch_size=0)
    with pytest.raises(CamkitValueError, match="auc: got 'trapz'"):
        selectivity(model, x, maps, 0, auc="trapz")
    with pytest.raises(CamkitValueError, match=r"segments: got torch.float32 of shape"):
        irof(model, x, maps, 0, segments=torch.rand(2, 4, 4))
    with pytest.raises(CamkitValueError, match=r"segments: sample 1's labels are not 0 \.\. K - 1"):
        irof(model, x, maps, 0, segments=torch.stack([torch.zeros(4, 4), torch.full((4, 4), 2)])
             .long())  # fmt: skip
    with pytest.raises(CamkitValueError, match="patch_sizes: got"):
        infidelity(model, x, maps, 0, patch_sizes=())


@contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def test_equal_to_quantus_on_the_mnist_net(monkeypatch: pytest.MonkeyPatch) -> None:
    quantus = pytest.importorskip("quantus")
    # Quantus 0.6 integrates with np.trapz, which NumPy 2.4 removed; its replacement is the
    # same function
    if not hasattr(np, "trapz"):
        monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)
    checkpoint, _ = load()
    x = checkpoint.prepare(load_split("test").images[:12])
    result = camkit.GradCAM(checkpoint.model, "features.relu").explain(x)
    # maps on a grid of 1/64: a patch's mass is exact in float32 (Quantus) and float64
    # (camkit), so patches that tie tie in both and are ordered by the same argsort
    maps, y = torch.round(result.maps * 64) / 64, result.classes
    assert y is not None
    model = checkpoint.model
    inputs = {"model": model, "x_batch": x.numpy(), "y_batch": y.numpy(), "device": "cpu"}

    def a() -> np.ndarray:
        return maps.numpy()[:, None].copy()

    # float32 probabilities and logits in Quantus: agreement to float32 rounding
    close = {"rtol": 1e-4, "atol": 1e-5}
    for size in (7, 8):  # 28 = 4 x 7; 8 pads 28 to 32
        with _quiet():
            expected = quantus.RegionPerturbation(
                patch_size=size, regions_evaluation=10, disable_warnings=True
            )(a_batch=a(), **inputs)
        got = region_perturbation(model, x, maps, y, patch_size=size, regions=10, ties="quantus")
        np.testing.assert_allclose(got.curves.numpy(), np.asarray(expected), **close)
        with _quiet():
            metric = quantus.Selectivity(patch_size=size, disable_warnings=True)
            expected = metric(a_batch=a(), **inputs)
            expected_area = metric.get_auc_score
        got = selectivity(model, x, maps, y, patch_size=size, ties="quantus", auc="quantus")
        np.testing.assert_allclose(got.curves.numpy(), np.asarray(expected), **close)
        assert got.summary == pytest.approx(expected_area, rel=1e-4)

    # Infidelity: the sides a multiple of the patch (see the docstring); one repeat
    with _quiet():
        expected = quantus.Infidelity(
            perturb_patch_sizes=[4, 7], n_perturb_samples=1, disable_warnings=True
        )(a_batch=a(), **inputs)
    got = infidelity(model, x, maps, y, patch_sizes=(4, 7))
    np.testing.assert_allclose(got.values.numpy(), np.asarray(expected), rtol=1e-3, atol=1e-4)

    # IROF: Quantus's SLIC segments, and its loop with each input's own mean as the fill
    utils = quantus.helpers.utils
    segments = torch.from_numpy(np.stack([
        utils.get_superpixel_segments(img=np.moveaxis(image, 0, -1).astype("double"),
                                      segmentation_method="slic")
        for image in x.numpy()
    ])).long()  # fmt: skip
    own_mean = x.numpy().reshape(12, -1).mean(1)

    def fill_own_mean(arr: np.ndarray, mask: np.ndarray, **kwargs: object) -> np.ndarray:
        return np.where(mask, own_mean[:, None, None, None], arr)

    with _quiet():
        expected = quantus.IROF(perturb_func=fill_own_mean, return_aggregate=False,
                                disable_warnings=True)(a_batch=a(), **inputs)  # fmt: skip
    got = irof(model, x, maps, y, segments=segments, ties="quantus", auc="quantus")
    np.testing.assert_allclose(got.values.numpy(), np.asarray(expected), **close)
    ours = irof(model, x, maps, y, segments=segments)
    assert bool(((ours.values > -1) & (ours.values < 2)).all())
