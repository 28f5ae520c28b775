"""Localization metrics against masks: the pointing game and its energy variant, AUC,
relevance rank accuracy, top-k intersection.

Hand-derived values, invariance to the order of tied pixels, and equality with
scikit-learn's ROC AUC and Quantus 0.6 on the MNIST net's maps (stroke masks).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import camkit
from camkit.errors import CamkitValueError
from camkit.metrics import (
    auc,
    energy_pointing_game,
    pointing_game,
    relevance_rank_accuracy,
    top_k_intersection,
)
from examples.mnist.data import load_split
from examples.mnist.train import load


def test_hand_derived_values() -> None:
    maps = torch.tensor([[[0.9, 0.5], [0.5, 0.1]], [[0.0, 0.0], [0.0, 1.0]]])
    masks = torch.tensor([[[True, True], [False, False]], [[True, False], [False, False]]])
    # sample 0: positives {0.9, 0.5}, negatives {0.5, 0.1}: pairs 1, 1, 0.5, 1 -> 3.5 / 4
    # sample 1: positive {0.0}, negatives {0.0, 0.0, 1.0}: 0.5, 0.5, 0 -> 1 / 3
    assert auc(maps, masks).values.tolist() == pytest.approx([0.875, 1 / 3])
    # K = 2: sample 0 takes 0.9 (in) and one of the two tied 0.5 (one in, one out): 1.5 / 2;
    # K = 1: sample 1 takes 1.0 (out)
    assert relevance_rank_accuracy(maps, masks).values.tolist() == pytest.approx([0.75, 0.0])
    first = relevance_rank_accuracy(maps, masks, ties="first").values.tolist()
    assert first == pytest.approx([1.0, 0.0])  # the tied 0.5 at (0, 1) comes first
    # k = 3: sample 1 takes 1.0 and two of the three tied zeros, one of which is in the mask
    assert top_k_intersection(maps, masks, k=3).values.tolist() == pytest.approx([2 / 3, 2 / 9])
    influence = top_k_intersection(maps, masks, k=3, concept_influence=True).values.tolist()
    assert influence == pytest.approx([(2 / 3) / (2 / 4), (2 / 9) / (1 / 4)])
    assert top_k_intersection(maps, masks, k=1000).values.tolist() == pytest.approx([0.5, 0.25])


def test_empty_or_full_masks_are_left_out() -> None:
    maps = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[1] = True
    masks[2, 0, 0] = True
    values = auc(maps, masks).values
    assert math.isnan(values[0]) and math.isnan(values[1]) and not math.isnan(values[2])
    assert auc(maps, masks).summary == values[2].item()
    for metric in (relevance_rank_accuracy, top_k_intersection):
        assert math.isnan(metric(maps, masks).values[0])


def test_average_ties_do_not_depend_on_pixel_order() -> None:
    generator = torch.Generator().manual_seed(1)
    maps = (torch.rand(6, 8, 8, generator=generator) * 4).floor() / 4  # many ties
    masks = torch.rand(6, 8, 8, generator=generator) > 0.6
    permutation = torch.randperm(64, generator=generator)
    shuffled_maps = maps.flatten(1)[:, permutation].view_as(maps)
    shuffled_masks = masks.flatten(1)[:, permutation].view_as(masks)
    for metric in (auc, relevance_rank_accuracy, lambda m, g: top_k_intersection(m, g, k=10)):
        torch.testing.assert_close(
            metric(maps, masks).values, metric(shuffled_maps, shuffled_masks).values
        )
    first = relevance_rank_accuracy(maps, masks, ties="first").values
    shuffled_first = relevance_rank_accuracy(shuffled_maps, shuffled_masks, ties="first").values
    assert not torch.equal(first, shuffled_first)  # the order of the pixels decides "first"


def test_tied_maxima_by_hand() -> None:
    maps = torch.zeros(3, 4, 4)
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    maps[0, 0, 0] = maps[0, 3, 3] = 1.0  # two maxima: the first outside the mask, one inside
    masks[0, 3, 3] = True
    masks[1, 0, :2] = True  # a constant map: every pixel a maximum, 2 of 16 on the mask
    maps[2, 1, 1] = 1.0  # one maximum, one pixel from the mask
    masks[2, 1, 2] = True
    assert pointing_game(maps, masks, tolerance=0).values.tolist() == [0.5, 2 / 16, 0.0]
    assert pointing_game(maps, masks, tolerance=0, ties="first").values.tolist() == [0, 1, 0]
    assert pointing_game(maps, masks, tolerance=0, ties="quantus").values.tolist() == [1, 1, 0]
    # within one pixel: 5 of the 16 pixels are within reach of (0, 0) or (0, 1)
    assert pointing_game(maps, masks, tolerance=1).values.tolist() == [0.5, 5 / 16, 1.0]
    with pytest.raises(CamkitValueError, match="ties: got 'any'"):
        pointing_game(maps, masks, ties="any")


def _pointing_by_brute_force(maps: torch.Tensor, masks: torch.Tensor, tolerance: float) -> list:
    """The share of each map's maxima within ``tolerance`` of a mask pixel, one at a time."""
    shares = []
    for m, mask in zip(maps, masks, strict=True):
        grid = torch.stack(torch.meshgrid(*[torch.arange(s) for s in m.shape], indexing="ij"), -1)
        points = grid.view(-1, m.dim()).double()
        targets = points[mask.flatten()]
        peaks = points[m.flatten() == m.max()]
        hits = [bool((((targets - p) ** 2).sum(1) <= tolerance**2 + 1e-6).any()) for p in peaks]
        shares.append(sum(hits) / len(hits) if len(targets) else math.nan)
    return shares


