"""Benchmark camkit against a plain no-grad forward, and against its peers.

    python benchmarks/run.py                 # all cases, CPU, 2 threads
    python benchmarks/run.py --cases mnist --repeats 30
    python benchmarks/run.py --device cuda   # with a GPU: also checks CUDA maps == CPU maps

For each case (model, input, layer, targets) the script times, interleaved in
rounds so that machine drift hits everything equally, a plain ``torch.no_grad()``
forward and every explainer; it reports the median time per call as a ratio to
the forward's, with the quartiles of the per-round ratios as a measure of noise.
Peak memory, also as a ratio, is on the CPU the peak resident-set increase
during one call in a fresh process, after one warm-up call of the same
explainer in that process (the forward measured the same way); the first, cold
call's increase is reported beside it, because it also counts library code
paged in on first use (a one-time cost of the process, not memory the call
holds). On CUDA it is the peak of allocated device memory during one warm
call. Everything is printed as a Markdown table and written to ``--out``.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.cases import Case, build_case, camkit_calls, peer_calls  # noqa: E402

FORWARD = "no-grad forward"


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _hwm_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def _reset_peak() -> int:
    """Hand freed heap memory back to the system, reset the peak (VmHWM); return RSS in KiB."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    return _rss_kib()


def memory_worker(case_name: str, explainer: str, device: str) -> None:
    """In a fresh process: peak RSS increase (KiB) of a cold and of a warm call, as JSON."""
    torch.set_num_threads(2)
    case = build_case(case_name, device)
    calls = {FORWARD: case.forward, **camkit_calls(case), **peer_calls(case)}
    call = calls[explainer]
    increases = []
    for _ in range(2):  # the first call is cold: it also pages in library code
        before = _reset_peak()
        call()
        increases.append(_hwm_kib() - before)
        case.model.zero_grad(set_to_none=True)  # peers that fill .grad start each call alike
    print(json.dumps({"first_kib": increases[0], "increase_kib": increases[1]}))


def measure_memory(
    case_name: str, explainer: str, device: str, runs: int = 3
) -> tuple[float, float]:
    """Medians over ``runs`` fresh processes of the warm and the cold call's peak RSS
    increase, in MiB."""
    warm, cold = [], []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, __file__, "--memory-worker", case_name, explainer, "--device", device],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        warm.append(float(result["increase_kib"]))
        cold.append(float(result["first_kib"]))
    return statistics.median(warm) / 1024, statistics.median(cold) / 1024


