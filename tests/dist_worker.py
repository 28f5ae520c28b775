"""A dataset run for the tests, in its own process (killed mid-way, or under torchrun).

python tests/dist_worker.py explain OUT N [KILL_AT] [METHOD]
python tests/dist_worker.py evaluate OUT.pt N
python tests/dist_worker.py twice OUT N      (two stores, OUT/first and OUT/second, then evaluate)
python tests/dist_worker.py exchange OUT.json N  (N rounds of gather, each rank's own size)
"""

from __future__ import annotations

import json
import os
import signal
import sys
from functools import partial
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import camkit
from camkit._store.fingerprints import sampled_positions
from camkit.metrics import average_drop, deletion, evaluate
from examples.mnist.model import MnistNet

BATCH_SIZE = 4
SHARD_BATCHES = 2


class Digits(Dataset[tuple[Tensor, Tensor]]):
    """``n`` seeded random 28x28 images and labels; reading sample ``kill_at`` for its
    batch kills the process with SIGKILL (no cleanup, no exception handler runs). The
    store's dataset fingerprint reads some samples before the batches: that read is spared."""

    def __init__(self, n: int, kill_at: int | None = None) -> None:
        generator = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 1, 28, 28, generator=generator)
        self.y = torch.randint(0, 10, (n,), generator=generator)
        self.kill_at = kill_at
        self.spared = int(kill_at in sampled_positions(n))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if index == self.kill_at and self.spared:
            self.spared -= 1
            return self.x[index], self.y[index]
        if index == self.kill_at and not self.spared:
            os.kill(os.getpid(), signal.SIGKILL)
        return self.x[index], self.y[index]


def model() -> MnistNet:
    torch.manual_seed(0)
    return MnistNet().eval()


def explain(out: str, n: int, kill_at: int | None = None, method: str = "GradCAM") -> None:
    cam = getattr(camkit, method)(model(), "features.relu")
    loader = DataLoader(Digits(n, kill_at), batch_size=BATCH_SIZE)
    camkit.explain_dataset(
        cam, loader, out, target="label", shard_batches=SHARD_BATCHES, progress=False
    )


def metrics(n: int) -> dict[str, camkit.metrics.MetricResult]:
    net = model()
    return evaluate(
        net,
        camkit.GradCAM(net, "features.relu"),
        DataLoader(Digits(n), batch_size=BATCH_SIZE),
        {"drop": average_drop, "deletion": partial(deletion, step=98)},
        progress=False,
    )


if __name__ == "__main__":
    torch.set_num_threads(1)
    mode, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "explain":
        kill_at = int(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[4] != "-" else None
        explain(out, n, kill_at, *(sys.argv[5:6]))
    elif mode == "twice":  # one script, several dataset calls: one process group for all
        explain(os.path.join(out, "first"), n)
        explain(os.path.join(out, "second"), n, None, "LayerCAM")
        results = metrics(n)
        if int(os.environ.get("RANK", "0")) == 0:
            torch.save({k: r.values for k, r in results.items()}, os.path.join(out, "metrics.pt"))
    elif mode == "exchange":
        from camkit._engine.distributed import gather, process_group

        with process_group() as team:
            mine = [{"rank": team.rank, "round": i, "bytes": bytes(team.rank * 70_001 + i)}
                    for i in range(n)]  # fmt: skip
            rounds = [gather(team, value) for value in mine]
        if team.main:  # the bytes as hex, for JSON
            Path(out).write_text(json.dumps([[{**v, "bytes": v["bytes"].hex()} for v in r]
                                             for r in rounds]))  # fmt: skip
    else:
        results = metrics(n)
        if int(os.environ.get("RANK", "0")) == 0:
            torch.save({k: (r.values, r.summary, r.curves) for k, r in results.items()}, out)
