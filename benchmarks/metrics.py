"""camkit's metrics beside Quantus 0.6: seconds per batch for every family, in one run.

    python benchmarks/metrics.py                     # the MNIST net and resnet18, CPU
    python benchmarks/metrics.py --cases mnist --out /tmp/metrics.md

Each metric runs once in each library on the same model, batch and maps (Grad-CAM
at the case's layer), with the same amount of work (the same number of steps,
copies, patches; both given the maps, so neither computes them but where the
metric re-runs the explainer). Many metrics are bound by the model's forward
passes (or the explainer's re-runs), which no library can make faster: for those
the table also gives the time of the passes alone (the same rows in the same
batches camkit used, and the same number of explainer calls, run bare) and
camkit's time as a ratio to it. The table is printed and written to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

import camkit  # noqa: E402
from camkit import metrics as ck  # noqa: E402

Call = Callable[[], object]


@dataclass
class Setup:
    name: str
    model: nn.Module
    x: Tensor
    y: Tensor
    layer: str
    maps: Tensor
    masks: Tensor
    classes: int


@dataclass
class Entry:
    family: str
    metric: str
    ours: Call
    theirs: Call | None
    bound: bool  # by forward passes or the explainer's re-runs
    floor: Call | None = None  # work every library must also do, timed with the passes


class Counter:
    """Counts the rows of every forward pass outside the explainer, and the explainer's calls."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.rows: list[int] = []
        self.explains = 0
        self.inside = False

    def wrap(self, cam: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
        """``cam``, its calls counted and its forward passes left out of the rows."""

        def counted(x: Tensor, classes: Tensor) -> Tensor:
            self.explains += 1
            self.inside = True
            try:
                return cam(x, classes)
            finally:
                self.inside = False

        return counted

    def instrumented(self, explainer: camkit.Explainer) -> camkit.Explainer:
        """``explainer`` itself (so that a metric can read its forward pass's output), its
        ``explain`` calls counted alike."""
        inner = explainer.explain

        def explain(x: Tensor, classes: Tensor, **options: object) -> camkit.CAMResult:
            self.explains += 1
            self.inside = True
            try:
                return inner(x, classes, **options)
            finally:
                self.inside = False

        explainer.explain = explain  # type: ignore[method-assign]
        return explainer

    @contextlib.contextmanager
    def counting(self) -> Iterator[None]:
        self.rows, self.explains = [], 0

        def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            if not self.inside:
                self.rows.append(len(args[0]))

        handle = self.model.register_forward_pre_hook(hook)
        try:
            yield
        finally:
            handle.remove()


def build(name: str, images: int) -> Setup:
    torch.manual_seed(0)
    if name == "mnist":
        from examples.mnist.data import load_split
        from examples.mnist.train import load

        checkpoint, _ = load()
        model: nn.Module = checkpoint.model
        x = checkpoint.prepare(load_split("test").images[:images])
        layer, classes = "features.relu", 10
    else:
        import torchvision.models as tvm

        model = tvm.resnet18(weights=None)
        x = torch.randn(images, 3, 224, 224)
        layer, classes = "layer4", 1000
    model.eval()
    with torch.no_grad():
        y = model(x).argmax(1)
    maps = camkit.GradCAM(model, layer)(x, y)
    h, w = x.shape[2:]
    masks = torch.zeros(len(x), h, w, dtype=torch.bool)
    masks[:, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = True  # a centred box
    return Setup(name, model, x, y, layer, maps, masks, classes)


def entries(s: Setup, counter: Counter, quantus: object) -> list[Entry]:
    """Every metric, camkit's call and Quantus's, with the same parameters."""
    q = quantus
    model, x, y, maps, layer = s.model, s.x, s.y, s.maps, s.layer
    h, w = x.shape[2:]
    pixels = h * w
    a = maps.numpy()[:, None]
    # the robustness metrics are given the explainer itself, as evaluate() and the CLI give
    # it: they read each noisy copy's prediction from its forward pass
    explain = counter.instrumented(camkit.GradCAM(model, layer))

    def explain_quantus(model: nn.Module, inputs: np.ndarray, targets: np.ndarray,
                        **kwargs: object) -> np.ndarray:  # fmt: skip
        cam = camkit.GradCAM(model, layer)
        return cam(torch.from_numpy(inputs), torch.from_numpy(targets)).numpy()[:, None]

    common = {"model": model, "x_batch": x.numpy(), "y_batch": y.numpy(), "device": "cpu"}

    def theirs(metric: object, **extra: object) -> Call:
        def run() -> object:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                return metric(**{"a_batch": a.copy(), **common, **extra})  # type: ignore[operator]

        return run

    def ours(function: Callable[..., object], *args: object, **kwargs: object) -> Call:
        return lambda: function(*args, **kwargs)

    step = pixels // 8
    patch = h // 4
    # Quantus reads no representation off a torch.nn.Sequential (resnet18's layer4): its block
    inner = "layer4.1" if s.name == "resnet18" else layer
    slic = q.helpers.utils.get_superpixel_segments  # type: ignore[attr-defined]

    def segment() -> Tensor:  # Quantus's SLIC, which its IROF runs inside
        return torch.from_numpy(np.stack([
            slic(img=np.moveaxis(image, 0, -1).astype("double"), segmentation_method="slic")
            for image in x.numpy()
        ])).long()  # fmt: skip

    def irof_with_segments() -> object:
        return ck.irof(model, x, maps, y, segments=segment())

    tiles = torch.rand(len(x), 2 * h, 2 * w, generator=torch.Generator().manual_seed(0))
    quadrants = torch.rand(len(x), 4) > 0.5
    rows = [
        Entry("faithfulness", "Faithfulness Correlation",
          ours(ck.faithfulness_correlation, model, x, maps, y, runs=10, subset_size=step),
          theirs(q.FaithfulnessCorrelation(nr_runs=10, subset_size=step, disable_warnings=True)),
          True),
        Entry("faithfulness", "Faithfulness Estimate",
          ours(ck.faithfulness_estimate, model, x, maps, y, features_in_step=step),
          theirs(q.FaithfulnessEstimate(features_in_step=step, disable_warnings=True)), True),
        Entry("faithfulness", "Monotonicity (Arya)",
          ours(ck.monotonicity, model, x, maps, y, features_in_step=step),
          theirs(q.Monotonicity(features_in_step=step, disable_warnings=True)), True),
        Entry("faithfulness", "Monotonicity Correlation",
          ours(ck.monotonicity_correlation, model, x, maps, y, features_in_step=2 * step,
               samples=2),
          theirs(q.MonotonicityCorrelation(features_in_step=2 * step, nr_samples=2,
                                           disable_warnings=True)), True),
        Entry("faithfulness", "Pixel flipping / deletion",
          ours(ck.deletion, model, x, maps, y, step=step, baseline=float(x.min())),
          theirs(q.PixelFlipping(features_in_step=step, disable_warnings=True)), True),
        Entry("faithfulness", "Region perturbation",
          ours(ck.region_perturbation, model, x, maps, y, patch_size=patch, regions=8),
          theirs(q.RegionPerturbation(patch_size=patch, regions_evaluation=8,
                                      disable_warnings=True)), True),
        Entry("faithfulness", "Selectivity",
          ours(ck.selectivity, model, x, maps, y, patch_size=patch),
          theirs(q.Selectivity(patch_size=patch, disable_warnings=True)), True),
        Entry("faithfulness", "Sensitivity-n",
          ours(ck.sensitivity_n, model, x, maps, y, features_in_step=step),
          theirs(q.SensitivityN(features_in_step=step, disable_warnings=True)), True),
        Entry("faithfulness", "IROF (SLIC segments in both, and in the passes' time)",
          irof_with_segments, theirs(q.IROF(disable_warnings=True)), True, segment),
        Entry("faithfulness", "Infidelity",
          ours(ck.infidelity, model, x, maps, y, patch_sizes=(patch,)),
          theirs(q.Infidelity(perturb_patch_sizes=[patch], n_perturb_samples=1,
                              disable_warnings=True)), True),
        Entry("faithfulness", "ROAD (4 percentages; bound by its imputation)",
          ours(ck.road, model, x, maps, y, percentages=[20, 40, 60, 80]),
          theirs(q.ROAD(percentages=[20, 40, 60, 80], disable_warnings=True)), False),
        Entry("faithfulness", "Sufficiency", ours(ck.sufficiency, model, x, maps),
          theirs(q.Sufficiency(disable_warnings=True)), True),
        Entry("robustness", "Max-Sensitivity",
          ours(ck.max_sensitivity, model, x, explain, y, samples=4),
          theirs(q.MaxSensitivity(nr_samples=4, disable_warnings=True),
                 explain_func=explain_quantus), True),
        Entry("robustness", "Avg-Sensitivity",
          ours(ck.avg_sensitivity, model, x, explain, y, samples=4),
          theirs(q.AvgSensitivity(nr_samples=4, disable_warnings=True),
                 explain_func=explain_quantus), True),
        Entry("robustness", "Local Lipschitz Estimate",
          ours(ck.local_lipschitz_estimate, model, x, explain, y, samples=4),
          theirs(q.LocalLipschitzEstimate(nr_samples=4, disable_warnings=True),
                 explain_func=explain_quantus), True),
        Entry("robustness", "Continuity",
          ours(ck.continuity, model, x, explain, y, steps=4),
          theirs(q.Continuity(nr_steps=4, disable_warnings=True),
                 explain_func=explain_quantus), True),
        Entry("robustness", "Relative Input Stability",
          ours(ck.relative_input_stability, model, x, explain, y, samples=4),
          theirs(q.RelativeInputStability(nr_samples=4, disable_warnings=True),
                 explain_func=explain_quantus), True),
        Entry("robustness", "Relative Output Stability",
          ours(ck.relative_output_stability, model, x, explain, y, samples=4),
          theirs(q.RelativeOutputStability(nr_samples=4, disable_warnings=True),
                 explain_func=explain_quantus), True),
        Entry("robustness", "Relative Representation Stability",
          ours(ck.relative_representation_stability, model, x, explain, y, layer=inner,
               samples=4),
          theirs(q.RelativeRepresentationStability(nr_samples=4, layer_names=[inner],
                                                   disable_warnings=True),
                 explain_func=explain_quantus), True),
        Entry("robustness", "Consistency", ours(ck.consistency, model, x, maps, y),
          theirs(q.Consistency(disable_warnings=True)), True),
        Entry("localisation", "Pointing game", ours(ck.pointing_game, maps, s.masks, tolerance=0),
          theirs(q.PointingGame(disable_warnings=True), s_batch=s.masks.numpy()[:, None]), False),
        Entry("localisation", "Relevance mass accuracy (energy)",
          ours(ck.energy_pointing_game, maps, s.masks),
          theirs(q.RelevanceMassAccuracy(disable_warnings=True),
                 s_batch=s.masks.numpy()[:, None]), False),
        Entry("localisation", "AUC", ours(ck.auc, maps, s.masks),
          theirs(q.AUC(disable_warnings=True), s_batch=s.masks.numpy()[:, None]), False),
        Entry("localisation", "Relevance Rank Accuracy",
          ours(ck.relevance_rank_accuracy, maps, s.masks),
          theirs(q.RelevanceRankAccuracy(disable_warnings=True),
                 s_batch=s.masks.numpy()[:, None]), False),
        Entry("localisation", "Top-K Intersection",
          ours(ck.top_k_intersection, maps, s.masks, k=pixels // 10),
          theirs(q.TopKIntersection(k=pixels // 10, disable_warnings=True),
                 s_batch=s.masks.numpy()[:, None]), False),
        Entry("localisation", "Focus (2x2 mosaics)", ours(ck.focus, tiles, quadrants),
          theirs(q.Focus(disable_warnings=True), a_batch=tiles.numpy()[:, None],
                 x_batch=np.repeat(np.repeat(x.numpy(), 2, 2), 2, 3),
                 custom_batch=quadrants.int().numpy()), False),
        Entry("complexity", "Sparseness", ours(ck.sparseness, maps),
          theirs(q.Sparseness(disable_warnings=True)), False),
        Entry("complexity", "Complexity", ours(ck.complexity, maps),
          theirs(q.Complexity(disable_warnings=True)), False),
        Entry("complexity", "Effective Complexity", ours(ck.effective_complexity, maps),
          theirs(q.EffectiveComplexity(disable_warnings=True)), False),
        Entry("randomisation", "Random Logit",
          ours(ck.random_logit, model, x, explain, y, num_classes=s.classes),
          theirs(q.RandomLogit(num_classes=s.classes, disable_warnings=True),
                 explain_func=explain_quantus), True),
        Entry("randomisation", "MPRT (cascading, every layer; Spearman)",
          ours(ck.randomization_test, model,
               lambda m: counter.wrap(camkit.GradCAM(m, layer)), x, y, structural=False),
          theirs(q.MPRT(disable_warnings=True), explain_func=explain_quantus), True),
        Entry("randomisation", "Efficient MPRT",
          ours(ck.efficient_mprt, model,
               lambda m: counter.wrap(camkit.GradCAM(m, layer)), x, y),
          theirs(q.EfficientMPRT(disable_warnings=True), explain_func=explain_quantus), True),
    ]  # fmt: skip
    if s.name == "mnist":  # one pass per pixel: 50,176 passes of the batch on resnet18
        rows.append(Entry("axiomatic", "Non-Sensitivity",
                      ours(ck.non_sensitivity, model, x, maps, y),
                      theirs(q.NonSensitivity(disable_warnings=True)), True))  # fmt: skip
    return rows


def timed(call: Call, budget: float = 1.0) -> float:
    """The median seconds of repeated calls: at least 3, and more while under ``budget``
    seconds in all (at most 1,000: a call of a fraction of a millisecond needs many for a
    steady median); a call slower than ``budget`` runs once."""
    times: list[float] = []
    while not times or (len(times) < 1000 and (len(times) < 3 or sum(times) < budget)):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
        if times[0] > budget:
            break
    return statistics.median(times)


def passes_alone(s: Setup, rows: list[int], explains: int, floor: Call | None = None) -> float:
    """The same forward passes, and the same number of explainer calls, run bare (and the
    work ``floor`` every library must also do, such as IROF's segmentation)."""
    largest = max(rows, default=len(s.x))
    pool = s.x.repeat(-(-largest // len(s.x)), *([1] * (s.x.dim() - 1)))
    cam = camkit.GradCAM(s.model, s.layer)
    started = time.perf_counter()
    with torch.no_grad():
        for count in rows:
            s.model(pool[:count])
    for _ in range(explains):
        cam(s.x, s.y)
    if floor is not None:
        floor()
    return time.perf_counter() - started


def run(
    s: Setup,
    quantus: object,
    only: set[str] | None,
    names: list[str] | None = None,
    budget: float = 1.0,
) -> list[list[str]]:
    counter = Counter(s.model)
    table = []
    for entry in entries(s, counter, quantus):
        if only and entry.family not in only:
            continue
        if names and not any(name.lower() in entry.metric.lower() for name in names):
            continue
        with counter.counting():  # one call counted: its passes and explainer calls
            first = timed(entry.ours, budget=0.0)
        rows, explains = list(counter.rows), counter.explains
        ours = first if first > budget else timed(entry.ours, budget)
        try:
            theirs = f"{timed(entry.theirs, budget):.4f}" if entry.theirs is not None else ""
            ratio = f"{float(theirs) / ours:.1f}x" if theirs else ""
        except Exception as error:  # a peer's failure is a result
            theirs, ratio = f"fails: {type(error).__name__}", ""
            print(f"  Quantus {entry.metric}: {str(error)[:120]}", flush=True)
        bare = (
            timed(partial(passes_alone, s, rows, explains, entry.floor), budget)
            if entry.bound
            else 0.0
        )
        line = [
            entry.family, entry.metric, f"{ours:.4f}", theirs, ratio,
            f"{bare:.4f}" if entry.bound else "", f"{ours / bare:.2f}x" if entry.bound else "",
            f"{(ours - bare) * 1e3:.2f}" if entry.bound else "",
        ]  # fmt: skip
        print(" | ".join(line), flush=True)
        table.append(line)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=["mnist", "resnet18"])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--families", nargs="*", default=None)
    parser.add_argument("--budget", type=float, default=1.0,
                        help="seconds of repeats per timing: at least 3 calls while under it; "
                             "a call slower runs once")  # fmt: skip
    parser.add_argument("--metrics", nargs="*", default=None,
                        help="only these metrics (parts of their names); their rows replace "
                             "the same rows of an existing --out")  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results-metrics.md")
    parser.add_argument("--rst", type=Path, default=ROOT / "docs" / "metrics" / "benchmark.rst",
                        help="the docs' copy of the tables")  # fmt: skip
    parser.add_argument("--rst-only", action="store_true",
                        help="only write --rst from an existing --out")  # fmt: skip
    args = parser.parse_args()
    if args.rst_only:
        write_rst(args.out, args.rst)
        return
    import quantus

    if not hasattr(np, "trapz"):  # Quantus 0.6 calls np.trapz, which NumPy 2.4 removed
        np.trapz = np.trapezoid  # type: ignore[attr-defined]
    budget = f" --budget {args.budget:g}" if args.budget != 1.0 else ""
    lines = [
        "# camkit's metrics beside Quantus 0.6",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} CPU, torch "
        f"{torch.__version__}, {torch.get_num_threads()} CPU threads, quantus "
        f"{quantus.__version__}, one run each. Command: `python benchmarks/metrics.py "
        f"--cases {' '.join(args.cases)} --images {args.images}{budget}`. Seconds per batch of "
        f"{args.images}; *passes alone*: the forward passes camkit made (the same rows in "
        f"the same batches) and the explainer's re-runs, timed bare; a metric bound by them "
        f"cannot be faster than they are; *own (ms)*: camkit's time less the passes' (its "
        f"own arithmetic: building the perturbed copies, sorting, the statistics).",
    ]
    for name in args.cases:
        s = build(name, args.images)
        print(f"## {name}", flush=True)
        only = set(args.families) if args.families else None
        table = run(s, quantus, only, args.metrics, args.budget)
        if args.metrics:
            replace_rows(args.out, s, table, budget)
            continue
        lines += [
            "",
            f"## {name}: batch {args.images}, input {tuple(s.x.shape[1:])}, Grad-CAM maps at "
            f"`{s.layer}`",
            "",
            "| family | metric | camkit (s) | Quantus (s) | Quantus / camkit | passes alone (s) "
            "| camkit / passes | own (ms) |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in table]
    if not args.metrics:
        args.out.write_text("\n".join(lines) + "\n")
        print(f"wrote {args.out}")
    write_rst(args.out, args.rst)


def replace_rows(markdown: Path, s: Setup, table: list[list[str]], options: str) -> None:
    """Put ``table``'s rows in place of the same metrics' rows in ``s``'s table of
    ``markdown``, and say below that table when they were measured."""
    lines = markdown.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"## {s.name}:"))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    fresh = {row[1]: "| " + " | ".join(row) + " |" for row in table}
    for i in range(start, end):
        cells = [c.strip() for c in lines[i].strip("|").split("|")]
        if lines[i].startswith("| ") and len(cells) > 1 and cells[1] in fresh:
            lines[i] = fresh.pop(cells[1])
    if fresh:
        raise SystemExit(f"no rows named {sorted(fresh)} in {markdown}'s {s.name} table")
    note = (
        f"Re-measured {time.strftime('%Y-%m-%d')} (`--cases {s.name} --metrics ...{options}`): "
        + ", ".join(row[1] for row in table)
        + "."
    )
    last = max(i for i in range(start, end) if lines[i].startswith("| "))
    lines.insert(last + 1, "")
    lines.insert(last + 2, note)
    markdown.write_text("\n".join(lines) + "\n")
    print(f"updated {len(table)} rows of {markdown}")


def write_rst(markdown: Path, rst: Path) -> None:
    """The Markdown tables of ``markdown`` as the docs' csv-tables."""
    blocks, title, header, rows = [], "", [], []

    def flush() -> None:
        if header and rows:
            blocks.append(
                f".. csv-table:: {title} (``python benchmarks/metrics.py``)\n"
                f"   :header: {', '.join(repr_cell(h) for h in header)}\n\n"
                + "\n".join("   " + ", ".join(repr_cell(c) for c in row) for row in rows)
            )

    for line in markdown.read_text().splitlines():
        if line.startswith("## "):
            flush()
            title, header, rows = line[3:].replace("`", "``"), [], []
        elif line.startswith("| ") and not line.startswith("| ---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not header:
                header = cells
            else:
                rows.append(cells)
    flush()
    rst.parent.mkdir(parents=True, exist_ok=True)
    rst.write_text("\n\n".join(blocks) + "\n")
    print(f"wrote {rst}")


def repr_cell(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


if __name__ == "__main__":
    main()
