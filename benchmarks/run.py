"""Benchmark camkit against a plain no-grad forward, and against its peers.

    python benchmarks/run.py                 # all cases, CPU, 2 threads
    python benchmarks/run.py --cases mnist --repeats 30
    python benchmarks/run.py --device cuda   # with a GPU: also checks CUDA maps == CPU maps

For each case (model, input, layer, targets) the script times, interleaved in
rounds so that machine drift hits everything equally, a plain ``torch.no_grad()``
forward and every explainer; it reports the median time per call as a ratio to
the forward's. Peak memory is the peak resident-set increase during one call
in a fresh process (the forward measured the same way), also as a ratio.
Everything is printed as a Markdown table and written to ``--out``.
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


def memory_worker(case_name: str, explainer: str, device: str) -> None:
    """In a fresh process: peak RSS increase (KiB) of one call, printed as JSON."""
    torch.set_num_threads(2)
    case = build_case(case_name, device)
    calls = {FORWARD: case.forward, **camkit_calls(case), **peer_calls(case)}
    call = calls[explainer]
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed memory back, so the call's shows
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    before = _rss_kib()
    call()
    print(json.dumps({"increase_kib": _hwm_kib() - before}))


def measure_memory(case_name: str, explainer: str, device: str, runs: int = 3) -> float:
    """Median over ``runs`` fresh processes of one call's peak RSS increase, in MiB."""
    values = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, __file__, "--memory-worker", case_name, explainer, "--device", device],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        values.append(float(json.loads(out.stdout.strip().splitlines()[-1])["increase_kib"]))
    return statistics.median(values) / 1024


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure_time(
    case: Case, calls: dict[str, object], repeats: int, device: str, after: dict[str, object]
) -> dict[str, float]:
    """Median seconds per call, interleaved rounds after one warm-up round."""
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
    return {name: statistics.median(values) for name, values in samples.items()}


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
        f"### Score-CAM / Ablation-CAM scaling: 32x32 inputs, a layer of C = {channels} channels",
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


def check_cuda(case_name: str) -> float:
    """Largest difference between camkit Grad-CAM maps on CUDA and on the CPU."""
    cpu = build_case(case_name, "cpu")
    gpu = build_case(case_name, "cuda")
    gpu.model.load_state_dict(cpu.model.state_dict())
    import camkit

    a = camkit.GradCAM(cpu.model, cpu.layer, layout=cpu.layout)(cpu.x, cpu.classes)
    b = camkit.GradCAM(gpu.model, gpu.layer, layout=gpu.layout)(gpu.x.to("cuda"), cpu.classes)
    return float((a - b.cpu()).abs().max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["mnist", "resnet50", "vit_b_16"])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory processes")
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results.md")
    parser.add_argument("--memory-worker", nargs=2, metavar=("CASE", "EXPLAINER"))
    args = parser.parse_args(argv)
    if args.memory_worker:
        memory_worker(*args.memory_worker, args.device)
        return 0
    torch.set_num_threads(args.threads)
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.processor() or platform.machine()}, "
        f"{args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"median of {args.repeats} interleaved rounds after a warm-up; memory: peak RSS "
        f"increase of one call in a fresh process (median of 3). Command: "
        f"`python benchmarks/run.py {' '.join(argv if argv is not None else sys.argv[1:])}`.",
        "",
    ]
    for case_name in args.cases:
        case = build_case(case_name, args.device)
        calls = camkit_calls(case)
        peers = {} if args.no_peers else peer_calls(case)
        clear = {name: (lambda m=case.model: m.zero_grad(set_to_none=True)) for name in peers}
        times = measure_time(case, {**calls, **peers}, args.repeats, args.device, clear)
        lines += [
            f"### {case_name}: batch {len(case.x)}, input {tuple(case.x.shape[1:])}, "
            f"layer `{case.layer}`",
            "",
            "| explainer | ms per call | time / forward | peak MiB | memory / forward |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        forward_mem = (
            None
            if args.no_memory or args.device != "cpu"
            else measure_memory(case_name, FORWARD, args.device)
        )
        for name, seconds in times.items():
            ratio = seconds / times[FORWARD]
            mem_cells = ["", ""]
            if forward_mem is not None:
                mem = (
                    forward_mem if name == FORWARD else measure_memory(case_name, name, args.device)
                )
                mem_cells = [f"{mem:.0f}", f"{mem / forward_mem:.2f}x"]
            lines.append(
                f"| {name} | {1000 * seconds:.1f} | {ratio:.2f}x | " + " | ".join(mem_cells) + " |"
            )
            print(lines[-1], flush=True)
        if args.device == "cuda":
            lines += ["", f"CUDA maps vs CPU maps, max difference: {check_cuda(case_name):.2e}"]
        lines.append("")
    if "mnist" in args.cases and args.device == "cpu":
        lines += scaling_lines(args.repeats)
    text = "\n".join(lines)
    print(text)
    args.out.write_text("# Benchmark results\n\n" + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
