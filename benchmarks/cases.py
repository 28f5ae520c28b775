"""What the benchmark measures: models, inputs, layers, and the explainers (camkit's and peers')."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import camkit
from examples.mnist.model import MnistNet

Call = Callable[[], object]


@dataclass
class Case:
    """One model with its input, layer and targets."""

    name: str
    model: nn.Module
    x: Tensor
    classes: Tensor
    layer: str
    layout: str = "channels_first"

    def forward(self) -> Tensor:
        with torch.no_grad():
            return self.model(self.x)


def build_case(name: str, device: str = "cpu") -> Case:
    torch.manual_seed(0)
    if name == "mnist":
        model: nn.Module = MnistNet()
        x = torch.randn(256, 1, 28, 28)
        layer, layout = "features.relu", "channels_first"
    elif name == "resnet50":
        import torchvision.models as tvm

        model = tvm.resnet50(weights=None)
        x = torch.randn(8, 3, 224, 224)
        layer, layout = "layer4", "channels_first"
    elif name == "vit_b_16":
        import torchvision.models as tvm

        model = tvm.vit_b_16(weights=None)
        nn.init.normal_(model.heads.head.weight, std=0.02)
        x = torch.randn(4, 3, 224, 224)
        layer, layout = "encoder.layers.encoder_layer_11.ln_1", "tokens"
    else:
        raise ValueError(f"case: unknown {name!r}; choose mnist, resnet50, vit_b_16")
    model = model.eval().to(device)
    x = x.to(device)
    with torch.no_grad():
        classes = model(x).argmax(1)
    return Case(name, model, x, classes, layer, layout)


def camkit_calls(case: Case) -> dict[str, Call]:
    """Every camkit method applicable to the case, called with its defaults."""
    m, layer, x, c = case.model, case.layer, case.x, case.classes
    opts = {"layout": case.layout}
    calls: dict[str, Call] = {
        "camkit GradCAM": lambda: camkit.GradCAM(m, layer, **opts)(x, c),
        "camkit GradCAM raw": lambda: camkit.GradCAM(m, layer, **opts)(
            x, c, upsample=False, normalize=False
        ),
        "camkit GradCAM, layer resolution (as TorchCAM)": lambda: camkit.GradCAM(m, layer, **opts)(
            x, c, upsample=False
        ),
        "camkit GradCAM, not scaled (as Captum)": lambda: camkit.GradCAM(m, layer, **opts)(
            x, c, normalize=False
        ),
        "camkit GradCAM++": lambda: camkit.GradCAMPlusPlus(m, layer, **opts)(x, c),
        "camkit XGradCAM": lambda: camkit.XGradCAM(m, layer, **opts)(x, c),
        "camkit HiResCAM": lambda: camkit.HiResCAM(m, layer, **opts)(x, c),
        "camkit LayerCAM": lambda: camkit.LayerCAM(m, layer, **opts)(x, c),
        "camkit EigenCAM": lambda: camkit.EigenCAM(m, layer, **opts)(x, c),
    }
    if case.name == "mnist":
        calls["camkit GradCAM, 10 classes"] = lambda: camkit.GradCAM(m, layer)(
            x, torch.arange(10, device=x.device).expand(len(x), 10)
        )
        calls["camkit ScoreCAM"] = lambda: camkit.ScoreCAM(m, layer, batch_size=512)(x, c)
        calls["camkit AblationCAM"] = lambda: camkit.AblationCAM(m, layer, batch_size=512)(x, c)
        calls["camkit GuidedBackprop"] = lambda: camkit.GuidedBackprop(m)(x, c)
    return calls


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def peer_calls(case: Case) -> dict[str, Call]:
    """Grad-CAM from pytorch-grad-cam, Captum and TorchCAM, when installed."""
    m, x, c = case.model, case.x, case.classes
    module = m.get_submodule(case.layer)
    size = tuple(x.shape[2:])
    calls: dict[str, Call] = {}
    if installed("pytorch_grad_cam"):
        from pytorch_grad_cam import GradCAM as PgcGradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        reshape = None
        if case.layout == "tokens":
            side = int(x.shape[2] // 16)

            def reshape(t: Tensor) -> Tensor:
                return t[:, 1:].reshape(len(t), side, side, -1).permute(0, 3, 1, 2)

        def pgc() -> object:
            cam = PgcGradCAM(model=m, target_layers=[module], reshape_transform=reshape)
            targets = [ClassifierOutputTarget(int(k)) for k in c]
            return cam(input_tensor=x, targets=targets)

        calls["pytorch-grad-cam GradCAM"] = pgc
    if installed("captum") and case.layout == "channels_first":
        from captum.attr import LayerGradCam

        def captum_call() -> object:
            attribution = LayerGradCam(m, module).attribute(x, target=c, relu_attributions=True)
            return F.interpolate(attribution, size=size, mode="bilinear", align_corners=False)

        calls["Captum LayerGradCam"] = captum_call
    if installed("torchcam") and case.layout == "channels_first":
        from torchcam.methods import GradCAM as TcGradCAM

        def torchcam_call() -> object:
            with TcGradCAM(m, target_layer=case.layer, input_shape=tuple(x.shape[1:])) as cam:
                scores = m(x)
                return cam(class_idx=c.tolist(), scores=scores)

        calls["TorchCAM GradCAM"] = torchcam_call
    return calls
