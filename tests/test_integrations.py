"""Hugging Face transformers and timm models, built from configs with random weights.

For each model, camkit's raw Grad-CAM at a layer equals plain autograd's for
the same target, after laying the layer's tokens or channels-last output out
as ``(N, C, *spatial)`` by hand; the layout options come from
:func:`camkit.list_layers`; the model is left as it was. transformers and timm
are test dependencies (the ``integrations`` extra): this module fails, rather
than skips, without them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import timm
import torch
import transformers
from torch import Tensor, nn

import camkit
from camkit import GradCAM, SimilarityTarget
from tests.helpers import assert_untouched, reference_gradcam_at, snapshot

transformers.logging.set_verbosity_error()


def _arrange(options: dict[str, Any]) -> Callable[[Tensor], Tensor]:
    """Lay a layer's output out as (N, C, H, W) by hand, for the layout ``options`` name."""
    layout = options.get("layout", "channels_first")
    if layout == "channels_last":
        return lambda t: t.permute(0, 3, 1, 2)
    if layout == "tokens":
        prefix, (h, w) = options["prefix_tokens"], options["grid"]
        return lambda t: t[:, prefix:].reshape(len(t), h, w, -1).permute(0, 3, 1, 2)
    return lambda t: t


def _pick(name: str) -> Callable[[Any], Tensor]:
    if name.endswith("[0]"):
        return lambda out: out[0]
    if name.endswith("['last_hidden_state']"):
        return lambda out: out["last_hidden_state"]
    return lambda out: out


def _check(
    model: nn.Module, x: Tensor, layer: str, target: Any, score: Any
) -> camkit.layers.LayerInfo:
    """camkit's raw map at ``layer`` (options from list_layers) against plain autograd."""
    infos = {info.name: info for info in camkit.list_layers(model, x)}
    assert layer in infos, sorted(infos)[-10:]
    info = infos[layer]
    before = snapshot(model)
    raw = GradCAM(model, layer, **info.options)(
        x, target, relu=False, upsample=False, normalize=False
    )
    module = camkit.layers.resolve_layer(model, layer).module
    expected = reference_gradcam_at(
        model, module, x, score, pick=_pick(layer), arrange=_arrange(info.options)
    )
    scale = expected.abs().max()
    assert scale > 0
    torch.testing.assert_close(raw.double() / scale, expected / scale, rtol=1e-4, atol=1e-5)
    maps = GradCAM(model, layer, **info.options)(x, target)
    assert maps.shape == (len(x), *x.shape[2:])
    assert_untouched(before, snapshot(model))
    return info


def _classes(out: Any) -> Tensor:
    logits = out.logits if hasattr(out, "logits") else out
    return logits[:, 1]


def _vit() -> nn.Module:
    config = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=3,
    )
    return transformers.ViTForImageClassification(config)


def _swin() -> nn.Module:
    config = transformers.SwinConfig(
        image_size=32,
        patch_size=4,
        embed_dim=8,
        depths=[1, 1],
        num_heads=[1, 1],
        window_size=4,
        num_labels=3,
    )
    return transformers.SwinForImageClassification(config)


def _convnext() -> nn.Module:
    config = transformers.ConvNextConfig(
        num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3
    )
    return transformers.ConvNextForImageClassification(config)


def _last(names: list[str], suffix: str) -> str:
    return [name for name in names if name.endswith(suffix)][-1]


HUGGING_FACE: dict[str, tuple[Callable[[], nn.Module], Callable[[list[str]], str], str]] = {
    # name: (builder, how to find the layer among list_layers' names, its layout)
    "ViT": (_vit, lambda names: _last(names, "layernorm_before"), "tokens"),
    "Swin": (_swin, lambda names: _last(names, "[0]"), "tokens"),
    "ConvNeXt": (_convnext, lambda names: _last(names, "['last_hidden_state']"), "channels_first"),
}


@pytest.mark.parametrize("name", list(HUGGING_FACE))
def test_hugging_face_classifiers_match_plain_autograd(name: str) -> None:
    builder, find, layout = HUGGING_FACE[name]
    torch.manual_seed(0)
    model = builder().eval()
    x = torch.randn(2, 3, 32, 32)
    names = [info.name for info in camkit.list_layers(model, x)]
    info = _check(model, x, find(names), 1, _classes)  # an int target reads output.logits
    assert info.layout == layout


