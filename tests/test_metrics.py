"""Metrics on constructed cases with known values, batch-size invariance, a clean model."""

from __future__ import annotations

import inspect
import math
import warnings
from functools import partial
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from camkit import CamkitTypeError, CamkitValueError, GradCAM
from camkit.metrics import (
    average_drop,
    blur,
    deletion,
    energy_pointing_game,
    evaluate,
    impute,
    increase_in_confidence,
    insertion,
    pointing_game,
    randomization_test,
    road,
    spearman,
    ssim,
)
from tests.helpers import WRONG_VALUES, assert_untouched, snapshot
from tests.models import conv_net

TOTAL = 100.0


class SumOfPixels(nn.Module):
    """Two classes with probabilities s / T and 1 - s / T, where s is the pixel sum."""

    def forward(self, x: Tensor) -> Tensor:
        s = x.flatten(1).sum(1).double()
        return torch.stack([s.log(), (TOTAL - s).log()], dim=1).float()


class Constant(nn.Module):
    """Probabilities that do not depend on the input."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([0.3, -0.2, 1.0]))

    def forward(self, x: Tensor) -> Tensor:
        return self.bias.expand(len(x), 3) + 0 * x.flatten(1).sum(1, keepdim=True)


def _positive_images(n: int = 3, side: int = 4) -> Tensor:
    return torch.rand(n, 1, side, side) * 0.9 + 0.1  # sums well below TOTAL


def _trapezoid(ys: list[float], xs: list[float]) -> float:
    return sum((ys[i] + ys[i + 1]) / 2 * (xs[i + 1] - xs[i]) for i in range(len(xs) - 1))


@pytest.mark.parametrize("step", [1, 3, 16])
def test_deletion_and_insertion_of_a_pixel_sum_in_closed_form(step: int) -> None:
    x = _positive_images()
    maps = torch.rand(3, 4, 4)
    dele = deletion(SumOfPixels(), x, maps, 0, step=step, batch_size=7)
    ins = insertion(SumOfPixels(), x, maps, 0, step=step, baseline=0.0, batch_size=5)
    counts = sorted({min(c, 16) for c in range(0, 16 + step, step)})
    xs = [c / 16 for c in counts]
    for i in range(3):
        values = x[i].flatten().double()
        ranked = values[maps[i].flatten().argsort(descending=True)]
        removed = [float(ranked[:c].sum()) for c in counts]
        expected_del = [(float(values.sum()) - r) / TOTAL for r in removed]
        expected_ins = [r / TOTAL for r in removed]
        np.testing.assert_allclose(dele.curves[i].numpy(), expected_del, rtol=1e-5)
        np.testing.assert_allclose(ins.curves[i].numpy(), expected_ins, rtol=1e-5, atol=1e-9)
        assert dele.values[i].item() == pytest.approx(_trapezoid(expected_del, xs), rel=1e-5)
        assert ins.values[i].item() == pytest.approx(_trapezoid(expected_ins, xs), rel=1e-5)
    assert dele.summary == pytest.approx(float(dele.values.mean()))


@pytest.mark.parametrize("tied", [False, True])
def test_deletion_is_quantus_pixel_flipping(tied: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The curve after each step, the area by ``auc="quantus"`` and, for maps with ties
    (Grad-CAM's zeros), the order by ``ties="quantus"``, on the MNIST net."""
    quantus = pytest.importorskip("quantus")
    if not hasattr(np, "trapz"):  # Quantus 0.6 calls np.trapz, which NumPy 2.4 removed
        monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)
    from examples.mnist.data import load_split
    from examples.mnist.train import load

    checkpoint, _ = load()
    model = checkpoint.model
    x = checkpoint.prepare(load_split("test").images[:16])
    y = model(x).argmax(1)
    if tied:
        maps = GradCAM(model, "features.relu")(x, y).double()
        assert (maps == 0).sum() > 100
    else:
        maps = torch.rand(16, 28, 28, generator=torch.Generator().manual_seed(0)).double()
    ties = "quantus" if tied else "first"
    ours = deletion(model, x, maps, y, step=98, baseline=float(x.min()), ties=ties)
    area = deletion(model, x, maps, y, step=98, baseline=float(x.min()), ties=ties, auc="quantus")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = quantus.PixelFlipping(features_in_step=98, disable_warnings=True)
        common = {"model": model, "x_batch": x.numpy(), "y_batch": y.numpy(), "device": "cpu"}
        curves = np.asarray(run(a_batch=maps.numpy()[:, None].copy(), **common))
        run = quantus.PixelFlipping(features_in_step=98, return_auc_per_sample=True,
                                    disable_warnings=True)  # fmt: skip
        areas = np.asarray(run(a_batch=maps.numpy()[:, None].copy(), **common))
    # the same float32 network in both, on batches of other sizes, and Quantus's softmax in
    # float32: a probability moves by at most a few float32 roundings of the logits'
    # differences (below 64 here); 2^-23 of 64 bounds it
    with torch.no_grad():
        logits = model(x)
    assert float(logits.max() - logits.min()) < 64
    bound = 64 * 2.0**-23
    np.testing.assert_allclose(ours.curves[:, 1:].numpy(), curves, rtol=0, atol=bound)
    np.testing.assert_allclose(area.values.numpy(), areas, rtol=0, atol=bound * curves.shape[1])
    assert area.curves.equal(ours.curves) and not area.values.equal(ours.values)


