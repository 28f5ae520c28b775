"""What the benchmark measures: models, inputs, layers, and the explainers (camkit's and peers')."""

from __future__ import annotations

import copy
import importlib.util
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import camkit
from examples.mnist.model import MnistNet

Call = Callable[[], object]

# MONAI 1.6 indexes with lists of slices, which torch warns about on every window
warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional")


@dataclass
class Case:
    """One model with its input, layer and targets."""

    name: str
    model: nn.Module
    x: Tensor
    classes: Tensor
    layer: str
    layout: str = "channels_first"
    boxes: Tensor | None = None
    """For a detector: the boxes ``(N, k, 4)`` of the detections explained, ``classes``
    ``(N, k)`` their labels."""

    def forward(self) -> object:
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
    elif name == "fasterrcnn":
        return _detection_case(device)
    elif name in ("densenet3d", "densenet3d_160"):
        from monai.networks.nets import DenseNet121

        model = DenseNet121(spatial_dims=3, in_channels=1, out_channels=2)
        side = 160 if name == "densenet3d_160" else 96
        x = torch.randn(1, 1, side, side, side)
        layer, layout = "features.denseblock4", "channels_first"
    elif name == "llava":
        return _llava_case(device)
    elif name == "r3d_18":
        from torchvision.models.video import r3d_18

        model = r3d_18(weights=None)
        x = torch.randn(1, 3, 8, 112, 112)
        layer, layout = "layer4", "channels_first"
    else:
        raise ValueError(
            f"case: unknown {name!r}; choose mnist, resnet50, vit_b_16, fasterrcnn, densenet3d, "
            f"densenet3d_160, r3d_18, llava"
        )
    model = model.eval().to(device)
    x = x.to(device)
    with torch.no_grad():
        classes = model(x).argmax(1)
    return Case(name, model, x, classes, layer, layout)


TOP_DETECTIONS = 5


def _detection_case(device: str) -> Case:
    """Faster R-CNN MobileNet-V3 FPN with torchvision's defaults (images resized to 800),
    one 480 x 640 image, explaining its top detections. Random weights score every class
    about 1/91, under the default threshold of 0.05, so the threshold is 0."""
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn

    model = fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, box_score_thresh=0.0
    ).eval()
    model = model.to(device)
    x = torch.rand(1, 3, 480, 640, device=device)
    with torch.no_grad():
        found = model(x)
    labels = torch.stack([f["labels"][:TOP_DETECTIONS] for f in found])
    boxes = torch.stack([f["boxes"][:TOP_DETECTIONS] for f in found])
    return Case("fasterrcnn", model, x, labels, "backbone.body.16", boxes=boxes)


ANSWER_TOKENS = 32
"""The answer the llava case explains, token by token."""

LLAVA_LAYER = "model.model.vision_tower.encoder.layers.2"
"""The vision-tower layer the llava case explains (LLaVA-1.5 reads the second-to-last)."""


class _Answering(nn.Module):
    """A LLaVA with its prompt and answer fixed, taking the image first."""

    def __init__(self, model: nn.Module, input_ids: Tensor) -> None:
        super().__init__()
        self.model = model
        self.input_ids = input_ids

    def forward(self, pixel_values: Tensor) -> Tensor:
        logits: Tensor = self.model(input_ids=self.input_ids, pixel_values=pixel_values).logits
        return logits


def _llava_case(device: str) -> Case:
    """A LLaVA-1.5-shaped model from a configuration (random weights): a CLIP vision tower
    on 224² images in 14² patches (256 image tokens), 4 layers of width 256 on both sides,
    the second-to-last vision layer fed to the language model; a prompt of 8 text tokens and
    the image, and a 32-token greedy answer, teacher-forced."""
    import transformers

    vision = transformers.CLIPVisionConfig(
        image_size=224, patch_size=14, hidden_size=256, intermediate_size=1024,
        num_hidden_layers=4, num_attention_heads=4,
    )  # fmt: skip
    text = transformers.LlamaConfig(
        vocab_size=2000, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
    )  # fmt: skip
    image_token = 1999
    config = transformers.LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=image_token,
        vision_feature_layer=-2, vision_feature_select_strategy="default",
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlavaForConditionalGeneration(config).eval().to(device)
    image = torch.randn(1, 3, 224, 224, device=device)
    prompt = torch.tensor([[1, 5, 6, 7, *[image_token] * 256, 8, 9, 10, 11]], device=device)
    sequence = model.generate(
        input_ids=prompt, pixel_values=image, max_new_tokens=ANSWER_TOKENS,
        min_new_tokens=ANSWER_TOKENS, do_sample=False, suppress_tokens=[image_token],
    )  # fmt: skip
    said = sequence[:, prompt.shape[1] :]
    return Case("llava", _Answering(model, sequence).eval(), image, said, LLAVA_LAYER, "tokens")


