"""Activation methods beyond Eigen-CAM and CAM, each against an independent computation:
FEM, KPCA-CAM, and the Random-CAM baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from camkit import (
    FEM,
    KPCACAM,
    RandomCAM,
)
from tests.method_cases import CLASSES, SHAPES, raw_maps, reference
from tests.models import conv_net

# --- FEM ---


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("k", [0.0, 1.0, 2.0])
def test_fem_weights_are_the_fraction_of_strong_responses(dims: int, k: float) -> None:
    model = conv_net(dims)
    x = torch.randn(SHAPES[dims])
    a, _ = reference(model, "4", x)
    raw = raw_maps(FEM(model, "4", k=k), x)
    for i in range(len(x)):
        flat = a[i].flatten(1).numpy()
        threshold = flat.mean(axis=1) + k * flat.std(axis=1)
        weights = (flat > threshold[:, None]).mean(axis=1)
        expected = torch.einsum("c,c...->...", torch.from_numpy(weights), a[i])
        for t in range(CLASSES.shape[1]):
            torch.testing.assert_close(raw[i, t], expected, rtol=1e-5, atol=1e-7)


# --- Random-CAM ---


def test_random_cam_weights_are_uniform_on_minus_one_one() -> None:
    # 64 (rectified, so independent) channels on a 16 x 16 grid: each raw map is
    # sum_c w_c A^c, so least squares on the channels recovers every sample's weights
    model = nn.Sequential(
        nn.Conv2d(2, 64, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 256, 10)
    )
    x = torch.randn(8, 2, 16, 16)
    classes = torch.arange(10).expand(8, 10)
    raw = raw_maps(RandomCAM(model, "1", seed=3), x, classes)
    a = model[:2](x).detach().double()
    weights = torch.stack(
        [torch.linalg.lstsq(a[i].flatten(1).T, raw[i].flatten(1).T).solution.T for i in range(8)]
    )  # (8, 10, 64)
    flat = weights.flatten()
    assert float(flat.min()) >= -1 - 1e-4 and float(flat.max()) <= 1 + 1e-4
    assert abs(float(flat.mean())) < 0.05
    assert abs(float(flat.var()) - 1 / 3) < 0.03
    assert not torch.allclose(weights[0, 0], weights[0, 1])  # per target
    assert not torch.allclose(weights[0, 0], weights[1, 0])  # per sample


def test_random_cam_seed_fixes_the_maps() -> None:
    model = conv_net(2)
    x = torch.randn(SHAPES[2])
    first = RandomCAM(model, "4", seed=0)(x)
    torch.testing.assert_close(RandomCAM(model, "4", seed=0)(x), first)
    assert not torch.allclose(RandomCAM(model, "4", seed=1)(x), first)


# --- KPCA-CAM ---


def _kernel(rows: np.ndarray, kernel: str, gamma: float) -> np.ndarray:
    n = len(rows)
    out = np.zeros((n, n))
    for p in range(n):
        for q in range(n):
            a, b = rows[p], rows[q]
            if kernel == "sigmoid":
                out[p, q] = np.tanh(gamma * a @ b + 1.0)
            elif kernel == "rbf":
                out[p, q] = np.exp(-gamma * ((a - b) ** 2).sum())
            elif kernel == "poly":
                out[p, q] = (gamma * a @ b + 1.0) ** 3
            elif kernel == "cosine":
                norm = np.linalg.norm(a) * np.linalg.norm(b)
                out[p, q] = a @ b / norm if norm > 0 else 0.0
            else:
                out[p, q] = a @ b
    return out


@pytest.mark.parametrize("kernel", ["sigmoid", "rbf", "poly", "cosine", "linear"])
def test_kpca_cam_is_the_first_kernel_principal_component(kernel: str) -> None:
    model = conv_net(2)
    x = torch.randn(2, 2, 8, 6)
    a, _ = reference(model, "4", x)
    raw = raw_maps(KPCACAM(model, "4", kernel=kernel), x)
    for i in range(len(x)):
        rows = a[i].flatten(1).T.numpy()
        rows = rows - rows.mean(axis=0)
        k = _kernel(rows, kernel, 1.0 / rows.shape[1])
        ones = np.full_like(k, 1.0 / len(k))
        centred = k - ones @ k - k @ ones + ones @ k @ ones
        values, vectors = np.linalg.eigh(centred)
        projection = vectors[:, -1] * np.sqrt(max(values[-1], 0.0))
        if projection[np.abs(projection).argmax()] < 0:
            projection = -projection
        expected = torch.from_numpy(projection).view(a.shape[2:])
        for t in range(CLASSES.shape[1]):
            torch.testing.assert_close(raw[i, t], expected, rtol=1e-4, atol=1e-6)


def test_kpca_cam_with_the_linear_kernel_is_centred_pca() -> None:
    model = conv_net(2)
    x = torch.randn(2, 2, 8, 6)
    a, _ = reference(model, "4", x)
    raw = raw_maps(KPCACAM(model, "4", kernel="linear"), x)
    for i in range(len(x)):
        rows = a[i].flatten(1).T.numpy()
        rows = rows - rows.mean(axis=0)
        _, _, vt = np.linalg.svd(rows, full_matrices=False)
        projection = rows @ vt[0]
        if projection[np.abs(projection).argmax()] < 0:
            projection = -projection
        torch.testing.assert_close(
            raw[i, 0], torch.from_numpy(projection).view(a.shape[2:]), rtol=1e-4, atol=1e-6
        )