def test_average_drop_and_increase_of_a_pixel_sum_by_hand() -> None:
    x = _positive_images()
    maps = torch.rand(3, 4, 4)
    y = x.flatten(1).sum(1).double() / TOTAL
    o = (x[:, 0] * maps).flatten(1).sum(1).double() / TOTAL
    drop = average_drop(SumOfPixels(), x, maps, 0)
    torch.testing.assert_close(drop.values, 100 * (y - o) / y, rtol=1e-5, atol=1e-6)
    assert increase_in_confidence(SumOfPixels(), x, maps, 0).summary == 0.0


@pytest.mark.parametrize(
    ("value", "shown"),
    [(1.5, "1.5 to 1.5"), (-0.25, "-0.25 to -0.25"), (float("nan"), "nan to nan")],
)
@pytest.mark.parametrize("metric", [average_drop, increase_in_confidence, deletion, road])
def test_maps_outside_zero_to_one_are_refused_by_name(
    metric: Any, value: float, shown: str
) -> None:
    x = _positive_images()
    maps = torch.rand(3, 4, 4)
    maps[1, 2, 3] = value  # one value out of range, in one sample
    with pytest.raises(CamkitValueError, match=r"^maps: values must lie in \[0, 1\], got .*"):
        metric(SumOfPixels(), x, maps, 0)
    with pytest.raises(CamkitValueError, match=rf"got {shown};"):
        metric(SumOfPixels(), x, torch.full((3, 4, 4), value), 0)


def test_a_model_that_ignores_its_input_gives_neutral_values() -> None:
    model = Constant()
    x = torch.randn(4, 1, 6, 6)
    maps = torch.rand(4, 6, 6)
    p = float(torch.softmax(model.bias.detach().double(), 0)[2])
    assert average_drop(model, x, maps).summary == pytest.approx(0.0, abs=1e-12)
    assert increase_in_confidence(model, x, maps).summary == 0.0
    assert deletion(model, x, maps).summary == pytest.approx(p, rel=1e-6)
    assert insertion(model, x, maps).summary == pytest.approx(p, rel=1e-6)
    for order in ("morf", "lerf"):
        result = road(model, x, maps, order=order, percentages=[20, 60])
        torch.testing.assert_close(result.values, torch.full((4, 2), p, dtype=torch.float64))


