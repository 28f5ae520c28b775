"""compare: candidates side by side with bootstrap intervals, ranks, ties, and a baseline."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import camkit
from camkit.errors import CamkitValueError
from camkit.metrics import MetricResult, RandomMaps, compare, deletion, evaluate, insertion
from camkit.metrics.comparison import BASELINE
from examples.mnist.data import load_split
from examples.mnist.train import load


@pytest.fixture(scope="module")
def mnist() -> tuple[nn.Module, DataLoader[tuple[Tensor, ...]]]:
    checkpoint, _ = load()
    test = load_split("test")
    data = TensorDataset(checkpoint.prepare(test.images[:96]), test.labels[:96])
    return checkpoint.model, DataLoader(data, batch_size=32)


METRICS = {"deletion": partial(deletion, step=56), "insertion": partial(insertion, step=56)}


@pytest.fixture(scope="module")
def result(mnist: tuple[nn.Module, DataLoader[tuple[Tensor, ...]]]) -> camkit.metrics.Comparison:
    model, loader = mnist
    candidates = {
        "Grad-CAM": camkit.GradCAM(model, "features.relu"),
        "Grad-CAM again": camkit.GradCAM(model, "features.relu"),  # the same maps: a tie
        "Grad-CAM at conv1": camkit.GradCAM(model, "features.conv1"),
    }
    return compare(model, loader, candidates, METRICS, progress=False, resamples=400)


def test_each_cell_is_what_evaluate_computes(
    result: camkit.metrics.Comparison, mnist: tuple[nn.Module, DataLoader[tuple[Tensor, ...]]]
) -> None:
    model, loader = mnist
    assert result.candidates == ["Grad-CAM", "Grad-CAM again", "Grad-CAM at conv1", BASELINE]
    direct = evaluate(model, camkit.GradCAM(model, "features.relu"), loader, METRICS,
                      progress=False)  # fmt: skip
    for metric in METRICS:
        cell = result.cells["Grad-CAM", metric]
        assert cell.mean == pytest.approx(direct[metric].summary, rel=1e-12)
        assert cell.low <= cell.mean <= cell.high
        baseline = evaluate(model, RandomMaps(0), loader, {metric: METRICS[metric]},
                            progress=False)[metric]  # fmt: skip
        assert result.cells[BASELINE, metric].mean == pytest.approx(baseline.summary, rel=1e-12)


def test_ranks_follow_the_means_and_identical_candidates_tie(
    result: camkit.metrics.Comparison,
) -> None:
    for metric in METRICS:
        ranking = result.ranking(metric)
        means = [result.cells[c, metric].mean for c in ranking]
        higher = result.higher_is_better[metric]
        assert means == sorted(means, reverse=higher)
        first, again = result.cells["Grad-CAM", metric], result.cells["Grad-CAM again", metric]
        assert first.mean == again.mean and first.rank == again.rank  # cannot be told apart
        assert result.cells[ranking[0], metric].rank == 1
    assert result.higher_is_better == {"deletion": False, "insertion": True}
    # the trained network's last conv layer beats random maps on deletion
    assert result.cells["Grad-CAM", "deletion"].rank < result.cells[BASELINE, "deletion"].rank


def test_intervals_shrink_to_the_value_for_a_constant_metric() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).eval()
    data = [(torch.rand(8, 1, 4, 4), torch.zeros(8, dtype=torch.long))] * 2

    def constant(model: nn.Module, x: Tensor, maps: Tensor, classes: Tensor) -> MetricResult:
        return camkit.metrics._common.summarize("constant", torch.full((len(x),), 0.25))

    out = compare(model, data, {"a": RandomMaps(1)}, {"c": constant}, better={"c": "lower"},
                  progress=False, resamples=50)  # fmt: skip
    cell = out.cells["a", "c"]
    assert (cell.mean, cell.low, cell.high, cell.rank) == (0.25, 0.25, 0.25, 1)
    assert out.cells[BASELINE, "c"].rank == 1  # equal values: a tie


def test_table_csv_json_and_figure(result: camkit.metrics.Comparison, tmp_path: Path) -> None:
    rows = result.table()
    assert len(rows) == len(result.candidates) * len(result.metrics)
    with open(result.to_csv(tmp_path / "t.csv")) as handle:
        read = list(csv.DictReader(handle))
    assert [r["candidate"] for r in read] == [r["candidate"] for r in rows]
    assert float(read[0]["mean"]) == pytest.approx(rows[0]["mean"])
    saved = json.loads(result.to_json(tmp_path / "t.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(rows)) and saved["resamples"] == 400
    figure = result.plot(tmp_path / "t.png")
    assert len(figure.axes) == len(result.metrics) and (tmp_path / "t.png").stat().st_size > 0


def test_clear_errors() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).eval()
    data = [(torch.rand(4, 1, 4, 4), torch.zeros(4, dtype=torch.long))]
    cam = RandomMaps(0)

    def unknown(model: nn.Module, x: Tensor, maps: Tensor, classes: Tensor) -> MetricResult:
        raise AssertionError("not called")

    with pytest.raises(CamkitValueError, match="does not know whether higher or lower"):
        compare(model, data, {"a": cam}, {"mine": unknown}, progress=False)
    with pytest.raises(CamkitValueError, match="better: got 'up'"):
        compare(model, data, {"a": cam}, {"mine": unknown}, better={"mine": "up"}, progress=False)
    with pytest.raises(CamkitValueError, match="the baseline's name"):
        compare(model, data, {BASELINE: cam}, {"deletion": deletion}, progress=False)
    with pytest.raises(CamkitValueError, match="resamples: got 5"):
        compare(model, data, {"a": cam}, {"deletion": deletion}, resamples=5, progress=False)


def test_ranks_compare_with_the_best_of_the_group_not_a_chain() -> None:
    # three candidates 0.3 apart, each sample's value noisy with std 1 (its own noise): next
    # neighbours cannot be told apart on 40 samples, the two ends (0.6 apart) can
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
    x = torch.rand(40, 1, 2, 2)

    def constant(level: float) -> Callable[[Tensor, Tensor], Tensor]:
        return lambda inputs, classes: torch.full((len(inputs), 2, 2), level)

    def noisy(model: torch.nn.Module, inputs: Tensor, maps: Tensor, classes: Tensor
              ) -> camkit.metrics.MetricResult:  # fmt: skip
        level = float(maps[0, 0, 0])
        noise = torch.randn(len(inputs), generator=torch.Generator().manual_seed(int(level * 10)))
        return camkit.metrics.MetricResult("noisy", level + noise.double(), 0.0)

    out = camkit.metrics.compare(
        model, [x], {"a": constant(0.9), "b": constant(0.6), "c": constant(0.3)},
        {"noisy": noisy}, better={"noisy": "higher"}, baseline=False, progress=False,
    )  # fmt: skip
    cells = {name: out.cells[name, "noisy"] for name in "abc"}
    assert [cells[n].rank for n in "abc"] == [1, 1, 3]
    # the steps the rule looked at: a-b tied, a-c told apart (checked by hand, paired)
    draws = torch.randint(0, 40, (1000, 40), generator=torch.Generator().manual_seed(0))
    # and b-c tied: the old rule, each against the one above, chained c to rank 1
    for best, other, apart in (("a", "b", False), ("a", "c", True), ("b", "c", False)):
        difference = cells[best].values[draws].mean(1) - cells[other].values[draws].mean(1)
        low = torch.quantile(difference, torch.tensor(0.025, dtype=torch.float64))
        assert bool(low > 0) == apart


def test_a_metric_of_whole_batches_is_resampled_over_the_batches(
    mnist: tuple[nn.Module, DataLoader[tuple[Tensor, ...]]],
) -> None:
    """Sensitivity-n is one correlation per batch (and per n): evaluate keeps a row per batch,
    compare bootstraps those rows, beside a per-sample metric resampled over the samples."""
    from camkit.metrics import sensitivity_n

    model, loader = mnist
    small = DataLoader(loader.dataset, batch_size=16)  # 96 samples: 6 batches
    metrics = {"sensitivity_n": partial(sensitivity_n, features_in_step=98),
               "deletion": METRICS["deletion"]}  # fmt: skip
    cam = camkit.GradCAM(model, "features.relu")
    found = evaluate(model, cam, small, metrics, progress=False)
    direct = []
    for x, _ in small:
        classes = model(x).argmax(1)
        direct.append(metrics["sensitivity_n"](model, x, cam(x, classes), classes).values)
    assert found["sensitivity_n"].unit == "batch" and found["deletion"].unit == "sample"
    torch.testing.assert_close(found["sensitivity_n"].values, torch.stack(direct))
    assert found["sensitivity_n"].summary == pytest.approx(float(torch.stack(direct).mean()))
    result = compare(model, small, {"Grad-CAM": cam}, metrics, progress=False, resamples=200)
    cell = result.cells["Grad-CAM", "sensitivity_n"]
    torch.testing.assert_close(cell.values, torch.stack(direct).double().nanmean(dim=1))
    assert cell.low <= cell.mean <= cell.high and cell.low < cell.high
    assert len(result.cells["Grad-CAM", "deletion"].values) == 96
    rows = {(r["candidate"], r["metric"]): r for r in result.table()}
    assert rows["Grad-CAM", "sensitivity_n"]["unit"] == "batch"
    assert rows["Grad-CAM", "sensitivity_n"]["samples"] == 6
    assert rows["Grad-CAM", "deletion"]["unit"] == "sample"
    with pytest.raises(CamkitValueError, match="scores whole batches"):
        compare(model, DataLoader(loader.dataset, batch_size=96), {"Grad-CAM": cam},
                {"sensitivity_n": metrics["sensitivity_n"]}, progress=False)  # fmt: skip


def test_the_baseline_map_of_a_sample_depends_on_the_sample_and_the_seed_alone() -> None:
    """So a comparison's baseline is the same whatever the batches, their order, or the number
    of processes sharing them."""
    x = torch.rand(6, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    classes = torch.zeros(6, dtype=torch.long)
    whole = RandomMaps(3)(x, classes)
    assert whole.shape == (6, 5, 7) and float(whole.min()) >= 0 and float(whole.max()) <= 1
    parts = torch.cat([RandomMaps(3)(x[i : i + 2], classes[:2]) for i in (4, 0, 2)])
    torch.testing.assert_close(parts, whole[[4, 5, 0, 1, 2, 3]], rtol=0, atol=0)
    assert not torch.equal(RandomMaps(4)(x, classes), whole)
    assert not torch.equal(whole[0], whole[1])  # different samples, different maps


def test_every_candidate_is_compared_on_the_samples_all_are_defined_on(tmp_path: Path) -> None:
    """A candidate whose value is undefined (NaN) on the hard samples is not credited with
    its easy ones alone: every candidate is compared where all are defined. Here "blank"
    has NaN on the 10 samples where "steady" scores 0, and both score the same elsewhere:
    compared on those 30, they tie (left out for "blank" alone, it would lead, 1.0 to 0.75)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).eval()
    x = torch.rand(40, 1, 2, 2)
    noise = torch.randn(40, generator=torch.Generator().manual_seed(0)).double() * 0.1

    def level(value: float) -> Callable[[Tensor, Tensor], Tensor]:
        return lambda inputs, classes: torch.full((len(inputs), 2, 2), value)

    def scored(model: nn.Module, inputs: Tensor, maps: Tensor, classes: Tensor) -> MetricResult:
        hard = torch.arange(40) < 10
        values = 1.0 + noise
        if float(maps[0, 0, 0]) == 0.5:  # "blank": undefined on the hard samples
            values = values.masked_fill(hard, float("nan"))
        else:  # "steady": 0 on the hard samples
            values = values.masked_fill(hard, 0.0)
        return MetricResult("scored", values, 0.0)

    out = compare(model, [x], {"blank": level(0.5), "steady": level(0.25)}, {"s": scored},
                  better={"s": "higher"}, baseline=False, progress=False)  # fmt: skip
    blank, steady = out.cells["blank", "s"], out.cells["steady", "s"]
    assert out.compared == {"s": 30} and out.coverage("s") == (30, 40)
    expected = float((1.0 + noise[10:]).mean())
    assert blank.mean == pytest.approx(expected, rel=1e-12) and steady.mean == blank.mean
    assert blank.rank == steady.rank == 1
    assert int(blank.values.isnan().sum()) == 10 and not bool(steady.values.isnan().any())
    rows = {row["candidate"]: row for row in out.table()}
    assert (rows["blank"]["samples"], rows["steady"]["samples"]) == (30, 40)
    assert rows["blank"]["compared"] == rows["steady"]["compared"] == 30
    figure = out.plot()
    assert "30 of 40 samples" in figure.axes[0].get_title()

    # nothing defined everywhere: NaN means and intervals, and no candidate ranked above another
    def nothing(model: nn.Module, inputs: Tensor, maps: Tensor, classes: Tensor) -> MetricResult:
        values = torch.full((len(inputs),), float("nan"), dtype=torch.float64)
        return MetricResult("nothing", values.masked_fill(maps[:, 0, 0] == 0.25, 1.0), 0.0)

    out = compare(model, [x], {"blank": level(0.5), "steady": level(0.25)}, {"n": nothing},
                  better={"n": "higher"}, baseline=False, progress=False)  # fmt: skip
    assert out.compared == {"n": 0}
    for name in ("blank", "steady"):
        cell = out.cells[name, "n"]
        assert cell.rank == 1 and all(v != v for v in (cell.mean, cell.low, cell.high))


def test_a_real_metric_undefined_for_blank_maps_leaves_those_samples_out_for_all(
    mnist: tuple[nn.Module, DataLoader[tuple[Tensor, ...]]],
) -> None:
    """Faithfulness correlation is undefined (NaN) for a constant map: a candidate whose maps
    are blank on some images is compared with the others on the rest only."""
    from camkit.metrics import faithfulness_correlation

    model, loader = mnist
    cam = camkit.GradCAM(model, "features.relu")

    def blank_on_odd_rows(x: Tensor, classes: Tensor) -> Tensor:
        maps = cam(x, classes)
        maps[1::2] = 0.0
        return maps

    metric = {"correlation": partial(faithfulness_correlation, runs=20, seed=0)}
    out = compare(model, loader, {"Grad-CAM": cam, "half blank": blank_on_odd_rows}, metric,
                  progress=False, resamples=100)  # fmt: skip
    assert out.compared["correlation"] == 48  # of 96: the odd rows of each batch of 32
    whole = out.cells["Grad-CAM", "correlation"].values
    assert not bool(whole.isnan().any())
    assert out.cells["Grad-CAM", "correlation"].mean == pytest.approx(
        float(whole[0::2].mean()), rel=1e-12
    )
