"""SS-CAM and IS-CAM, Score-CAM with smoothed masks, against their formulas."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camkit import (
    FEM,
    ISCAM,
    KPCACAM,
    SSCAM,
    CamkitValueError,
    FinerCAM,
    RandomCAM,
    SmoothGradCAMPlusPlus,
)
from tests.method_cases import CLASSES, SHAPES, raw_maps, reference
from tests.models import conv_net

# --- SS-CAM and IS-CAM ---


def _smoothed_score_cam_reference(
    model: nn.Module, x: Tensor, samples: int, vary: Any, classes: Tensor = CLASSES
) -> Tensor:
    a, _ = reference(model, "4", x, classes)
    n, c = a.shape[:2]
    mode = {3: "linear", 4: "bilinear", 5: "trilinear"}[x.dim()]
    totals = torch.zeros(n, c, classes.shape[1], dtype=torch.float64)
    with torch.no_grad():
        for s in range(samples):
            masks = []
            for i in range(n):
                for ch in range(c):
                    up = F.interpolate(a[i, ch][None, None].float(), size=x.shape[2:], mode=mode)
                    up = up[0, 0].double()
                    masks.append((up - up.min()) / (up.max() - up.min()))
            varied = vary(torch.stack(masks), s)  # every mask of sample s, in row order
            for i in range(n):
                for ch in range(c):
                    masked = (x[i] * varied[i * c + ch].float())[None]
                    totals[i, ch] += model(masked)[0].double()[classes[i]]
    weights = torch.softmax(totals / samples, dim=1)  # (n, c, k)
    return torch.einsum("nck,nc...->nk...", weights, a)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_ss_cam_matches_its_formula(dims: int) -> None:
    model = conv_net(dims)
    x = torch.randn(SHAPES[dims])
    generator = torch.Generator().manual_seed(11)

    def noisy(masks: Tensor, s: int) -> Tensor:
        return masks + 0.7 * torch.randn(masks.shape, generator=generator).double()

    expected = _smoothed_score_cam_reference(model, x, 3, noisy)
    cam = SSCAM(model, "4", samples=3, noise_std=0.7, seed=11, batch_size=10)  # one batch
    torch.testing.assert_close(raw_maps(cam, x), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_is_cam_matches_its_formula(dims: int) -> None:
    model = conv_net(dims)
    x = torch.randn(SHAPES[dims])
    samples = 4

    def scaled(masks: Tensor, s: int) -> Tensor:
        return masks * sum(j / samples for j in range(1, s + 2))

    expected = _smoothed_score_cam_reference(model, x, samples, scaled)
    cam = ISCAM(model, "4", samples=samples, batch_size=3)
    torch.testing.assert_close(raw_maps(cam, x), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda m: SSCAM(m, "4", samples=0), "samples: got 0"),
        (lambda m: SSCAM(m, "4", noise_std=-1.0), "noise_std: got -1.0"),
        (lambda m: SSCAM(m, "4", seed=1.5), "seed: got 1.5"),
        (lambda m: ISCAM(m, "4", samples=True), "samples: got True"),
        (lambda m: SmoothGradCAMPlusPlus(m, "4", noise_std=float("nan")), "noise_std: got nan"),
        (lambda m: RandomCAM(m, "4", seed="0"), "seed: got '0'"),
        (lambda m: FEM(m, "4", k=-2), "k: got -2"),
        (lambda m: FinerCAM(m, "4", similar=0), "similar: got 0"),
        (lambda m: KPCACAM(m, "4", kernel="laplacian"), "kernel: got 'laplacian'"),
        (lambda m: KPCACAM(m, "4", gamma=0), "gamma: got 0"),
    ],
)
def test_new_method_options_are_checked(make: Any, message: str) -> None:
    with pytest.raises(CamkitValueError, match=message):
        make(conv_net(2))
