"""Occlusion sensitivity: equal to MONAI's maps, to a hand-derived value, and batched alike.

MONAI's map is the score under occlusion (lower is more important); camkit's signed,
unscaled map is the unoccluded score minus it. MONAI explains one sample at a time, so
camkit's batch of two is compared with two MONAI calls.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

import camkit
from camkit.errors import CamkitValueError
from camkit.methods.occlusion import blend_weights, gaussian_fill, occlusion_windows
from camkit.testing import assert_model_unchanged, model_state

# MONAI 1.6 indexes with lists of slices, which torch warns about (and still allows)
pytestmark = pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")

EPS = torch.finfo(torch.float32).eps


def net_2d(channels: int = 1) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(4 * 6 * 6, 5),
    ).eval()  # fmt: skip


def net_3d() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv3d(1, 3, 3), nn.ReLU(), nn.MaxPool3d(2), nn.Flatten(), nn.Linear(3 * 4 * 4 * 4, 4),
    ).eval()  # fmt: skip


def monai_maps(model: nn.Module, x: Tensor, classes: list[int], **options: object) -> Tensor:
    """MONAI's occlusion map of each sample's class, one MONAI call per sample (MONAI is
    the integrations extra: without it the tests that call this fail, not skip)."""
    from monai.visualize import OcclusionSensitivity

    occlusion = OcclusionSensitivity(model, verbose=False, **options)
    rows = []
    for sample, c in zip(x, classes, strict=True):
        sensitivity, _ = occlusion(sample[None])
        rows.append(sensitivity[0, c].as_tensor())
    return torch.stack(rows)


def tolerance(model: nn.Module, x: Tensor) -> float:
    """float32 rounding of a score, summed over the windows' weighted mean: eps times the
    largest logit magnitude and the inputs' sum that feeds it, with room for the blend."""
    with torch.no_grad():
        magnitude = float(model(x).abs().max()) + float(x.abs().sum())
    return 16 * EPS * magnitude


FILL_CASES = [
    ("gaussian", 0.6, None),
    ("mean_img", 0.5, None),
    (0.25, 0.0, None),
    ("gaussian", 0.6, "softmax"),
]


@pytest.mark.parametrize(("fill", "overlap", "activation"), FILL_CASES)
def test_equal_to_monai_in_2d(fill: str | float, overlap: float, activation: str | None) -> None:
    channels = 3 if activation else 1  # MONAI's activate picks softmax by the input's channels
    model = net_2d(channels)
    torch.manual_seed(1)
    x = torch.randn(2, channels, 14, 14)
    classes = [1, 3]
    occlusion = camkit.OcclusionSensitivity(
        model, mask_size=5, overlap=overlap, fill=fill, activation=activation, batch_size=7
    )
    result = occlusion.explain(x, classes, relu=False, normalize=False)
    theirs = monai_maps(
        model, x, classes, mask_size=5, overlap=overlap, mode=fill, activate=activation is not None
    )
    expected = result.scores[:, None, None] - theirs
    torch.testing.assert_close(result.maps, expected, rtol=0, atol=tolerance(model, x))


def reference(model: nn.Module, x: Tensor, c: int, hide: Callable[[Tensor], Tensor]) -> Tensor:
    """Constant-blend occlusion of one sample, a window at a time (mask 5, stride 2 on
    14 x 14: corners 0, 2, ..., 8, 9): the mean of the covering windows' scores."""
    total, count = torch.zeros(14, 14), torch.zeros(14, 14)
    with torch.no_grad():
        for top, left in itertools.product([0, 2, 4, 6, 8, 9], repeat=2):
            copy = x.clone()
            window = copy[:, :, top : top + 5, left : left + 5]
            window.copy_(hide(window))
            total[top : top + 5, left : left + 5] += model(copy)[0, c]
            count[top : top + 5, left : left + 5] += 1
    return total / count


def test_mean_patch_fills_with_the_mean_where_monai_multiplies_by_it() -> None:
    """MONAI 1.6's ``mean_patch`` unpacks ``constant_occlusion``'s ``(mul, add)`` as
    ``(add, mul)``: it multiplies each window by its mean instead of filling it with it."""
    model = net_2d(1)
    torch.manual_seed(1)
    x = torch.randn(1, 1, 14, 14)
    ours = camkit.OcclusionSensitivity(model, mask_size=5, overlap=0.6, fill="mean_patch")
    result = ours.explain(x, 3, relu=False, normalize=False)
    filled = reference(model, x, 3, lambda w: torch.full_like(w, float(w.mean())))
    atol = tolerance(model, x)
    torch.testing.assert_close(result.maps[0], result.scores[0] - filled, rtol=0, atol=atol)
    theirs = monai_maps(model, x, [3], mask_size=5, overlap=0.6, mode="mean_patch", activate=False)
    multiplied = reference(model, x, 3, lambda w: w * float(w.mean()))
    torch.testing.assert_close(theirs[0], multiplied, rtol=0, atol=atol)
    assert not torch.allclose(filled, multiplied, atol=1e-3)