@pytest.mark.parametrize(
    "metric",
    [
        average_drop,
        increase_in_confidence,
        partial(deletion, step=5),
        partial(insertion, step=7),
        partial(road, percentages=[30, 70]),
        partial(road, percentages=[50], order="lerf"),
    ],
    ids=["avgdrop", "increase", "deletion", "insertion", "road-morf", "road-lerf"],
)
def test_batch_size_never_changes_a_result(metric: Any) -> None:
    model = conv_net(2, in_channels=1).double()  # float64: batching cannot change rounding
    x = torch.randn(5, 1, 10, 10, dtype=torch.float64)
    maps = GradCAM(model, "4")(x)
    before = snapshot(model)
    results = [metric(model, x, maps, batch_size=b).values for b in (1, 3, 64)]
    for other in results[1:]:
        torch.testing.assert_close(other, results[0])
    assert_untouched(before, snapshot(model))
    from_cam = metric(model, x, GradCAM(model, "4"), batch_size=4).values
    torch.testing.assert_close(from_cam, results[0])


_SMALL = {  # parameters that fit a 10 x 10 input, or keep the test short
    "continuity": {"steps": 8},
    "faithfulness_correlation": {"subset_size": 10, "runs": 6},
    "monotonicity_correlation": {"samples": 4},
    "relative_representation_stability": {"layer": "4"},
}


def _metrics_with_passes() -> list[str]:
    import camkit.metrics

    names = []
    for name in camkit.metrics.__all__:
        function = getattr(camkit.metrics, name)
        if inspect.isfunction(function) and "batch_size" in inspect.signature(function).parameters:
            names.append(name)
    return names