def _llava_calls(case: Case) -> dict[str, Call]:
    """camkit's Grad-CAM of every answer token, and the least plain autograd can do for the
    same maps: one forward pass with gradients, one backward pass per token; and TAM, one
    forward pass (the no-grad forward is the same teacher-forced pass)."""
    m, x, said, layer = case.model, case.x, case.classes, case.layer
    options = {"layout": "tokens", "prefix_tokens": 1, "grid": (16, 16)}
    module = m.get_submodule(layer)
    length = m.input_ids.shape[1]
    positions = torch.arange(length - ANSWER_TOKENS, length, device=x.device)

    def plain() -> object:
        kept: list[Tensor] = []
        handle = module.register_forward_hook(lambda mod, i, out: kept.append(out))
        try:
            logits = m(x)
        finally:
            handle.remove()
        activation = kept[-1]
        scores = logits[0, positions - 1, said[0]]
        maps = []
        for j in range(ANSWER_TOKENS):
            (grad,) = torch.autograd.grad(scores[j], activation, retain_graph=j < ANSWER_TOKENS - 1)
            weights = grad[:, 1:].mean(1, keepdim=True)
            maps.append(torch.relu((weights * activation[:, 1:]).sum(-1)).detach())
        return torch.stack(maps, 1)

    target = camkit.TokenTarget(said)
    return {  # TAM first: right after the forward pass it is compared with
        f"camkit TAM, {ANSWER_TOKENS} tokens (no backward pass)": lambda: camkit.TAM(
            m.model, grid=(16, 16)
        )({"input_ids": m.input_ids, "pixel_values": x}, target),
        f"camkit GradCAM, {ANSWER_TOKENS} tokens (layer grid)": lambda: camkit.GradCAM(
            m, layer, **options
        )(x, target, upsample=False, normalize=False),
        f"camkit GradCAM, {ANSWER_TOKENS} tokens (224², scaled)": lambda: camkit.GradCAM(
            m, layer, **options
        )(x, target),
        f"plain autograd: 1 forward, {ANSWER_TOKENS} backward passes": plain,
    }


VOLUME_CASES = ("densenet3d", "densenet3d_160", "r3d_18")
"""The 3D cases (volumes, a clip), compared with MONAI (occlusion where :data:`OCCLUSION`
gives its windows: at 160³ it would take minutes a call)."""

OCCLUSION = {
    "densenet3d": {"mask_size": 48, "overlap": 0.5},  # 3 x 3 x 3 windows of 48³
    "r3d_18": {"mask_size": (8, 28, 28), "overlap": 0.5},  # 7 x 7 windows of 28² x 8 frames
}
"""The occlusion windows of each 3D case, the same for camkit and MONAI."""


def camkit_calls(case: Case) -> dict[str, Call]:
    """Every camkit method applicable to the case, called with its defaults."""
    m, layer, x, c = case.model, case.layer, case.x, case.classes
    if case.boxes is not None:
        return _detection_calls(case, case.boxes)
    if case.name == "llava":
        return _llava_calls(case)
    if case.name in VOLUME_CASES:
        volume_calls: dict[str, Call] = {
            "camkit GradCAM": lambda: camkit.GradCAM(m, layer)(x, c),
            "camkit GradCAM++": lambda: camkit.GradCAMPlusPlus(m, layer)(x, c),
        }
        if case.name in OCCLUSION:  # its default: copies a pass sized to the input
            occlusion = camkit.OcclusionSensitivity(m, **OCCLUSION[case.name])
            volume_calls["camkit OcclusionSensitivity"] = lambda: occlusion(x, c)
            same = camkit.OcclusionSensitivity(m, **OCCLUSION[case.name], batch_size=16)
            volume_calls["camkit OcclusionSensitivity, 16 copies a pass"] = lambda: same(x, c)
        return volume_calls
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