@pytest.mark.parametrize("shape", [(12, 12), (5, 6, 7), (40,)])
@pytest.mark.parametrize("tolerance", [0.0, 1.0, 1.5, 3.0])
def test_average_pointing_game_is_the_share_of_maxima_that_hit(
    shape: tuple[int, ...], tolerance: float
) -> None:
    generator = torch.Generator().manual_seed(len(shape))
    maps = (torch.rand(6, *shape, generator=generator) * 3).floor()  # many tied maxima
    maps[0] = 0.0  # a constant map: every position a maximum (the distance transform's case)
    masks = torch.rand(6, *shape, generator=generator) > 0.85
    masks[1] = False
    got = pointing_game(maps, masks, tolerance=tolerance).values.tolist()
    expected = _pointing_by_brute_force(maps, masks, tolerance)
    assert math.isnan(got[1]) and math.isnan(expected[1])
    assert got[:1] + got[2:] == pytest.approx(expected[:1] + expected[2:], abs=1e-12)
    flipped = pointing_game(maps.flip(-1), masks.flip(-1), tolerance=tolerance).values
    torch.testing.assert_close(flipped, torch.tensor(got, dtype=torch.float64), equal_nan=True)


def test_clear_errors() -> None:
    maps, masks = torch.rand(2, 3, 3), torch.ones(2, 3, 3, dtype=torch.bool)
    with pytest.raises(CamkitValueError, match="ties: got 'random'"):
        relevance_rank_accuracy(maps, masks, ties="random")
    with pytest.raises(CamkitValueError, match="k: got 0"):
        top_k_intersection(maps, masks, k=0)
    with pytest.raises(CamkitValueError, match="masks: shape"):
        auc(maps, masks[:, :2])


@pytest.fixture(scope="module")
def mnist() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    checkpoint, _ = load()
    images = load_split("test").images[:32]
    x = checkpoint.prepare(images)
    cam = camkit.GradCAM(checkpoint.model, "features.relu")
    maps = {
        "Grad-CAM": cam(x),  # zero over much of the image: ties
        "signed Grad-CAM": cam.explain(x, relu=False, normalize=False).maps,
    }
    return maps, images[:, 0] > 0.5


def test_auc_equals_scikit_learn(mnist: tuple[dict[str, torch.Tensor], torch.Tensor]) -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    maps, masks = mnist
    for name, values in maps.items():
        ours = auc(values, masks).values.numpy()
        for i in range(len(ours)):
            fpr, tpr, _ = metrics.roc_curve(masks[i].flatten().numpy(), values[i].flatten().numpy())
            assert ours[i] == pytest.approx(metrics.auc(fpr, tpr), abs=1e-12), (name, i)