@pytest.mark.parametrize("name", _metrics_with_passes())
def test_every_metric_gives_the_same_values_whatever_its_rows_per_pass(name: str) -> None:
    """The default (``None``: rows sized to the input) and any int give the same values."""
    import camkit.metrics
    from camkit.metrics._common import check_batch

    metric = partial(getattr(camkit.metrics, name), **_SMALL.get(name, {}))
    model = conv_net(2, in_channels=1).double()  # float64: batching hardly changes rounding
    x = torch.randn(5, 1, 10, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    cam = GradCAM(model, "4")
    before = snapshot(model)
    results = [metric(model, x, cam, batch_size=b).values for b in (None, 1, 3)]
    for other in results[1:]:
        torch.testing.assert_close(other, results[0], equal_nan=True)
    assert_untouched(before, snapshot(model))
    assert check_batch(x, None) == (5, 256)


@pytest.mark.parametrize("name", _metrics_with_passes())
def test_every_metric_refuses_an_input_holding_nan(name: str) -> None:
    """Scores of an input with a NaN pixel are NaN, or numbers that mean nothing (a
    prediction-agreement share of 0, say): refused before any pass, the model untouched."""
    import camkit.metrics

    metric = partial(getattr(camkit.metrics, name), **_SMALL.get(name, {}))
    model = conv_net(2, in_channels=1)
    x = torch.rand(3, 1, 10, 10)
    x[1, 0, 2, 3] = torch.nan
    before = snapshot(model)
    with pytest.raises(CamkitValueError, match=r"^x: contains 1 NaN or infinite value"):
        metric(model, x, GradCAM(model, "4"))
    assert_untouched(before, snapshot(model))


@pytest.mark.parametrize(
    "name",
    ["pointing_game", "energy_pointing_game", "auc", "relevance_rank_accuracy",
     "top_k_intersection", "focus", "sparseness", "complexity", "effective_complexity"],
)  # fmt: skip
def test_metrics_of_maps_alone_refuse_maps_holding_nan(name: str) -> None:
    import camkit.metrics

    maps = torch.rand(2, 8, 8)
    maps[0, 1, 1] = torch.inf
    maps[1, 2, 2] = torch.nan
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[:, 2:6, 2:6] = True
    second = {"focus": torch.tensor([[True, False, False, False]] * 2)}.get(name, masks)
    arguments = {"sparseness": (), "complexity": (), "effective_complexity": ()}.get(
        name, (second,)
    )
    with pytest.raises(CamkitValueError, match=r"^maps: contain 2 NaN or infinite value"):
        getattr(camkit.metrics, name)(maps, *arguments)


def test_the_default_rows_per_pass_follow_the_input_size() -> None:
    from camkit._engine.option_checks import MOST_ROWS, ROW_VALUES
    from camkit.metrics._common import check_batch

    assert check_batch(torch.zeros(2, 1, 28, 28), None) == (2, MOST_ROWS)
    assert check_batch(torch.zeros(2, 3, 224, 224), None) == (2, ROW_VALUES // (3 * 224 * 224))
    assert check_batch(torch.zeros(1, 1, 160, 160, 160), None) == (1, 1)  # never 0 rows
    assert check_batch(torch.zeros(3, 2), 7) == (3, 7)
    for bad in (0, -1, 2.0, True, "8"):
        with pytest.raises(CamkitValueError, match="batch_size: got"):
            check_batch(torch.zeros(3, 2), bad)  # type: ignore[arg-type]


def test_maps_of_the_wrong_kind_are_refused() -> None:
    model = conv_net(2, in_channels=1)
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(CamkitTypeError, match="maps: got ndarray"):
        average_drop(model, x, np.zeros((2, 8, 8)))  # type: ignore[arg-type]
    with pytest.raises(CamkitValueError, match=r"maps: got shape \(3, 8, 8\)"):
        deletion(model, x, torch.rand(3, 8, 8))


def test_pointing_game_by_hand() -> None:
    maps = torch.zeros(4, 10, 10)
    masks = torch.zeros(4, 10, 10, dtype=torch.bool)
    maps[0, 2, 2] = 1
    masks[0, 2, 2] = True  # hit on the mask
    maps[1, 0, 0] = 1
    masks[1, 3, 4] = True  # distance 5 from the peak
    maps[2, 9, 9] = 1  # empty mask: left out
    maps[3, 5, 5] = 1
    masks[3, 5, 6:] = True  # distance 1
    strict = pointing_game(maps, masks, tolerance=0)
    assert strict.values[[0, 1, 3]].tolist() == [1.0, 0.0, 0.0]
    assert math.isnan(strict.values[2])
    assert strict.summary == pytest.approx(1 / 3)
    assert pointing_game(maps, masks, tolerance=5).summary == 1.0
    assert pointing_game(maps, masks, tolerance=4.99).values[1] == 0.0


def test_energy_pointing_game_by_hand() -> None:
    maps = torch.tensor([[[2.0, 2.0], [0.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]])
    masks = torch.tensor([[[True, False], [False, True]], [[True, True], [True, True]]])
    result = energy_pointing_game(maps, masks)
    assert result.values[0] == pytest.approx(0.75)
    assert math.isnan(result.values[1])
    with pytest.raises(CamkitValueError, match="non-negative"):
        energy_pointing_game(-maps, masks)
    with pytest.raises(CamkitValueError, match="masks: shape"):
        pointing_game(maps, masks[:, :1])


def test_imputation_solves_the_neighbour_equations() -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 3, 12, 9, dtype=torch.float64)
    hole = torch.rand(2, 12, 9) < 0.7
    filled = impute(x, hole, noise=0.0)
    stencil = torch.tensor(
        [[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]], dtype=torch.float64
    )
    for n in range(2):
        for c in range(3):
            img = filled[n, c]
            padded = torch.nn.functional.pad(img, (1, 1, 1, 1))
            weights = torch.nn.functional.pad(torch.ones_like(img), (1, 1, 1, 1))
            for i, j in hole[n].nonzero().tolist():
                window = padded[i : i + 3, j : j + 3]
                present = weights[i : i + 3, j : j + 3] * stencil
                mean = (window * present).sum() / present.sum()
                assert img[i, j].item() == pytest.approx(mean.item(), abs=1e-5)
            assert torch.equal(img[~hole[n]], x[n, c][~hole[n]])
    noisy = impute(x, hole, noise=0.5, generator=torch.Generator().manual_seed(0))
    added = (noisy - filled).permute(0, 2, 3, 1)  # (N, H, W, C)
    assert 0.45 < float(added[hole].std()) < 0.55
    assert torch.equal(added[~hole], torch.zeros_like(added[~hole]))


@pytest.mark.parametrize("share", [0.2, 0.8])
def test_imputation_equals_quantus_sparse_solve(share: float) -> None:
    """camkit's coarse-started conjugate gradients reach the solution Quantus 0.6 finds by a
    direct sparse solve (its ``noisy_linear_imputation``, noise 0), on 64 x 48 images (two
    coarser grids) with a smooth map's top pixels removed."""
    perturb = pytest.importorskip("quantus.functions.perturb_func")
    torch.manual_seed(3)
    x = torch.rand(2, 3, 64, 48, dtype=torch.float64)
    order = torch.nn.functional.interpolate(torch.rand(2, 1, 4, 3), size=(64, 48),
                                            mode="bilinear")[:, 0].flatten(1)  # fmt: skip
    ranks = order.argsort(1, descending=True).argsort(1)
    hole = (ranks < round(share * 64 * 48)).view(2, 64, 48)
    exact = impute(x, hole, noise=0.0, tolerance=1e-12, iterations=5000)
    default = impute(x, hole, noise=0.0)
    for n in range(2):
        indices = hole[n].flatten().nonzero()[:, 0].numpy()
        theirs = perturb.noisy_linear_imputation(x[n].numpy(), indices, noise=0.0)
        np.testing.assert_allclose(exact[n].numpy(), theirs, rtol=0, atol=1e-9)
        # the default tolerance (residual norm 1e-6) is far inside ROAD's noise (std 0.01)
        np.testing.assert_allclose(default[n].numpy(), theirs, rtol=0, atol=1e-4)


@pytest.mark.parametrize("tied", [False, True])
def test_road_accuracy_equals_quantus(tied: bool) -> None:
    """``score="accuracy"``: Quantus 0.6's ROAD on the MNIST net, both without noise, at
    percentages where int() and round() of the pixel count agree (78, 235, 392 pixels)."""
    quantus = pytest.importorskip("quantus")
    from examples.mnist.data import load_split
    from examples.mnist.train import load

    checkpoint, _ = load()
    model = checkpoint.model
    x = checkpoint.prepare(load_split("test").images[:24])
    y = model(x).argmax(1)
    cam = GradCAM(model, "features.relu")
    if tied:  # zero over much of the image
        maps = cam(x, y).double()
    else:  # the raw map, before the ReLU: few ties, scaled into [0, 1]
        raw = cam.explain(x, y, relu=False, normalize=False).maps.double().flatten(1)
        low, high = raw.amin(1, keepdim=True), raw.amax(1, keepdim=True)
        maps = ((raw - low) / (high - low)).view(24, 28, 28)
    percentages = [10, 30, 50]
    ours = road(model, x, maps, y, percentages=percentages, noise=0.0, score="accuracy",
                ties="quantus" if tied else "first")  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = quantus.ROAD(percentages=percentages, noise=0.0, disable_warnings=True)(
            model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=maps.numpy()[:, None],
            device="cpu",
        )  # fmt: skip
    assert ours.summary == pytest.approx([theirs[p] for p in percentages], abs=1e-12)
    assert set(ours.values.unique().tolist()) <= {0.0, 1.0}
    assert ours.summary != pytest.approx([1.0, 1.0, 1.0])  # some predictions do change
    probability = road(model, x, maps, y, percentages=percentages, noise=0.0)
    assert not probability.values.equal(ours.values)
    with pytest.raises(CamkitValueError, match="score: got 'auc'"):
        road(model, x, maps, y, score="auc")


def test_road_morf_hurts_more_than_lerf_for_a_pixel_sum() -> None:
    x = _positive_images(4, 8)
    maps = x[:, 0]  # the brightest pixels carry the score
    morf = road(SumOfPixels(), x, maps, 0, percentages=[50], noise=0.0).summary
    lerf = road(SumOfPixels(), x, maps, 0, percentages=[50], order="lerf", noise=0.0).summary
    assert isinstance(morf, list)
    assert isinstance(lerf, list)
    assert morf[0] < lerf[0]


def test_blur_keeps_constants_and_smooths() -> None:
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 4] = 1.0
    blurred = blur(x, sigma=1.0, kernel_size=5)
    assert blurred.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert blurred[0, 0, 4, 4] < 1.0
    assert blurred[0, 0, 4, 5] > 0.0
    torch.testing.assert_close(blur(torch.full((2, 3, 6, 7), 0.5)), torch.full((2, 3, 6, 7), 0.5))


def test_ssim_equals_scikit_image() -> None:
    """scikit-image's SSIM with the paper's settings (Gaussian window of sigma 1.5, 11 taps;
    population covariances) averaged over the positions a full window covers, as camkit's."""
    metrics = pytest.importorskip("skimage.metrics")
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(3, 40, 33, dtype=torch.float64, generator=generator)
    b = (a + 0.3 * torch.rand(3, 40, 33, dtype=torch.float64, generator=generator)).clamp(0, 1)
    theirs = [
        metrics.structural_similarity(a[i].numpy(), b[i].numpy(), gaussian_weights=True,
                                      sigma=1.5, use_sample_covariance=False, data_range=1.0)
        for i in range(3)
    ]  # fmt: skip
    # float64 sums of a few thousand terms of magnitude at most 1
    np.testing.assert_allclose(ssim(a, b).numpy(), theirs, rtol=0, atol=1e-12)


def test_spearman_and_ssim_by_hand() -> None:
    # ranks of [1, 2, 2, 3] are [1, 2.5, 2.5, 4]; of [4, 3, 2, 1] reversed
    rho = spearman(torch.tensor([[1.0, 2.0, 2.0, 3.0]]), torch.tensor([[4.0, 3.0, 2.0, 1.0]]))
    a = np.array([1, 2.5, 2.5, 4]) - 2.5
    b = np.array([4, 3, 2, 1]) - 2.5
    assert rho.item() == pytest.approx(float(a @ b / np.sqrt((a @ a) * (b @ b))))
    assert spearman(torch.rand(3, 5, 5), torch.rand(3, 5, 5)).abs().max() <= 1
    # constant images: SSIM = (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1)
    value = ssim(torch.full((1, 12, 12), 0.2), torch.full((1, 12, 12), 0.6)).item()
    c1 = 0.01**2
    assert value == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.04 + 0.36 + c1))
    m = torch.rand(2, 16, 16)
    torch.testing.assert_close(ssim(m, m), torch.ones(2, dtype=torch.float64))
    assert ssim(m, 1 - m).max() < 0.5


