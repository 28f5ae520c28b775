"""Random Logit: the off classes Quantus draws, and Quantus 0.6's values given its SSIM."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import camkit
from camkit.errors import CamkitValueError
from camkit.metrics import off_classes, random_logit
from examples.mnist.data import load_split
from examples.mnist.train import load


def test_off_classes_are_other_classes_drawn_uniformly() -> None:
    classes = torch.randint(0, 10, (5000,), generator=torch.Generator().manual_seed(0))
    others = off_classes(classes, 10, seed=1)
    assert bool((others != classes).all()) and int(others.min()) >= 0 and int(others.max()) <= 9
    counts = torch.bincount(others, minlength=10).double()
    assert float(counts.min()) > 0.8 * 500 and float(counts.max()) < 1.2 * 500
    assert torch.equal(off_classes(classes, 10, seed=1), others)  # seeded
    with pytest.raises(CamkitValueError, match="num_classes: got 1"):
        off_classes(classes, 1)


def test_a_map_that_ignores_the_class_scores_one() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3)).eval()
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    def image(inputs: Tensor, classes: Tensor) -> Tensor:
        return inputs[:, 0]  # the same map whatever the class

    ones = random_logit(model, x, image).values
    torch.testing.assert_close(ones, torch.ones(3, dtype=torch.float64))

    def one_hot(inputs: Tensor, classes: Tensor) -> Tensor:
        maps = torch.zeros(len(inputs), 8, 8)
        maps[torch.arange(len(inputs)), 0, classes] = 1  # a pixel per class
        return maps

    # maps that move with the class: the two maps differ in two pixels, so SSIM drops below 1
    assert (random_logit(model, x, one_hot).values < 0.9).all()


def _quantus_ssim(a: Tensor, b: Tensor) -> Tensor:
    """Quantus 0.6's ssim: scikit-image's SSIM over each pair flattened into one row, with the
    pair's range."""
    from skimage.metrics import structural_similarity

    values = []
    for aa, bb in zip(a.flatten(1).numpy(), b.flatten(1).numpy(), strict=True):
        both = np.concatenate([aa, bb])
        values.append(structural_similarity(aa, bb, data_range=float(both.max() - both.min())))
    return torch.tensor(values)


def test_equal_to_quantus_given_its_ssim() -> None:
    quantus = pytest.importorskip("quantus")
    checkpoint, _ = load()
    x = checkpoint.prepare(load_split("test").images[:16])
    cam = camkit.GradCAM(checkpoint.model, "features.relu")
    result = cam.explain(x)
    y = result.classes
    assert y is not None

    def explain(model: object, inputs: np.ndarray, targets: np.ndarray, **kwargs: object
                ) -> np.ndarray:  # fmt: skip
        return cam.explain(torch.from_numpy(inputs), torch.from_numpy(targets)).maps.numpy()[
            :, None
        ]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = quantus.RandomLogit(num_classes=10, disable_warnings=True)(
            model=checkpoint.model, x_batch=x.numpy(), y_batch=y.numpy(),
            a_batch=result.maps.numpy()[:, None].copy(), explain_func=explain, device="cpu",
        )  # fmt: skip
    got = random_logit(checkpoint.model, x, cam, y, similarity=_quantus_ssim)
    np.testing.assert_allclose(got.values.numpy(), np.asarray(expected), rtol=1e-6, atol=1e-7)
    default = random_logit(checkpoint.model, x, cam, y)  # camkit's SSIM, over 2-D maps
    assert default.values.shape == (16,) and bool(
        ((default.values > -1) & (default.values <= 1)).all()
    )