def test_equal_to_quantus(mnist: tuple[dict[str, torch.Tensor], torch.Tensor]) -> None:
    quantus = pytest.importorskip("quantus")
    maps, masks = mnist
    x = np.zeros((32, 1, 28, 28), dtype=np.float32)
    s = masks.numpy()[:, None]
    for name, values in maps.items():
        a = values.double().numpy()[:, None]
        cases = {
            "AUC": (quantus.AUC, {}, lambda m: auc(m, masks)),
            "RRA": (
                quantus.RelevanceRankAccuracy,
                {},
                lambda m: relevance_rank_accuracy(m, masks, ties="quantus"),
            ),
            "TKI": (
                quantus.TopKIntersection,
                {"k": 100},
                lambda m: top_k_intersection(m, masks, k=100, ties="quantus"),
            ),
        }
        for metric, (theirs, options, ours) in cases.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                expected = theirs(disable_warnings=True, **options)(
                    model=None, x_batch=x, y_batch=np.zeros(32, int), a_batch=a.copy(),
                    s_batch=s.copy(),
                )  # fmt: skip
            got = ours(values.double()).values.numpy()
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12,
                                       err_msg=f"{metric} on {name}")  # fmt: skip
    distinct = torch.rand(
        32, 28, 28, generator=torch.Generator().manual_seed(2), dtype=torch.float64
    )
    assert all(len(m.unique()) == m.numel() for m in distinct)  # no ties at all...
    for ties in ("average", "first"):  # ...so every convention is Quantus's
        torch.testing.assert_close(
            relevance_rank_accuracy(distinct, masks, ties=ties).values,
            relevance_rank_accuracy(distinct, masks, ties="quantus").values,
        )
        torch.testing.assert_close(
            top_k_intersection(distinct, masks, k=50, ties=ties).values,
            top_k_intersection(distinct, masks, k=50, ties="quantus").values,
        )


def test_pointing_game_and_relevance_mass_equal_quantus(
    mnist: tuple[dict[str, torch.Tensor], torch.Tensor],
) -> None:
    quantus = pytest.importorskip("quantus")
    maps, masks = mnist
    values = maps["Grad-CAM"].double()
    n = len(values)
    tied = values.clone()
    tied[:, 0, 0] = tied.flatten(1).amax(1)  # a second maximum, in the corner: off every stroke
    common = {"model": None, "x_batch": np.zeros((n, 1, 28, 28), np.float32),
              "y_batch": np.zeros(n, int), "s_batch": masks.numpy()[:, None]}  # fmt: skip

    def theirs(metric: object, a: torch.Tensor) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(metric(a_batch=a.numpy()[:, None].copy(), **common), float)  # type: ignore[operator]

    for a in (values, tied):
        expected = theirs(quantus.PointingGame(disable_warnings=True), a)
        got = pointing_game(a, masks, tolerance=0, ties="quantus").values.numpy()
        np.testing.assert_array_equal(got, expected)
    # with the corner maximum, Quantus's any-maximum hit is the average's 1 where the first
    # (the corner) misses
    stroke = pointing_game(values, masks, tolerance=0).values
    assert stroke.sum() > 0
    average = pointing_game(tied, masks, tolerance=0).values
    torch.testing.assert_close(average, stroke / 2)
    assert pointing_game(tied, masks, tolerance=0, ties="first").values.sum() == 0
    mass = energy_pointing_game(values, masks).values.numpy()
    np.testing.assert_allclose(mass, theirs(quantus.RelevanceMassAccuracy(disable_warnings=True),
                                            values), rtol=1e-12)  # fmt: skip
    # Attribution Localisation (unweighted) is the same share, its denominator + 1e-9
    located = theirs(quantus.AttributionLocalisation(disable_warnings=True), values)
    np.testing.assert_allclose(mass, located, rtol=2e-9 / float(values.flatten(1).sum(1).min()))