def test_randomization_separates_gradcam_from_a_model_blind_method() -> None:
    torch.manual_seed(3)
    model = conv_net(2, in_channels=1)
    x = torch.randn(6, 1, 12, 12)
    before = snapshot(model, x)
    cascade = randomization_test(model, lambda m: GradCAM(m, "4"), x)
    assert cascade.layers == ["9", "6", "4", "1", "0"]  # from the logits down
    assert cascade.spearman.shape == (5, 6)
    assert cascade.maps.shape == (6, 6, 12, 12)
    assert cascade.passes()
    assert_untouched(before, snapshot(model, x))
    for step, maps in enumerate(cascade.maps[1:]):  # all steps ranked at once, each alike
        expected = spearman(cascade.maps[0], maps)
        torch.testing.assert_close(
            cascade.spearman[step], expected, rtol=0, atol=1e-12, equal_nan=True
        )

    def blind(m: nn.Module) -> Any:
        return lambda inputs, classes: inputs[:, 0].abs()

    independent = randomization_test(model, blind, x, mode="independent", layers=["0", "9"])
    assert independent.layers == ["0", "9"]
    torch.testing.assert_close(independent.spearman, torch.ones(2, 6, dtype=torch.float64))
    assert not independent.passes()
    with pytest.raises(CamkitValueError, match="own no parameters"):
        randomization_test(model, blind, x, layers=["2"])