def test_equal_to_monai_on_a_volume() -> None:
    model = net_3d()
    torch.manual_seed(2)
    x = torch.randn(2, 1, 10, 10, 10)
    occlusion = camkit.OcclusionSensitivity(model, mask_size=(4, 3, 4), overlap=0.5)
    result = occlusion.explain(x, [0, 2], relu=False, normalize=False)
    theirs = monai_maps(model, x, [0, 2], mask_size=(4, 3, 4), overlap=0.5, activate=False)
    expected = result.scores[:, None, None, None] - theirs
    torch.testing.assert_close(result.maps, expected, rtol=0, atol=tolerance(model, x))


def test_monai_applies_the_sigmoid_to_a_multi_class_model_with_one_input_channel() -> None:
    """The defect the docstring states: MONAI's ``activate=True`` reads the input's channels."""
    model = net_2d(1)
    x = torch.randn(1, 1, 14, 14)
    theirs = monai_maps(model, x, [1], mask_size=5, overlap=0.5, mode=0.0, activate=True)
    sigmoid = camkit.OcclusionSensitivity(
        model, mask_size=5, overlap=0.5, fill=0.0, activation="sigmoid"
    ).explain(x, 1, relu=False, normalize=False)
    torch.testing.assert_close(
        sigmoid.maps, sigmoid.scores[:, None, None] - theirs, rtol=0, atol=tolerance(model, x)
    )
    softmax = camkit.OcclusionSensitivity(
        model, mask_size=5, overlap=0.5, fill=0.0, activation="softmax"
    ).explain(x, 1, relu=False, normalize=False)
    assert not torch.allclose(softmax.scores[:, None, None] - softmax.maps, theirs, atol=1e-3)


