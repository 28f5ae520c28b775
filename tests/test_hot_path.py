"""What a call computes with: torch only, on the input's device, no host copies, and
one read of a value per forward pass (each read makes the host wait for a GPU).

Every torch function a call runs is recorded through a TorchFunctionMode; the
maps must come about without ``.cpu()``, ``.numpy()``, ``.tolist()``, ``.item()``
or a move to another device, and without numpy anywhere in the computation.
(A class-index tensor given as target is checked on the host: N integers, read
once before the forward pass; the targets here are a list.) On a CPU-only
machine a move "to the CPU" cannot be told from staying put; that part is
covered where CUDA is present by ``tests/test_devices.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
import torch

import camkit
from examples.mnist.model import MnistNet
from tests.helpers import MNIST_EXPLAINERS, READS, Recorder

HOST = {"Tensor.cpu", "TensorBase.cpu", "Tensor.numpy", "TensorBase.numpy"}
HOST |= {"Tensor.tolist", "TensorBase.tolist", "Tensor.item", "TensorBase.item"}
# The documented minimum: one read per forward pass of the input (the finite check), the
# check of Ablation-CAM's split, and which channels Score-CAM and IS-CAM need not run (see
# docs/reliability.rst).
PASSES = {"GuidedGradCAM": 2, "AblationCAM": 2, "ScoreCAM": 2, "ISCAM": 2}


def _devices_named(args: tuple[Any, ...], kwargs: dict[str, Any]) -> set[str]:
    named = set()
    for value in (*args[1:], *kwargs.values()):
        if isinstance(value, torch.device):
            named.add(value.type)
        elif isinstance(value, str):
            named.add(torch.device(value).type)
        elif isinstance(value, torch.Tensor):
            named.add(value.device.type)
    return named


@pytest.mark.parametrize("name", list(MNIST_EXPLAINERS))
def test_a_call_makes_no_host_copies(name: str) -> None:
    model = MnistNet().eval()
    x = torch.randn(3, 1, 28, 28)
    recorder = Recorder()
    with recorder:
        maps = MNIST_EXPLAINERS[name](model)(x, [[1, 2]] * 3)
    assert maps.device == x.device
    names = [called for called, _, _ in recorder.calls]
    assert len(names) > 20  # the recorder saw the call's work
    assert not HOST & set(names), sorted(HOST & set(names))
    for called, args, kwargs in recorder.calls:
        if called.endswith(".to"):
            assert _devices_named(args, kwargs) <= {x.device.type}, (called, args, kwargs)


@pytest.mark.parametrize("name", list(MNIST_EXPLAINERS))
@pytest.mark.parametrize("target", [None, 4, [[1, 2]] * 3], ids=["predicted", "int", "k=2"])
def test_a_successful_call_reads_the_device_once_per_pass(name: str, target: Any) -> None:
    model = MnistNet().eval()
    recorder = Recorder()
    with recorder:
        MNIST_EXPLAINERS[name](model)(torch.randn(3, 1, 28, 28), target)
    reads = [called for called, _, _ in recorder.calls if called.split(".")[-1] in READS]
    assert len(reads) == PASSES.get(name, 1), reads


def test_recorder_sees_every_kind_of_read() -> None:
    recorder = Recorder()
    t = torch.ones(3)
    with recorder:
        bool(t.sum() > 0), int(t[0]), float(t[0]), t.nonzero(), [0, 1][t[0].long()]
    reads = [called for called, _, _ in recorder.calls if called.split(".")[-1] in READS]
    assert len(reads) == 5, reads


def test_recorder_would_see_a_host_copy() -> None:
    recorder = Recorder()
    with recorder:
        torch.ones(2).cpu().tolist()
    assert {"TensorBase.cpu", "TensorBase.tolist"} <= {name for name, _, _ in recorder.calls}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_numpy_in_the_computation() -> None:
    package = Path(camkit.__file__).parent
    users = {
        p.relative_to(package).as_posix() for p in package.rglob("*.py") if "numpy" in _imports(p)
    }
    # plot draws with matplotlib; numpy arrays are accepted as targets (the Target type in
    # targets.py) and converted to tensors before the forward pass (_engine/targets.py); finished
    # maps are stored as .npy files (datasets.py, _store/shards.py; the dataset's fingerprint
    # hashes arrays an item may hold, _store/fingerprints.py), and the command reads images
    # (cli.py); the viewer draws thumbnails (viewer.py)
    store = {"datasets.py", "_store/shards.py", "_store/fingerprints.py", "viewer.py"}
    # metrics reproduce Quantus's numpy orderings and draws where asked (ties="quantus",
    # the off classes of Random Logit)
    # and metrics/_sorting.py sorts values with NumPy on the CPU, several times faster there
    quantus = {"metrics/localization.py", "metrics/_removal.py", "metrics/_sorting.py",
               "metrics/class_sensitivity.py"}  # fmt: skip
    assert users == {"plot.py", "targets.py", "_engine/targets.py", "cli.py", *store, *quantus}
    assert "numpy" in _imports(package / "plot.py")  # the scan does find imports