def test_evaluate_over_a_loader_equals_one_big_batch() -> None:
    model = conv_net(2, in_channels=1).double()
    x = torch.randn(10, 1, 10, 10, dtype=torch.float64)
    labels = torch.randint(0, 5, (10,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, labels), batch_size=4)
    cam = GradCAM(model, "4")
    metrics = {"drop": average_drop, "del": partial(deletion, step=10)}
    results = evaluate(model, cam, loader, metrics, target="label", progress=False)
    whole_drop = average_drop(model, x, cam(x, labels), labels)
    torch.testing.assert_close(results["drop"].values, whole_drop.values)
    whole_del = deletion(model, x, cam, labels, step=10)
    torch.testing.assert_close(results["del"].curves, whole_del.curves)
    assert results["del"].summary == pytest.approx(whole_del.summary)
    predicted = evaluate(model, cam, loader, metrics, progress=False)
    torch.testing.assert_close(predicted["drop"].values, average_drop(model, x, cam).values)


def test_the_randomization_test_can_leave_out_ssim() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(144, 3)).eval()  # fmt: skip
    x = torch.rand(2, 1, 8, 8)
    full = randomization_test(model, lambda m: GradCAM(m, "1"), x)
    quick = randomization_test(model, lambda m: GradCAM(m, "1"), x, structural=False)
    assert quick.ssim.isnan().all() and not full.ssim.isnan().all()
    torch.testing.assert_close(quick.spearman, full.spearman, equal_nan=True)


