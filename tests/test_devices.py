"""Every method and metric on every device this machine has, against the CPU.

The CPU case always runs. Where CUDA is available the same tests run there
too, so the GPU path is checked on any machine that has one, and CI, which
has none, still runs the CPU case instead of skipping. TF32 is switched off,
so the devices compare in float32. (Apple's MPS is not listed: it has no
float64, which the ROAD and curve metrics use.)
"""

from __future__ import annotations

import copy
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import camkit
import camkit.cli
from camkit import metrics
from examples.mnist.model import MnistNet
from tests.helpers import (
    MNIST_EXPLAINERS,
    MNIST_LAYER,
    READS,
    Recorder,
    assert_untouched,
    reference_gradcam,
    snapshot,
)
from tests.models import cam_net

DEVICES = ["cpu"]
if torch.cuda.is_available():
    DEVICES.append("cuda")


@pytest.fixture(autouse=True)
def _no_tf32() -> Iterator[None]:
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _models(device: str) -> tuple[nn.Module, nn.Module]:
    cpu = MnistNet().eval()
    return cpu, copy.deepcopy(cpu).to(device)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcam_on_device_equals_plain_autograd_on_the_cpu(device: str) -> None:
    cpu_model, model = _models(device)
    x = torch.randn(6, 1, 28, 28)
    classes = torch.tensor([3, 1, 4, 1, 5, 9])
    expected = reference_gradcam(cpu_model, cpu_model.get_submodule(MNIST_LAYER), x, classes)
    raw = camkit.GradCAM(model, MNIST_LAYER)(
        x.to(device), classes, relu=False, upsample=False, normalize=False
    )
    assert raw.device.type == device and raw.dtype == torch.float32
    torch.testing.assert_close(raw.cpu().double(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(MNIST_EXPLAINERS))
def test_method_on_device_equals_the_cpu(device: str, name: str) -> None:
    cpu_model, model = _models(device)
    x = torch.randn(4, 1, 28, 28)
    classes = torch.tensor([[2, 7], [0, 0], [9, 1], [5, 3]])  # on the CPU, for either device
    expected = MNIST_EXPLAINERS[name](cpu_model)(x, classes)
    before = snapshot(model, x.to(device))
    maps = MNIST_EXPLAINERS[name](model)(x.to(device), classes)
    assert_untouched(before, snapshot(model, x.to(device)))
    assert maps.device.type == device and maps.dtype == torch.float32
    assert maps.shape == expected.shape  # guided methods keep the channel axis
    assert expected.shape[:2] == (4, 2) and expected.shape[-2:] == (28, 28)
    torch.testing.assert_close(maps.cpu(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_cam_and_reduced_precision_on_device(device: str) -> None:
    cpu_model = cam_net(2, classes=4)
    model = copy.deepcopy(cpu_model).to(device)
    x = torch.randn(3, 2, 10, 10)
    expected = camkit.CAM(cpu_model, "1", fc="4")(x, 2)
    torch.testing.assert_close(camkit.CAM(model, "1", fc="4")(x.to(device), 2).cpu(), expected)
    half = copy.deepcopy(cpu_model).to(device, torch.bfloat16)
    maps = camkit.GradCAM(half, "1")(x.to(device, torch.bfloat16), 2)
    assert maps.dtype == torch.float32 and bool(maps.isfinite().all())
    reference = camkit.GradCAM(cpu_model, "1")(x, 2)
    assert float((maps.cpu() - reference).abs().mean()) < 0.05


@pytest.mark.parametrize("device", DEVICES)
def test_metrics_on_device_equal_the_cpu(device: str) -> None:
    cpu_model, model = _models(device)
    x = torch.rand(3, 1, 28, 28)
    maps = camkit.GradCAM(cpu_model, MNIST_LAYER)(x, 4)
    results: dict[str, list[Tensor]] = {}
    for m, xs, ms in ((cpu_model, x, maps), (model, x.to(device), maps.to(device))):
        for metric, result in (
            ("deletion", metrics.deletion(m, xs, ms, 4, step=98)),
            ("insertion", metrics.insertion(m, xs, ms, 4, step=98)),
            ("road", metrics.road(m, xs, ms, 4, percentages=[20, 60])),
            ("average_drop", metrics.average_drop(m, xs, ms, 4)),
        ):
            assert result.values.device.type == "cpu", metric
            results.setdefault(metric, []).append(result.values)
    for metric, (on_cpu, on_device) in results.items():
        torch.testing.assert_close(on_device, on_cpu, rtol=1e-4, atol=1e-5, msg=metric)


# Documented waits for the device in a successful call with target=None (docs/reliability.rst):
# one per forward pass of the input, torch's own linear-algebra check in Eigen-CAM and
# Eigen-Grad-CAM, the check of Ablation-CAM's split, and the channels Score-CAM skips.
DEVICE_WAITS = {
    "GuidedGradCAM": 2,
    "EigenCAM": 2,
    "EigenGradCAM": 2,
    "AblationCAM": 2,
    "ScoreCAM": 2,
    "ISCAM": 2,
}


def _waits_for(device: str, call: Callable[[], object]) -> int:
    """How often ``call`` makes the host wait for the device.

    On CUDA, by CUDA's synchronization debug mode (a warning per wait); on the
    CPU, where nothing waits, by counting reads of a tensor's value as the
    hot-path test does (a GPU would wait at each).
    """
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                call()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)
    recorder = Recorder()
    with recorder:
        call()
    return sum(called.split(".")[-1] in READS for called, _, _ in recorder.calls)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(MNIST_EXPLAINERS))
def test_a_call_waits_for_the_device_only_as_documented(device: str, name: str) -> None:
    _, model = _models(device)
    explainer = MNIST_EXPLAINERS[name](model)
    x = torch.randn(4, 1, 28, 28, device=device)
    explainer(x)  # warm: first-use setup (cuDNN, the interpolation matrices) may wait
    waits = _waits_for(device, lambda: explainer(x))
    expected = DEVICE_WAITS.get(name, 1)
    if device == "cpu" and name in ("EigenCAM", "EigenGradCAM"):
        expected = 1  # torch's own check is not a read the recorder sees
    assert waits == expected, waits


def _ready_made_targets() -> dict[str, tuple[Callable[[], nn.Module], Callable[[], object], str]]:
    """Each ready-made target on a toy model of its kind: (model, target, layer)."""
    from tests.test_targets import Embedder, OneLogit, SegNet, ToyDetector

    mask = torch.rand(8, 8) > 0.5
    return {
        "segmentation": (SegNet, lambda: camkit.SegmentationTarget([0, 2, 1], mask=mask), "body.1"),
        "detection": (ToyDetector, lambda: camkit.DetectionTarget.every(min_score=0.0), "body.1"),
        "similarity": (Embedder, lambda: camkit.SimilarityTarget(torch.ones(3, 6)), "body.1"),
        "binary": (OneLogit, lambda: camkit.BinaryTarget(None), "body.1"),
        "regression": (
            lambda: OneLogit(4),
            lambda: camkit.RegressionTarget(index=[1, 3]),
            "body.1",
        ),
    }


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "kind", ["segmentation", "detection", "similarity", "binary", "regression"]
)
@pytest.mark.parametrize("method", ["GradCAM", "ScoreCAM"])
def test_ready_made_targets_on_device_equal_the_cpu(device: str, kind: str, method: str) -> None:
    build, target, layer = _ready_made_targets()[kind]
    torch.manual_seed(0)
    cpu_model = build().eval()
    model = copy.deepcopy(cpu_model).to(device)
    channels = next(cpu_model.parameters()).shape[1]
    x = torch.randn(3, channels, 8, 8)
    expected = getattr(camkit, method)(cpu_model, layer)(x, target())
    got = getattr(camkit, method)(model, layer)(x.to(device), target())
    assert got.device.type == device
    torch.testing.assert_close(got.cpu(), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["GradCAM", "AblationCAM"])