def test_the_quantus_conventions_camkit_does_not_follow() -> None:
    """What the docs say of Quantus 0.6's pointing game and Attribution Localisation."""
    quantus = pytest.importorskip("quantus")
    maps = torch.rand(6, 1, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    masks = torch.zeros(6, 1, 6, 6, dtype=torch.bool)
    masks[1:, 0, :2, :2] = True
    maps[1:, 0, 0, 0] = 2.0  # every sample with a mask hits it

    def theirs(metric: object, n: int) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(metric(  # type: ignore[operator]
                model=None, x_batch=np.zeros((n, 1, 6, 6), np.float32), y_batch=np.zeros(n, int),
                a_batch=maps[:n].numpy().copy(), s_batch=masks[:n].numpy().copy(),
            ), float)  # fmt: skip

    # an empty mask: a hit in Quantus, left out by camkit
    assert theirs(quantus.PointingGame(disable_warnings=True), 6)[0] == 1.0
    assert math.isnan(pointing_game(maps[:, 0], masks[:, 0], tolerance=0).values[0])
    with pytest.raises(TypeError):
        theirs(quantus.PointingGame(weighted=True, disable_warnings=True), 6)
    # the weighted share: the mask's 4 pixels over the (n - 2) * 36 values of x_batch[2:]
    for n in (4, 6):
        weighted = theirs(quantus.AttributionLocalisation(weighted=True, disable_warnings=True), n)
        plain = theirs(quantus.AttributionLocalisation(disable_warnings=True), n)
        np.testing.assert_allclose(weighted[1:] / plain[1:], 4 / ((n - 2) * 36), rtol=1e-12)


def test_mosaics_and_focus_by_hand() -> None:
    images = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 1, 2, 2).clone()
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    tiles, quadrants, classes = camkit.metrics.mosaics(images, labels, per_class=3, seed=1)
    assert tiles.shape == (9, 1, 4, 4) and classes.tolist() == [0] * 3 + [1] * 3 + [2] * 3
    for tile, flags, c in zip(tiles, quadrants, classes, strict=True):
        for q, (r, k) in enumerate([(0, 0), (0, 2), (2, 0), (2, 2)]):
            shown = tile[0, r : r + 2, k : k + 2]
            source = int(shown[0, 0])  # image i is filled with i
            assert torch.equal(shown, images[source, 0])
            assert bool(flags[q]) == (int(labels[source]) == int(c))
        assert int(flags.sum()) == 2
    # mass 3 on the class's quadrants, 1 elsewhere (and a negative value, clipped)
    maps = torch.ones(9, 4, 4)
    for i, flags in enumerate(quadrants):
        for q, (r, k) in enumerate([(0, 0), (0, 2), (2, 0), (2, 2)]):
            if flags[q]:
                maps[i, r : r + 2, k : k + 2] = 3.0
    maps[:, 0, 0] = torch.where(quadrants[:, 0], 3.0, -5.0)
    got = camkit.metrics.focus(maps, quadrants)
    # 2 x 4 pixels at 3 inside, 2 x 4 at 1 outside; where the top-left is outside, its -5
    # is clipped to 0: 24 / 31
    inside, outside = (
        torch.tensor(24 / 32, dtype=torch.float64),
        torch.tensor(24 / 31, dtype=torch.float64),
    )
    expected = torch.where(quadrants[:, 0], inside, outside)
    torch.testing.assert_close(got.values, expected, rtol=1e-12, atol=0)
    assert math.isnan(camkit.metrics.focus(torch.zeros(1, 4, 4), quadrants[:1]).summary)
    with pytest.raises(CamkitValueError, match=r"quadrants: got shape \(9, 3\)"):
        camkit.metrics.focus(maps, quadrants[:, :3])
    with pytest.raises(CamkitValueError, match=r"labels: got one class"):
        camkit.metrics.mosaics(images, torch.zeros(6, dtype=torch.long))


def test_focus_equals_quantus() -> None:
    quantus = pytest.importorskip("quantus")
    images = load_split("test").images[:60]
    labels = load_split("test").labels[:60]
    checkpoint, _ = load()
    x = checkpoint.prepare(images)
    tiles, quadrants, classes = camkit.metrics.mosaics(x, torch.as_tensor(labels), per_class=2)
    maps = torch.rand(len(tiles), 56, 56, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = quantus.Focus(disable_warnings=True, normalise=False)(
            model=checkpoint.model, x_batch=tiles.numpy(), y_batch=classes.numpy(),
            a_batch=maps.double().numpy()[:, None], custom_batch=quadrants.int().numpy(),
            device="cpu",
        )  # fmt: skip
    got = camkit.metrics.focus(maps, quadrants)
    # float64 maps to both; Quantus adds 1e-9 to the total mass (about 1500 here)
    np.testing.assert_allclose(got.values.numpy(), np.asarray(expected), rtol=1e-11)


@pytest.mark.parametrize("ties", ["average", "first"])
def test_top_hits_by_numpy_and_by_torch_agree(ties: str) -> None:
    """The CPU path (NumPy) and the one other devices take (torch), on rows with ties."""
    from camkit.metrics.localization import _top_hits_numpy, _top_hits_torch

    generator = torch.Generator().manual_seed(1)
    flat = torch.round(torch.rand(8, 60, generator=generator, dtype=torch.float64) * 6) / 6
    inside = torch.rand(8, 60, generator=generator) > 0.6
    for counts in (torch.full((8,), 7), torch.arange(8) * 5):  # the same k, and 0 to 35
        by_numpy = _top_hits_numpy(flat.numpy(), inside.numpy(), counts.numpy(), ties)
        by_torch = _top_hits_torch(flat, inside, counts, ties)
        torch.testing.assert_close(by_numpy, by_torch, rtol=0, atol=1e-12)
    # and by hand: k = 1 on a row whose top value is tied between a mask pixel and another
    row = torch.tensor([[0.9, 0.9, 0.1]], dtype=torch.float64)
    mask = torch.tensor([[True, False, False]])
    expected = 0.5 if ties == "average" else 1.0
    assert float(_top_hits_numpy(row.numpy(), mask.numpy(), np.array([1]), ties)[0]) == expected
