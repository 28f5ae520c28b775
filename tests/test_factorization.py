"""Deep Feature Factorization: planted concepts are found, the objective falls, the model
is left as it was."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from camkit import CamkitTypeError, CamkitValueError, DeepFeatureFactorization
from camkit.plot import concepts as draw_concepts
from tests.helpers import assert_untouched, snapshot


def planted(n: int = 4, size: int = 6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Non-negative activations ``W0 @ H0`` with 3 concepts, each on its own channels and its
    own block of positions (so the factorization is unique up to order and scale; some
    positions are empty, so no channel is shifted)."""
    torch.manual_seed(0)
    w0 = torch.zeros(8, 3)  # 8 channels, 3 concepts, each on its own channels
    w0[:3, 0], w0[3:6, 1], w0[6:, 2] = 1 + torch.rand(3), 1 + torch.rand(3), 1 + torch.rand(2)
    h0 = torch.zeros(3, n, size, size)
    h0[0, :, :2, :2] = 1.0 + torch.rand(n, 2, 2)
    h0[1, :, 2:4, 2:] = 1.0 + torch.rand(n, 2, 4)
    h0[2, :, 4:, :3] = 1.0 + torch.rand(n, 2, 3)
    x = (w0 @ h0.flatten(1)).view(8, n, size, size).transpose(0, 1).contiguous()
    return x, w0, h0


def identity_net() -> nn.Sequential:
    """The layer ("0") outputs the input itself, so the input is the activations."""
    return nn.Sequential(nn.Identity(), nn.Flatten(), nn.Linear(8 * 36, 2)).eval()


def test_planted_concepts_are_found() -> None:
    x, _, h0 = planted()
    found = DeepFeatureFactorization(identity_net(), "0", concepts=3, iterations=500).factorize(x)
    assert found.error < 1e-2
    assert found.maps.shape == (4, 3, 6, 6)
    # each planted concept's positions match one found map's (up to order and scale)
    planted_maps = h0.transpose(0, 1).flatten(2)  # (N, 3, P)
    for k in range(3):
        values = planted_maps[:, k]
        truth = (values / values.amax(dim=1, keepdim=True)).flatten()  # scaled per image
        overlap = [
            float(torch.corrcoef(torch.stack([truth, found.maps[:, j].flatten()]))[0, 1])
            for j in range(3)
        ]
        assert max(overlap) > 0.99, overlap


def test_more_iterations_never_raise_the_error() -> None:
    x, _, _ = planted()
    x = x + 0.05 * torch.rand_like(x)  # not exactly of rank 3
    errors = [
        DeepFeatureFactorization(identity_net(), "0", concepts=2, iterations=i).factorize(x).error
        for i in (1, 5, 25, 125)
    ]
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < errors[0]


def test_concepts_head_maps_and_scaling() -> None:
    x, _, _ = planted()
    head = nn.Linear(8, 5)
    found = DeepFeatureFactorization(identity_net(), "0", concepts=3, head=head, seed=1).factorize(
        x
    )
    assert found.concepts.shape == (8, 3)
    assert found.scores is not None
    torch.testing.assert_close(found.scores, head(found.concepts.T))
    flat = found.maps.flatten(2)
    torch.testing.assert_close(flat.amax(2), torch.ones(4, 3))
    torch.testing.assert_close(flat.amin(2), torch.zeros(4, 3))
    again = DeepFeatureFactorization(identity_net(), "0", concepts=3, head=head, seed=1).factorize(
        x
    )
    torch.testing.assert_close(again.maps, found.maps)  # seeded: the same concepts


def test_upsampled_to_the_input_and_model_untouched() -> None:
    model = nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 36, 3))
    model.train()
    x = torch.randn(5, 1, 8, 8)
    before = snapshot(model, x)
    found = DeepFeatureFactorization(model, "1", concepts=2).factorize(x)
    assert found.maps.shape == (5, 2, 8, 8)
    assert DeepFeatureFactorization(model, "1", concepts=2).factorize(
        x, upsample=False
    ).maps.shape == (
        5,
        2,
        6,
        6,
    )
    assert_untouched(before, snapshot(model, x))


def test_bad_requests_are_refused() -> None:
    model = identity_net()
    x, _, _ = planted()
    with pytest.raises(CamkitValueError, match="concepts: got 9; the layer has only 8"):
        DeepFeatureFactorization(model, "0", concepts=9).factorize(x)
    with pytest.raises(CamkitValueError, match="concepts: got 0"):
        DeepFeatureFactorization(model, "0", concepts=0)
    with pytest.raises(CamkitTypeError, match="layer: got 2 layers"):
        DeepFeatureFactorization(model, ["0", "1"])  # type: ignore[arg-type]
    with pytest.raises(CamkitTypeError, match="head: got int"):
        DeepFeatureFactorization(model, "0", head=3)  # type: ignore[arg-type]


def test_concepts_plot_colours_each_concept() -> None:
    import matplotlib

    matplotlib.use("Agg")
    maps = torch.zeros(2, 4, 4)
    maps[0, :2] = 1.0
    maps[1, 2:] = 1.0
    ax = draw_concepts(torch.zeros(4, 4), maps, labels=["top", "bottom"], alpha=1.0)
    shown = ax.get_images()[0].get_array()
    assert tuple(shown[0, 0]) != tuple(shown[3, 0])  # two colours
    with pytest.raises(CamkitValueError, match="labels: got 1 for 2 concepts"):
        draw_concepts(torch.zeros(4, 4), maps, labels=["one"])


def test_explain_picks_for_each_class_the_concept_that_votes_most_for_it() -> None:
    """As an explainer, each sample's map for class c is the map of the concept whose head
    score for c is largest (checked against factorize), with the model's own scores."""
    x, _, _ = planted()
    torch.manual_seed(0)
    head = nn.Linear(8, 2)  # the model's two classes
    dff = DeepFeatureFactorization(identity_net(), "0", concepts=3, head=head, seed=1)
    found = dff.factorize(x)
    classes = torch.tensor([[0, 1], [1, 0], [1, 1], [0, 0]])
    result = dff.explain(x, classes)
    votes = head(found.concepts.T).detach()  # (concepts, classes)
    assert votes.argmax(0).unique().numel() == 2  # the two classes pick different concepts
    for i in range(len(x)):
        for j in range(2):
            best = int(votes[:, classes[i, j]].argmax())
            torch.testing.assert_close(result.maps[i, j], found.maps[i, best])
    torch.testing.assert_close(result.scores, result.output.gather(1, classes))
    assert torch.equal(dff(x, classes[:, 0]), result.maps[:, 0])


def test_explain_needs_a_head_and_class_targets() -> None:
    x, _, _ = planted()
    model = identity_net()
    before = snapshot(model)
    with pytest.raises(CamkitValueError, match=r"^head: Deep Feature Factorization explains"):
        DeepFeatureFactorization(model, "0", concepts=2)(x, 1)
    with_head = DeepFeatureFactorization(model, "0", concepts=2, head=nn.Linear(8, 2))
    with pytest.raises(CamkitTypeError, match=r"^target: Deep Feature Factorization picks"):
        with_head(x, lambda out: out[:, 0])
    with pytest.raises(CamkitValueError, match=r"^differentiable: DeepFeatureFactorization"):
        with_head(x, 1, differentiable=True)
    assert_untouched(before, snapshot(model))