def test_a_call_and_element_of_a_layer_on_device_equal_the_cpu(device: str, method: str) -> None:
    from tests.test_layers import Siamese

    torch.manual_seed(0)
    cpu_model = Siamese("dict").eval()
    model = copy.deepcopy(cpu_model).to(device)
    x = torch.randn(3, 1, 8, 8)
    for layer in ["encoder@0['features']", "encoder@1[features]"]:
        expected = getattr(camkit, method)(cpu_model, layer)(x, 1)
        got = getattr(camkit, method)(model, layer)(x.to(device), 1)
        torch.testing.assert_close(got.cpu(), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_differentiable_maps_on_device_equal_the_cpu(device: str) -> None:
    cpu_model, model = _models(device)
    cpu_model.train()
    model.train()
    x, y = torch.randn(6, 1, 28, 28), torch.tensor([3, 1, 4, 1, 5, 9])
    gradients = []
    for net, where in ((cpu_model, "cpu"), (model, device)):
        explained = camkit.GradCAM(net, MNIST_LAYER).explain(
            x.to(where), y.to(where), differentiable=True
        )
        loss = nn.functional.cross_entropy(explained.output, y.to(where))
        (loss + explained.maps.square().mean()).backward()
        gradients.append(torch.cat([p.grad.flatten().cpu() for p in net.parameters()]))
    torch.testing.assert_close(gradients[1], gradients[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_explain_dataset_on_device_equals_the_cpu(device: str, tmp_path: Path) -> None:
    cpu_model, model = _models(device)
    data = TensorDataset(torch.randn(21, 1, 28, 28), torch.randint(0, 10, (21,)))
    stores = [
        camkit.explain_dataset(
            camkit.GradCAM(net, MNIST_LAYER),
            DataLoader(data, batch_size=8),
            tmp_path / where,
            target="label",
            progress=False,
        )
        for net, where in ((cpu_model, "cpu"), (model, device))
    ]
    cpu_store, device_store = stores
    assert cpu_store is not None and device_store is not None and len(device_store) == 21
    for index in range(21):
        torch.testing.assert_close(device_store.map(index), cpu_store.map(index), atol=1e-4, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_the_command_under_torchrun_on_device(device: str, tmp_path: Path) -> None:
    """One torchrun process: NCCL and the rank's GPU on CUDA machines, gloo on the CPU."""
    from PIL import Image

    root = Path(__file__).resolve().parents[1]
    images = tmp_path / "images"
    images.mkdir()
    for i in range(5):
        pixels = (torch.rand(28, 28) * 255).byte().numpy()
        Image.fromarray(pixels).save(images / f"{i}.png")
    weights = tmp_path / "net.pt"
    torch.save(MnistNet().state_dict(), weights)
    command = ["explain", str(images), "--model", "examples.mnist.model:MnistNet"]
    command += ["--weights", str(weights), "--layer", MNIST_LAYER, "--channels", "1"]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    run = subprocess.run(
        [*launch, "-m", "camkit", *command, "--device", device, "--store", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        cwd=root,
    )
    assert run.returncode == 0, run.stderr
    assert camkit.cli.main([*command, "--device", "cpu", "--store", str(tmp_path / "c")]) == 0
    on_device, on_cpu = camkit.MapStore(tmp_path / "d"), camkit.MapStore(tmp_path / "c")
    for index in range(5):
        torch.testing.assert_close(on_device.map(index), on_cpu.map(index), atol=1e-4, rtol=0)