class Weighted(nn.Module):
    """Score c is ``sum(w_c * x)``: hiding a window with 0 drops it by the window's share."""

    def __init__(self, weights: Tensor) -> None:
        super().__init__()
        self.weights = nn.Parameter(weights, requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("nchw,kchw->nk", x, self.weights)


def test_a_hand_derived_map_on_a_linear_model() -> None:
    torch.manual_seed(3)
    weights = torch.randn(2, 1, 6, 6, dtype=torch.float64)
    model = Weighted(weights)
    x = torch.randn(2, 1, 6, 6, dtype=torch.float64)
    occlusion = camkit.OcclusionSensitivity(model, mask_size=(3, 2), stride=(2, 1), fill=0.0)
    maps = occlusion.explain(x, [0, 1], relu=False, normalize=False).maps
    # rows start at 0, 2, 3 (the last moved back to end at 6); columns at 0, 1, ..., 4
    contribution = (x[:, 0] * weights[[0, 1], 0]).double()
    expected = torch.zeros(2, 6, 6, dtype=torch.float64)
    covering = torch.zeros(6, 6, dtype=torch.float64)
    for top, left in itertools.product([0, 2, 3], range(5)):
        drop = contribution[:, top : top + 3, left : left + 2].sum((1, 2))
        expected[:, top : top + 3, left : left + 2] += drop[:, None, None]
        covering[top : top + 3, left : left + 2] += 1
    torch.testing.assert_close(maps.double(), expected / covering, rtol=1e-5, atol=1e-5)


def test_the_windows_cover_every_position_and_end_at_the_border() -> None:
    assert occlusion_windows([6], [3], [2]) == [(0,), (2,), (3,)]
    assert occlusion_windows([4, 4], [4, 2], [4, 2]) == [(0, 0), (0, 2)]
    for size, mask, stride in itertools.product(range(1, 12), range(1, 6), range(1, 6)):
        if mask > size or stride > mask:
            continue
        covered = torch.zeros(size)
        for (start,) in occlusion_windows([size], [mask], [stride]):
            assert 0 <= start <= size - mask
            covered[start : start + mask] += 1
        assert bool((covered > 0).all()), (size, mask, stride)


def test_the_gaussian_fill_and_blend_weights() -> None:
    fill = gaussian_fill((5, 5))
    assert float(fill[2, 2]) == 0 and float(fill.max()) == 1 == float(fill[0, 0])
    torch.testing.assert_close(fill, fill.T)
    assert bool((gaussian_fill((1,)) == 0).all())
    weights = blend_weights((7,), "gaussian")
    assert int(weights.argmax()) == 3 and float(weights.min()) >= 1e-3
    assert bool((blend_weights((3, 2), "constant") == 1).all())


def test_the_default_rows_per_pass_follow_the_input_size() -> None:
    """batch_size=None (the default) runs as many copies as hold 2 Mi values: 8 of 64 cubed."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv3d(1, 3, 3), nn.ReLU(), nn.AdaptiveAvgPool3d(2), nn.Flatten(), nn.Linear(24, 4)
    ).eval()
    rows: list[int] = []
    handle = model.register_forward_pre_hook(lambda _, args: rows.append(len(args[0])))
    x = torch.randn(2, 1, 64, 64, 64)
    try:
        maps = camkit.OcclusionSensitivity(model, mask_size=32, stride=16).explain(
            x, [0, 1], relu=False, normalize=False
        )
    finally:
        handle.remove()
    assert rows[0] == 2 and max(rows[1:]) == 8 and sum(rows[1:]) == 2 * 27  # 3 x 3 x 3 windows
    fixed = camkit.OcclusionSensitivity(model, mask_size=32, stride=16, batch_size=54)
    atol = tolerance(model, x)
    torch.testing.assert_close(
        fixed.explain(x, [0, 1], relu=False, normalize=False).maps, maps.maps, rtol=0, atol=atol
    )


def test_the_batch_size_and_the_batch_do_not_change_the_maps() -> None:
    model = net_3d()
    x = torch.randn(3, 1, 10, 10, 10)
    one = camkit.OcclusionSensitivity(model, mask_size=4, stride=3, batch_size=1)
    many = camkit.OcclusionSensitivity(model, mask_size=4, stride=3, batch_size=50)
    raw = {"relu": False, "normalize": False}
    together = many.explain(x, [0, 1, 2], **raw).maps
    atol = tolerance(model, x)
    torch.testing.assert_close(one.explain(x, [0, 1, 2], **raw).maps, together, rtol=0, atol=atol)
    alone = torch.cat([many.explain(x[i : i + 1], [i], **raw).maps for i in range(3)])
    torch.testing.assert_close(alone, together, rtol=0, atol=atol)
    assert together.shape == (3, 10, 10, 10)
    scaled = many(x, [0, 1, 2])
    assert float(scaled.amin()) >= 0 and float(scaled.flatten(1).amax(1).min()) == 1
    torch.testing.assert_close(scaled, camkit_scaled(together.clamp_min(0)))


def camkit_scaled(maps: Tensor) -> Tensor:
    low = maps.flatten(1).amin(1).view(-1, 1, 1, 1)
    high = maps.flatten(1).amax(1).view(-1, 1, 1, 1)
    return (maps - low) / (high - low)


def test_several_targets_per_sample_and_a_video_clip() -> None:
    torch.manual_seed(4)
    model = nn.Sequential(
        nn.Conv3d(3, 2, (1, 3, 3)), nn.ReLU(), nn.AdaptiveAvgPool3d((4, 1, 1)), nn.Flatten(),
        nn.Linear(8, 3),
    ).eval()  # fmt: skip
    clip = torch.randn(2, 3, 4, 8, 8)  # (N, C, T, H, W): a window of one frame
    occlusion = camkit.OcclusionSensitivity(model, mask_size=(1, 4, 4), stride=(1, 2, 2))
    both = occlusion.explain(clip, torch.tensor([[0, 2], [1, 2]]), relu=False, normalize=False)
    assert both.maps.shape == (2, 2, 4, 8, 8)
    first = occlusion.explain(clip, [0, 1], relu=False, normalize=False).maps
    torch.testing.assert_close(both.maps[:, 0], first, rtol=0, atol=1e-6)


def test_bad_options_are_refused_and_the_model_is_untouched() -> None:
    model = net_2d()
    before = model_state(model)
    x = torch.randn(1, 1, 14, 14)
    refusals = {
        "mask_size": lambda: camkit.OcclusionSensitivity(model, mask_size=0),
        "overlap": lambda: camkit.OcclusionSensitivity(model, overlap=1.0),
        "stride": lambda: camkit.OcclusionSensitivity(model, 4, stride=(1, 2, 3))(x),
        "fill": lambda: camkit.OcclusionSensitivity(model, fill="zeros"),
        "blend": lambda: camkit.OcclusionSensitivity(model, blend="max"),
        "activation": lambda: camkit.OcclusionSensitivity(model, activation="relu"),
        "batch_size": lambda: camkit.OcclusionSensitivity(model, batch_size=0),
    }
    for name, make in refusals.items():
        with pytest.raises(CamkitValueError, match=f"^{name}: got"):
            make()
    with pytest.raises(CamkitValueError, match=r"mask_size: got \[16, 16\] for an input"):
        camkit.OcclusionSensitivity(model)(x)
    with pytest.raises(CamkitValueError, match=r"stride: got .* at most the window's side"):
        camkit.OcclusionSensitivity(model, 3, stride=4)(x)
    with pytest.raises(CamkitValueError, match="activation: 'softmax' applies to class targets"):
        camkit.OcclusionSensitivity(model, 4, activation="softmax")(x, lambda out: out[:, 0])
    assert_model_unchanged(before, model_state(model))


def test_the_progress_bar_counts_the_batches_and_changes_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = net_2d()
    x = torch.randn(2, 1, 14, 14)
    occlusion = camkit.OcclusionSensitivity(model, mask_size=5, stride=3, batch_size=10)
    quiet = occlusion(x, [0, 1])
    shown = occlusion(x, [0, 1], progress=True)
    assert torch.equal(quiet, shown)
    windows = len(occlusion.windows((14, 14))[1])  # 4 x 4: corners 0, 3, 6, 9
    assert windows == 16
    assert "4/4" in capsys.readouterr().err  # 32 copies in batches of 10