def measure_cuda_memory(call: object) -> float:
    """Peak CUDA memory allocated during one (warm) call, above what was allocated before, MiB."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    call()  # type: ignore[operator]
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure_time(
    case: Case, calls: dict[str, object], repeats: int, device: str, after: dict[str, object]
) -> dict[str, list[float]]:
    """Seconds per call in each of ``repeats`` interleaved rounds, after one warm-up round."""
    everything = {FORWARD: case.forward, **calls}
    samples: dict[str, list[float]] = {name: [] for name in everything}
    for round_index in range(repeats + 1):
        for name, call in everything.items():
            _sync(device)
            started = time.perf_counter()
            call()  # type: ignore[operator]
            _sync(device)
            if round_index:
                samples[name].append(time.perf_counter() - started)
            if name in after:
                after[name]()  # type: ignore[operator]
    return samples


def ratio_quartiles(samples: list[float], forward: list[float]) -> tuple[float, float]:
    """First and third quartile of the per-round time ratios: the spread behind the median."""
    ratios = [t / f for t, f in zip(samples, forward, strict=True)]
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    return q1, q3


def scaling_lines(repeats: int) -> list[str]:
    """Score-CAM and Ablation-CAM: cost against the number of forward passes, N x C / batch_size."""
    import camkit

    torch.manual_seed(0)
    channels = 64
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, channels, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(4),
        torch.nn.Flatten(),
        torch.nn.Linear(16 * channels, 10),
    ).eval()
    lines = [
        f"## Score-CAM / Ablation-CAM scaling: 32x32 inputs, a layer of C = {channels} channels",
        "",
        "Forward passes are batched: N x C masked (or ablated) copies, `batch_size` per pass.",
        "",
        "| method | N | batch_size | forward passes | ms per call | ms per pass |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for method in (camkit.ScoreCAM, camkit.AblationCAM):
        for batch_size in (32, 128):
            for n in (2, 8, 32):
                x = torch.randn(n, 3, 32, 32)
                cam = method(model, "1", batch_size=batch_size)
                cam(x, 0)
                times = []
                for _ in range(max(3, repeats // 3)):
                    started = time.perf_counter()
                    cam(x, 0)
                    times.append(time.perf_counter() - started)
                passes = -(-n * channels // batch_size)
                ms = 1000 * statistics.median(times)
                lines.append(
                    f"| {method.__name__} | {n} | {batch_size} | {passes} | {ms:.1f} | "
                    f"{ms / passes:.2f} |"
                )
    return [*lines, ""]


CUDA_METHODS = ("GradCAM", "GradCAMPlusPlus", "XGradCAM", "HiResCAM", "LayerCAM", "EigenCAM")
CUDA_TOLERANCE = 1e-3


def cuda_check_lines(case_name: str) -> list[str]:
    """Every camkit method's maps on CUDA against the same maps on the CPU, as table lines.

    TF32 is switched off during the check, so both devices compute in float32;
    the maps are scaled to [0, 1], so the tolerance is absolute.
    """
    import camkit

    cpu, gpu = build_case(case_name, "cpu"), build_case(case_name, "cuda")
    gpu.model.load_state_dict(cpu.model.state_dict())
    names = CUDA_METHODS + (("ScoreCAM", "AblationCAM") if case_name == "mnist" else ())
    lines = [
        "| camkit method, CUDA vs CPU | max abs difference of the maps | within "
        f"{CUDA_TOLERANCE:g} |",
        "| --- | ---: | --- |",
    ]
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        for name in names:
            method = getattr(camkit, name)
            on_cpu = method(cpu.model, cpu.layer, layout=cpu.layout)(cpu.x, cpu.classes)
            on_gpu = method(gpu.model, gpu.layer, layout=gpu.layout)(gpu.x, cpu.classes)
            if on_gpu.device.type != "cuda" or on_gpu.dtype != torch.float32:
                raise RuntimeError(f"{name}: maps on {on_gpu.device}, {on_gpu.dtype}")
            difference = float((on_cpu - on_gpu.cpu()).abs().max())
            verdict = "yes" if difference <= CUDA_TOLERANCE else "**no**"
            lines.append(f"| {name} | {difference:.2e} | {verdict} |")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    return lines


def _machine(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} CPU"


def _table_head(device: str, with_memory: bool) -> list[str]:
    memory = (
        []
        if not with_memory
        else ["peak MiB", "memory / forward", "first call MiB", "first call / forward"]
        if device == "cpu"
        else ["peak CUDA MiB", "memory / forward"]
    )
    head = ["explainer", "ms per call", "time / forward", "quartiles of rounds", *memory]
    return ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["mnist", "resnet50", "vit_b_16"])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory processes")
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument(
        "--out", type=Path, help="default: benchmarks/results.md, or results-cuda.md on CUDA"
    )
    parser.add_argument("--memory-worker", nargs=2, metavar=("CASE", "EXPLAINER"))
    args = parser.parse_args(argv)
    if args.memory_worker:
        memory_worker(*args.memory_worker, args.device)
        return 0
    torch.set_num_threads(args.threads)
    memory_note = (
        "memory: peak RSS increase of one warm call in a fresh process, and of the first "
        "(cold) call, medians of 3 processes"
        if args.device == "cpu"
        else "memory: peak CUDA memory allocated during one warm call"
    )
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {_machine(args.device)}, torch "
        f"{torch.__version__}, {torch.get_num_threads()} CPU threads, median of {args.repeats} "
        f"interleaved rounds after a warm-up (the quartiles of the per-round time ratios show "
        f"the spread); {memory_note}. Command: "
        f"`{' '.join(['python benchmarks/run.py', *(sys.argv[1:] if argv is None else argv)])}`.",
        "",
    ]
    for case_name in args.cases:
        case = build_case(case_name, args.device)
        calls = camkit_calls(case)
        peers = {} if args.no_peers else peer_calls(case)
        clear = {name: (lambda m=case.model: m.zero_grad(set_to_none=True)) for name in peers}
        rounds = measure_time(case, {**calls, **peers}, args.repeats, args.device, clear)
        times = {name: statistics.median(values) for name, values in rounds.items()}
        lines += [
            f"## {case_name}: batch {len(case.x)}, input {tuple(case.x.shape[1:])}, "
            f"layer `{case.layer}`",
            "",
            *_table_head(args.device, with_memory=not args.no_memory),
        ]
        everything = {FORWARD: case.forward, **calls, **peers}
        memory: dict[str, tuple[float, ...]] = {}
        for name, seconds in times.items():  # the forward comes first
            if args.no_memory:
                memory[name] = ()
            elif args.device == "cpu":
                memory[name] = measure_memory(case_name, name, args.device)
            else:
                memory[name] = (measure_cuda_memory(everything[name]),)
                case.model.zero_grad(set_to_none=True)
            q1, q3 = ratio_quartiles(rounds[name], rounds[FORWARD])
            cells = [f"{1000 * seconds:.1f}", f"{seconds / times[FORWARD]:.2f}x"]
            cells.append(f"{q1:.2f}x to {q3:.2f}x")
            for column, mib in enumerate(memory[name]):
                cells += [f"{mib:.1f}", f"{mib / memory[FORWARD][column]:.2f}x"]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
        if args.device == "cuda" and case.boxes is None:
            lines += ["", *cuda_check_lines(case_name)]
        lines.append("")
    if "mnist" in args.cases and args.device == "cpu":
        lines += scaling_lines(args.repeats)
    text = "\n".join(lines)
    print(text)
    out = args.out or ROOT / "benchmarks" / (
        "results.md" if args.device == "cpu" else "results-cuda.md"
    )
    out.write_text("# Benchmark results\n\n" + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