def test_clip_image_text_similarity_matches_plain_autograd() -> None:
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config={
            "vocab_size": 50,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 8,
            "projection_dim": 8,
        },
        vision_config={
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "projection_dim": 8,
        },
        projection_dim=8,
    )
    clip = transformers.CLIPModel(config).eval()
    vision = transformers.CLIPVisionModelWithProjection(config.vision_config).eval()
    vision.load_state_dict(clip.state_dict(), strict=False)  # the same image tower
    x, ids = torch.randn(2, 3, 32, 32), torch.randint(0, 50, (3, 6))
    with torch.no_grad():
        texts = clip.get_text_features(input_ids=ids)
        texts = texts if isinstance(texts, Tensor) else texts.pooler_output
        logits = clip(input_ids=ids, pixel_values=x).logits_per_image
    target = SimilarityTarget(texts, key="image_embeds")  # one map per text
    with torch.no_grad():
        cosine = target(vision(x))
    torch.testing.assert_close(cosine * clip.logit_scale.exp(), logits, rtol=1e-4, atol=1e-4)
    names = [info.name for info in camkit.list_layers(vision, x)]
    layer = _last(names, "layer_norm1")
    maps = GradCAM(vision, layer, layout="tokens")(x, target)
    assert maps.shape == (2, 3, 32, 32)
    _check(
        vision,
        x,
        layer,
        SimilarityTarget(texts[2], key="image_embeds"),
        lambda out: target(out)[:, 2],
    )


TIMM: dict[str, tuple[dict[str, Any], int, str, str]] = {
    # name: (create_model options, input size, layer, its layout)
    "resnet18": ({}, 64, "layer4", "channels_first"),
    "convnext_atto": ({}, 64, "stages.3", "channels_first"),
    "vit_tiny_patch16_224": ({"img_size": 64}, 64, "blocks.11.norm1", "tokens"),
    "deit_tiny_distilled_patch16_224": ({"img_size": 64}, 64, "blocks.11.norm1", "tokens"),
    "swin_tiny_patch4_window7_224": ({"img_size": 112}, 112, "layers.3", "channels_last"),
}


@pytest.mark.parametrize("name", list(TIMM))
def test_timm_models_match_plain_autograd(name: str) -> None:
    options, size, layer, layout = TIMM[name]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=3, **options).eval()
    x = torch.randn(2, 3, size, size)
    info = _check(model, x, layer, 1, _classes)
    assert info.layout == layout


def test_a_hugging_face_dataset_is_explained_from_its_dict_batches(tmp_path: Any) -> None:
    """A ``datasets.Dataset`` of PIL images, turned into ``pixel_values`` by a transform
    (as an image processor does), through a DataLoader: dict batches. Its stored maps are
    those of the explainer called on the same batches; evaluate reads the batches alike."""
    import datasets
    import numpy as np
    from PIL import Image
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    model = _convnext().eval()
    generator = np.random.default_rng(0)
    images = [Image.fromarray(generator.integers(0, 256, (32, 32, 3), dtype=np.uint8))
              for _ in range(10)]  # fmt: skip
    table = datasets.Dataset.from_dict({"image": images, "label": [i % 3 for i in range(10)]})
    table = table.cast_column("image", datasets.Image())

    def prepare(rows: dict[str, list[Any]]) -> dict[str, list[Any]]:
        pixels = [torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
                  for image in rows["image"]]  # fmt: skip
        return {"pixel_values": pixels, "label": rows["label"]}

    loader = DataLoader(table.with_transform(prepare), batch_size=4)
    cam = GradCAM(model, "convnext.encoder.stages.1")
    store = camkit.explain_dataset(cam, loader, tmp_path / "maps", target="label", progress=False)
    assert store is not None and len(store) == 10
    for start, batch in zip(range(0, 10, 4), loader, strict=True):
        expected = cam(batch["pixel_values"], batch["label"])
        for row in range(len(expected)):
            assert torch.equal(store.map(start + row), expected[row])
    assert store.records()["target"].tolist() == table["label"]
    drops = camkit.metrics.evaluate(model, cam, loader, {"drop": camkit.metrics.average_drop},
                                    target="label", progress=False)["drop"]  # fmt: skip
    assert drops.values.shape == (10,)
    # with_format("torch") alone gives the images as uint8: refused, with what to do
    raw = DataLoader(table.with_format("torch"), batch_size=4)
    with pytest.raises(camkit.CamkitTypeError, match="expected a floating-point tensor"):
        camkit.explain_dataset(cam, raw, tmp_path / "raw", progress=False)