_SHAPES = {  # the metrics' required arguments, by their names
    ("model", "x", "maps"): "model",
    ("model", "x", "maps", "layer"): "model",
    ("model", "method", "x"): "method",
    ("maps", "masks"): "masks",
    ("maps",): "maps",
}


def _required(function: Any) -> tuple[str, ...]:
    parameters = inspect.signature(function).parameters.values()
    return tuple(p.name for p in parameters if p.default is p.empty)


def _metric_calls() -> list[str]:
    """Every metric function that scores a model's maps (or maps alone); the helpers
    (blur, impute, ...) and the loops over loaders (evaluate, compare) have tests of their
    own."""
    import camkit.metrics

    return [
        n
        for n in camkit.metrics.__all__
        if inspect.isfunction(getattr(camkit.metrics, n))
        and _required(getattr(camkit.metrics, n)) in _SHAPES
    ]


_FEW = {  # small work for each call: the test is about the checks, not the values
    "samples": 3, "runs": 3, "subset_size": 16, "features_in_step": 16, "regions": 4,
    "patch_size": 4, "steps": 4, "percentages": (20, 50), "layer": "4", "step": 16,
    "patch_sizes": (4,), "iterations": 10,
}  # fmt: skip


@pytest.mark.parametrize("name", _metric_calls())
def test_every_metric_option_refuses_values_of_the_wrong_kind(name: str) -> None:
    """Each keyword option of each metric given ten wrong values (a string for a number, a
    float for a seed, a number for a function, ...) gets camkit's error, never a raw one."""
    import camkit.metrics

    metric = getattr(camkit.metrics, name)
    signature = inspect.signature(metric)
    model = conv_net(2, in_channels=1, classes=3)
    x = torch.rand(3, 1, 10, 10, generator=torch.Generator().manual_seed(0))
    cam = GradCAM(model, "4")
    masks = torch.zeros(3, 10, 10, dtype=torch.bool)
    masks[:, 3:7, 3:7] = True
    arguments = {
        "model": (model, x, cam),
        "method": (model, lambda m: GradCAM(m, "4"), x),
        "masks": (cam(x), masks),
        "maps": (cam(x),),
    }[_SHAPES[_required(metric)]]
    few = {k: v for k, v in _FEW.items() if k in signature.parameters}
    raw = []
    for option in signature.parameters.values():
        if option.default is option.empty or option.name == "target":
            continue
        for wrong in WRONG_VALUES:
            if (wrong is None and option.default is None) or (
                wrong is True and isinstance(option.default, bool)
            ):
                continue
            try:
                metric(*arguments, **{**few, option.name: wrong})
            except camkit.CamkitError:
                continue
            except Exception as error:  # a raw error: what the test looks for
                raw.append(f"{option.name}={wrong!r}: {type(error).__name__}"[:100])
    assert not raw, f"{name}: raw errors for " + "; ".join(raw)
