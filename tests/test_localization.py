"""Localization metrics against masks: AUC, relevance rank accuracy, top-k intersection.

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
from camkit.metrics import auc, relevance_rank_accuracy, top_k_intersection
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