def _detection_calls(case: Case, boxes: Tensor) -> dict[str, Call]:
    m, layer, x, labels = case.model, case.layer, case.x, case.classes
    top = camkit.DetectionTarget(labels, boxes, reduce="sum")
    each = camkit.DetectionTarget(labels, boxes)
    levels = ["backbone.fpn['0']", "backbone.fpn['1']"]  # = backbone['0'], ['1'], recording less
    return {
        f"camkit GradCAM, top {TOP_DETECTIONS} detections": lambda: camkit.GradCAM(m, layer)(
            x, top
        ),
        "camkit GradCAM, FPN levels fused": lambda: camkit.GradCAM(m, levels)(x, top),
        f"camkit GradCAM, {TOP_DETECTIONS} maps, one per detection": lambda: camkit.GradCAM(
            m, layer
        )(x, each),
        "camkit EigenCAM": lambda: camkit.EigenCAM(m, layer)(x, top),
    }


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def peer_calls(case: Case) -> dict[str, Call]:
    """Grad-CAM from pytorch-grad-cam, Captum and TorchCAM, when installed."""
    m, x, c = case.model, case.x, case.classes
    module = m.get_submodule(case.layer)
    size = tuple(x.shape[2:])
    calls: dict[str, Call] = {}
    if case.boxes is not None:
        return _peer_detection_calls(case, case.boxes) if installed("pytorch_grad_cam") else {}
    if case.name in VOLUME_CASES:
        return _monai_calls(case) if installed("monai") else {}
    if case.name == "llava":
        return {}
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


def _peer_detection_calls(case: Case, boxes: Tensor) -> dict[str, Call]:
    """pytorch-grad-cam's Grad-CAM of the same detections, with its FasterRCNNBoxScoreTarget
    (its Faster R-CNN tutorial's target), at the same layer."""
    from pytorch_grad_cam import GradCAM as PgcGradCAM
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    m, x = case.model, case.x
    module = m.get_submodule(case.layer)

    def pgc() -> object:
        cam = PgcGradCAM(model=m, target_layers=[module])
        targets = [
            FasterRCNNBoxScoreTarget(labels=labels, bounding_boxes=b)
            for labels, b in zip(case.classes, boxes, strict=True)
        ]
        return cam(input_tensor=x, targets=targets)

    return {f"pytorch-grad-cam GradCAM, top {TOP_DETECTIONS} detections": pgc}


def _monai_calls(case: Case) -> dict[str, Call]:
    """MONAI's Grad-CAM, Grad-CAM++ and occlusion sensitivity, each built once, as MONAI is
    used, on its own copy of the model: MONAI leaves hooks on the layer it explains, which
    would otherwise run in every other call measured."""
    from monai.visualize import GradCAM as MonaiGradCAM
    from monai.visualize import GradCAMpp as MonaiGradCAMpp
    from monai.visualize import OcclusionSensitivity as MonaiOcclusion

    x, c = case.x, int(case.classes[0])  # MONAI's class vector is wrong in a batch; batch 1
    gradcam = MonaiGradCAM(copy.deepcopy(case.model), target_layers=case.layer)
    gradcampp = MonaiGradCAMpp(copy.deepcopy(case.model), target_layers=case.layer)
    calls: dict[str, Call] = {
        "MONAI GradCAM": lambda: gradcam(x, class_idx=c),
        "MONAI GradCAMpp": lambda: gradcampp(x, class_idx=c),
    }
    if case.name in OCCLUSION:  # MONAI's default: 16 copies a pass
        occlusion = MonaiOcclusion(
            copy.deepcopy(case.model), **OCCLUSION[case.name], n_batch=16, verbose=False,
            activate=False,
        )  # fmt: skip
        calls["MONAI OcclusionSensitivity"] = lambda: occlusion(x)
    return calls
