"""A map for every token a vision-language model says: TokenTarget on a config-built LLaVA.

The answer is generated, appended to the prompt (teacher forcing), and every answer token's
logit at the position before it is explained at a layer of the vision tower, from one
forward pass. Each map equals plain autograd on that token's logit.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import camkit
from camkit import GradCAM, TokenTarget
from camkit.errors import CamkitModelError, CamkitTypeError, CamkitValueError
from camkit.layers import resolve_layer
from tests.helpers import (
    GradCAMMagnitude,
    assert_gradcam_close,
    assert_untouched,
    reference_gradcam_at,
    snapshot,
)

transformers = pytest.importorskip("transformers")

IMAGE_TOKEN = 99
PATCHES = 16  # a 32 x 32 image in 8 x 8 patches; LLaVA drops the vision tower's CLS token
LAYER = "model.model.vision_tower.encoder.layers.0"
TOKENS = {"layout": "tokens", "prefix_tokens": 1, "grid": (4, 4)}


def tiny_configs(image_size: int = 32) -> tuple[object, object]:
    """A CLIP vision tower (8 x 8 patches) and a Llama text model, both small."""
    vision = transformers.CLIPVisionConfig(
        image_size=image_size, patch_size=8, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=2,
    )  # fmt: skip
    text = transformers.LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
    )  # fmt: skip
    return vision, text


def tiny_llava(image_size: int = 32) -> nn.Module:
    vision, text = tiny_configs(image_size)
    config = transformers.LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN,
        vision_feature_layer=-1, vision_feature_select_strategy="default",
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.LlavaForConditionalGeneration(config).eval()


class Answering(nn.Module):
    """The model with its text fixed, taking the image first, as a CAM calls it."""

    def __init__(self, model: nn.Module, input_ids: Tensor) -> None:
        super().__init__()
        self.model = model
        self.input_ids = input_ids

    def forward(self, pixel_values: Tensor) -> Tensor:
        logits: Tensor = self.model(input_ids=self.input_ids, pixel_values=pixel_values).logits
        return logits


def answer(model: nn.Module, image: Tensor, new_tokens: int) -> tuple[Tensor, Tensor]:
    """The prompt with the greedy answer appended, and the answer's ids."""
    prompt = torch.tensor([[1, 5, *[IMAGE_TOKEN] * PATCHES, 7, 8]])
    generated = model.generate(
        input_ids=prompt, pixel_values=image, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
        do_sample=False, suppress_tokens=[IMAGE_TOKEN],  # random weights might say it
    )  # fmt: skip
    return generated, generated[:, prompt.shape[1] :]


def test_every_answer_token_gets_the_map_of_its_own_logit() -> None:
    model = tiny_llava()
    torch.manual_seed(1)
    image = torch.randn(1, 3, 32, 32)
    sequence, said = answer(model, image, new_tokens=6)
    wrapped = Answering(model, sequence).eval()
    before = snapshot(wrapped)
    target = TokenTarget(said)  # the last 6 positions
    raw = {"relu": False, "upsample": False, "normalize": False}
    got = GradCAM(wrapped, LAYER, **TOKENS).explain(image, target, **raw).maps
    assert got.shape == (1, 6, 4, 4)
    module = resolve_layer(wrapped, LAYER).module
    length = sequence.shape[1]

    def arrange(t: Tensor) -> Tensor:
        return t[:, 1:].reshape(len(t), 4, 4, t.shape[-1]).movedim(-1, 1)

    magnitude = GradCAMMagnitude(wrapped, LAYER, **TOKENS)
    size = magnitude.explain(image, target, **raw).maps
    for j in range(6):
        position, token = length - 6 + j, int(said[0, j])

        def score(logits: Tensor, p: int = position, t: int = token) -> Tensor:
            return logits[:, p - 1, t]

        expected = reference_gradcam_at(wrapped, module, image, score, arrange=arrange)
        assert_gradcam_close(got[:, j], expected, size[:, j], magnitude.channels)
    maps = GradCAM(wrapped, LAYER, **TOKENS)(image, target)
    assert maps.shape == (1, 6, 32, 32)
    assert_untouched(before, snapshot(wrapped))


def test_sixty_four_tokens_from_one_forward_pass() -> None:
    """64 maps from one run of the vision tower (no graph per token), each its token's."""
    model = tiny_llava()
    image = torch.randn(1, 3, 32, 32)
    sequence, said = answer(model, image, new_tokens=64)
    wrapped = Answering(model, sequence).eval()
    runs: list[int] = []
    hook = wrapped.model.model.vision_tower.register_forward_hook(lambda *_: runs.append(1))
    try:
        maps = GradCAM(wrapped, LAYER, **TOKENS)(image, TokenTarget(said), normalize=False)
    finally:
        hook.remove()
    assert maps.shape == (1, 64, 32, 32) and len(runs) == 1
    for j in (0, 31, 63):  # a few, alone, from their own calls
        alone = GradCAM(wrapped, LAYER, **TOKENS)(
            image, TokenTarget(said[:, j : j + 1], positions=[sequence.shape[1] - 64 + j]),
            normalize=False,
        )  # fmt: skip
        scale = float(alone.abs().max())
        torch.testing.assert_close(maps[:, j], alone[:, 0], rtol=0, atol=1e-5 * scale)


def test_token_target_by_hand_and_per_sample() -> None:
    logits = torch.randn(3, 6, 10)
    target = TokenTarget([[4, 2], [1, 1], [9, 0]], positions=[[2, 5], [1, 3], [4, 5]])
    expected = torch.stack([
        logits[0, [1, 4], [4, 2]], logits[1, [0, 2], [1, 1]], logits[2, [3, 4], [9, 0]],
    ])  # fmt: skip
    torch.testing.assert_close(target(logits), expected, rtol=0, atol=0)
    rows = torch.tensor([2, 0])  # re-scored rows: samples 2 and 0
    torch.testing.assert_close(target(logits[[2, 0]], samples=rows), expected[[2, 0]])
    default = TokenTarget([3])(logits)  # the last position, scored by the one before
    torch.testing.assert_close(default, logits[:, 4, 3][:, None])


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: TokenTarget([1.5]), CamkitTypeError, "tokens: expected integers"),
        (lambda: TokenTarget([-1]), CamkitValueError, "tokens: got"),
        (lambda: TokenTarget([1, 2], positions=[3]), CamkitValueError, "positions: got 1"),
        (lambda: TokenTarget([1], positions=[0]), CamkitValueError, "positions: got 0"),
        (lambda: TokenTarget([1], positions=[6])(torch.randn(1, 6, 4)), CamkitValueError,
         "positions: the sequence has 6"),
        (lambda: TokenTarget([7])(torch.randn(1, 6, 4)), CamkitValueError, "tokens: got id 7"),
        (lambda: TokenTarget([1])(torch.randn(1, 4)), CamkitValueError, "needs \\(N, L"),
    ],
)  # fmt: skip
def test_token_target_refuses_bad_input(make: object, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        make()  # type: ignore[operator]


def test_camkit_explains_the_logits_field_of_the_model_output() -> None:
    model = tiny_llava()
    image = torch.randn(1, 3, 32, 32)
    sequence, said = answer(model, image, new_tokens=3)

    class Full(nn.Module):  # returns the whole output: TokenTarget reads .logits
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: Tensor) -> object:
            return self.model(input_ids=sequence, pixel_values=pixel_values)

    full = camkit.GradCAM(Full().eval(), LAYER, **TOKENS)(image, TokenTarget(said))
    plain = camkit.GradCAM(Answering(model, sequence).eval(), LAYER, **TOKENS)(
        image, TokenTarget(said)
    )
    torch.testing.assert_close(full, plain, rtol=0, atol=0)


def test_llava_reading_the_second_to_last_layer_as_llava_1_5_does() -> None:
    """LLaVA-1.5 feeds the language model the vision tower's second-to-last hidden state,
    which Hugging Face records with its own forward hook: explained at that layer, every
    token's map still equals plain autograd."""
    model = tiny_llava()
    model.config.vision_feature_layer = -2
    image = torch.randn(1, 3, 32, 32)
    sequence, said = answer(model, image, new_tokens=3)
    wrapped = Answering(model, sequence).eval()
    raw = {"relu": False, "upsample": False, "normalize": False}
    got = GradCAM(wrapped, LAYER, **TOKENS).explain(image, TokenTarget(said), **raw).maps
    module = resolve_layer(wrapped, LAYER).module
    magnitude = GradCAMMagnitude(wrapped, LAYER, **TOKENS)
    size = magnitude.explain(image, TokenTarget(said), **raw).maps
    length = sequence.shape[1]
    for j in range(3):

        def score(logits: Tensor, p: int = length - 3 + j, t: int = int(said[0, j])) -> Tensor:
            return logits[:, p - 1, t]

        expected = reference_gradcam_at(
            wrapped, module, image, score,
            arrange=lambda t: t[:, 1:].reshape(len(t), 4, 4, t.shape[-1]).movedim(-1, 1),
        )  # fmt: skip
        assert_gradcam_close(got[:, j], expected, size[:, j], magnitude.channels)


def test_one_backward_pass_per_token_gives_the_batched_maps() -> None:
    """TokenTarget asks for one backward pass per token (a language model's batched
    backward costs its memory times the batch); a plain callable with the same scores
    takes camkit's batched passes. The maps agree."""
    model = tiny_llava()
    image = torch.randn(1, 3, 32, 32)
    sequence, said = answer(model, image, new_tokens=5)
    wrapped = Answering(model, sequence).eval()
    target = TokenTarget(said)
    assert target.backward_chunk == 1

    def same_scores(logits: Tensor) -> Tensor:  # a callable: batched backward passes
        return target(logits)

    cam = GradCAM(wrapped, LAYER, **TOKENS)
    one_by_one = cam(image, target, normalize=False)
    batched = cam(image, same_scores, normalize=False)
    scale = float(batched.abs().max())
    torch.testing.assert_close(one_by_one, batched, rtol=0, atol=1e-5 * scale)


def tiny_clip_vision() -> nn.Module:
    config = transformers.CLIPVisionConfig(
        image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.CLIPVisionModelWithProjection(config).eval()


def grad_eclip_by_hand(vision: nn.Module, x: Tensor, text: Tensor) -> Tensor:
    """Grad-ECLIP's patch map ``(N, 16)`` from the paper's equations, with the last block
    recomputed here from its weights: the similarity's gradient at the class token's
    attention output, times the patches' values, times the min-max scaled cosine of the
    class query and the patch keys (both through out_proj, as the authors' code has it)."""
    model = vision.vision_model
    block = model.encoder.layers[-1]
    attention = block.self_attn
    with torch.no_grad():
        hidden = vision(pixel_values=x, output_hidden_states=True).hidden_states[-2]
    h = block.layer_norm1(hidden)
    q, k, v = attention.q_proj(h), attention.k_proj(h), attention.v_proj(h)
    n, t, d = q.shape
    heads = attention.num_heads

    def split(z: Tensor) -> Tensor:
        return z.view(n, t, heads, d // heads).transpose(1, 2)

    weights = (split(q) @ split(k).transpose(-1, -2) * (d // heads) ** -0.5).softmax(-1)
    attended = (weights @ split(v)).transpose(1, 2).reshape(n, t, d).detach().requires_grad_()
    out = hidden + attention.out_proj(attended)
    out = out + block.mlp(block.layer_norm2(out))
    embedding = vision.visual_projection(model.post_layernorm(out[:, 0]))
    similarity = F.cosine_similarity(embedding, text[None], dim=-1)
    (gradient,) = torch.autograd.grad(similarity.sum(), attended)
    with torch.no_grad():
        project = attention.out_proj
        query = F.normalize(project(q[:, 0]), dim=-1)
        key = F.normalize(project(k[:, 1:]), dim=-1)
        cosine = (key * query[:, None]).sum(-1)
        low, high = cosine.amin(1, keepdim=True), cosine.amax(1, keepdim=True)
        loosened = (cosine - low) / (high - low)
        return torch.relu((gradient[:, :1] * v[:, 1:]).sum(-1) * loosened)


def test_grad_eclip_equals_the_equations_written_out() -> None:
    vision = tiny_clip_vision()
    torch.manual_seed(2)
    x, text = torch.randn(3, 3, 32, 32), torch.randn(16)
    attention = "vision_model.encoder.layers.1.self_attn"
    before = snapshot(vision)
    explainer = camkit.GradECLIP(vision, attention)
    target = camkit.SimilarityTarget(text, key="image_embeds")
    got = explainer(x, target, upsample=False)
    assert explainer(x, target).shape == (3, 32, 32)
    assert_untouched(before, snapshot(vision))  # (before Hugging Face adds its own hooks)
    expected = grad_eclip_by_hand(vision, x, text).view(3, 4, 4)
    low = expected.flatten(1).amin(1).view(3, 1, 1)
    high = expected.flatten(1).amax(1).view(3, 1, 1)
    torch.testing.assert_close(got, (expected - low) / (high - low), rtol=0, atol=1e-5)
    with pytest.raises(CamkitValueError, match="has no q_proj, k_proj, v_proj, out_proj"):
        camkit.GradECLIP(vision, "vision_model.encoder.layers.1.mlp")


def test_grad_eclip_text_relevance_follows_the_authors_equations() -> None:
    """Per caption, one sample at a time, as the authors' ``grad_eclip_text`` reads it:
    the gradient at the end-of-text row of each block's attention output, times the
    values, times the min-max scaled query-key cosine through out_proj, summed over the
    blocks, ReLU, the words between the first and the end-of-text token, scaled to sum 1."""
    from camkit.methods.grad_eclip import text_relevance

    config = transformers.CLIPTextConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=2, projection_dim=16, bos_token_id=1, eos_token_id=99,
        pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    text_model = transformers.CLIPTextModelWithProjection(config).eval()
    ids = torch.tensor([[1, 5, 17, 23, 99, 0, 0], [1, 42, 8, 61, 30, 11, 99]])
    image = torch.randn(16)
    blocks = ["text_model.encoder.layers.1.self_attn", "text_model.encoder.layers.2.self_attn"]
    before = snapshot(text_model)
    got = text_relevance(text_model, ids, image, blocks)
    assert_untouched(before, snapshot(text_model))
    assert got.shape == (2, 7) and bool((got >= 0).all())
    torch.testing.assert_close(got.sum(1), torch.ones(2))
    assert float(got[0, 0]) == 0 and float(got[0, 4:].abs().sum()) == 0  # BOS, EOS, padding
    for i in range(2):
        seen: dict[str, Tensor] = {}
        handles = []
        for b, name in enumerate(blocks):
            attention = text_model.get_submodule(name)
            for p in ("q_proj", "k_proj", "v_proj"):
                handles.append(getattr(attention, p).register_forward_hook(
                    lambda m, a, out, key=f"{b}{p}", seen=seen: seen.__setitem__(key, out)
                ))  # fmt: skip
            handles.append(attention.out_proj.register_forward_pre_hook(
                lambda m, a, key=f"{b}attended", seen=seen: seen.__setitem__(key, a[0])
            ))  # fmt: skip
        try:
            embedding = text_model(ids[i : i + 1]).text_embeds
            similarity = F.cosine_similarity(embedding, image[None], dim=-1).sum()
            attended = [seen[f"{b}attended"] for b in range(len(blocks))]
            grads = torch.autograd.grad(similarity, attended)
        finally:
            for handle in handles:
                handle.remove()
        eos = int(ids[i].argmax())
        maps = []
        for b, name in enumerate(blocks):
            out_proj = text_model.get_submodule(name).out_proj
            with torch.no_grad():
                q_cls = F.normalize(out_proj(seen[f"{b}q_proj"][0, eos]), dim=-1)
                k_all = F.normalize(out_proj(seen[f"{b}k_proj"][0]), dim=-1)
                cosine = (q_cls * k_all).sum(-1)
                cosine = (cosine - cosine.min()) / (cosine.max() - cosine.min())
                maps.append((grads[b][0, eos] * seen[f"{b}v_proj"][0] * cosine[:, None]).sum(-1))
        words = torch.relu(torch.stack(maps).sum(0))[1:eos]
        torch.testing.assert_close(got[i, 1:eos], words / words.sum(), rtol=1e-5, atol=1e-6)


def tiny_paligemma() -> nn.Module:
    config = transformers.PaliGemmaConfig(
        vision_config={
            "image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 2, "projection_dim": 32,
            "vision_use_head": False,
        },
        text_config={
            "vocab_size": 120, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
            "head_dim": 16,
        },
        image_token_index=100, projection_dim=32,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.PaliGemmaForConditionalGeneration(config).eval()


def test_paligemma_siglip_tokens_have_no_class_token_and_each_word_its_map() -> None:
    """PaliGemma's SigLIP tower keeps all 16 patch tokens (no CLS): prefix_tokens=0; the
    grid comes from the config; TAM reads its image tokens from the config's id."""
    model = tiny_paligemma()
    torch.manual_seed(2)
    image = torch.randn(1, 3, 32, 32)
    sequence = torch.tensor([[*[100] * 16, 2, 5, 6, 7, 8, 9, 10]])
    said = sequence[:, -3:]
    wrapped = Answering(model, sequence).eval()
    layer = "model.model.vision_tower.encoder.layers.1"
    grid = camkit.vision_language.image_grid(model.config, {})
    assert grid == (4, 4)
    options = {"layout": "tokens", "prefix_tokens": 0, "grid": grid}
    raw = {"relu": False, "upsample": False, "normalize": False}
    target = TokenTarget(said)
    got = GradCAM(wrapped, layer, **options).explain(image, target, **raw).maps
    magnitude = GradCAMMagnitude(wrapped, layer, **options)
    size = magnitude.explain(image, target, **raw).maps
    module = resolve_layer(wrapped, layer).module
    length = sequence.shape[1]

    def arrange(t: Tensor) -> Tensor:
        return t.reshape(len(t), 4, 4, t.shape[-1]).movedim(-1, 1)

    for j in range(3):
        position, token = length - 3 + j, int(said[0, j])

        def score(logits: Tensor, p: int = position, t: int = token) -> Tensor:
            return logits[:, p - 1, t]

        expected = reference_gradcam_at(wrapped, module, image, score, arrange=arrange)
        assert_gradcam_close(got[:, j], expected, size[:, j], magnitude.channels)
    tam = camkit.TAM(model, grid=grid)({"input_ids": sequence, "pixel_values": image}, target)
    assert tam.shape == (1, 3, 4, 4) and bool(tam.isfinite().all())


def tiny_llava_next() -> nn.Module:
    vision, text = tiny_configs()
    config = transformers.LlavaNextConfig(
        vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN,
        image_grid_pinpoints=[[32, 64], [64, 32], [64, 64]], vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.LlavaNextForConditionalGeneration(config).eval()


class TileAnswering(nn.Module):
    """LLaVA-NeXT with its text and image size fixed, taking tiles ``(N, C, tiles, H, W)``."""

    def __init__(self, model: nn.Module, input_ids: Tensor, image_sizes: Tensor) -> None:
        super().__init__()
        self.model = model
        self.input_ids = input_ids
        self.image_sizes = image_sizes

    def forward(self, tiles: Tensor) -> Tensor:
        logits: Tensor = self.model(
            input_ids=self.input_ids, pixel_values=tiles.movedim(2, 1),
            image_sizes=self.image_sizes,
        ).logits  # fmt: skip
        return logits


def test_llava_next_tiles_get_a_map_each_equal_to_plain_autograd() -> None:
    """A 32 x 64 image: LLaVA-NeXT's base tile (the whole image, resized) and two 32 x 32
    tiles run through the vision tower as three rows; tiles=3 gives each its map."""
    model = tiny_llava_next()
    image_tokens = 16 + 2 * 16 + 4  # the base tile, two tiles, a newline per row of tokens
    sequence = torch.tensor([[1, 5, *[IMAGE_TOKEN] * image_tokens, 7, 8, 40, 41, 42]])
    wrapped = TileAnswering(model, sequence, torch.tensor([[32, 64]])).eval()
    torch.manual_seed(3)
    tiles = torch.randn(1, 3, 3, 32, 32)
    said = sequence[:, -3:]
    layer = "model.model.vision_tower.encoder.layers.1"
    options = {"layout": "tokens", "prefix_tokens": 1, "grid": (4, 4), "tiles": 3}
    raw = {"relu": False, "upsample": False, "normalize": False}
    target = TokenTarget(said)
    with torch.no_grad():
        wrapped(tiles)  # Hugging Face adds its output recorders on the first call
    before = snapshot(wrapped)
    got = GradCAM(wrapped, layer, **options).explain(tiles, target, **raw).maps
    assert_untouched(before, snapshot(wrapped))
    assert got.shape == (1, 3, 3, 4, 4)  # (N, k, tiles, h, w)
    magnitude = GradCAMMagnitude(wrapped, layer, **options)
    size = magnitude.explain(tiles, target, **raw).maps
    module = resolve_layer(wrapped, layer).module
    length = sequence.shape[1]

    def arrange(t: Tensor) -> Tensor:  # (tiles, 1 + 16, C) -> (1, C, tiles, 4, 4)
        return t[:, 1:].reshape(1, 3, 4, 4, t.shape[-1]).movedim(-1, 1)

    for j in range(3):
        position, token = length - 3 + j, int(said[0, j])

        def score(logits: Tensor, p: int = position, t: int = token) -> Tensor:
            return logits[:, p - 1, t]

        expected = reference_gradcam_at(wrapped, module, tiles, score, arrange=arrange)
        assert_gradcam_close(got[:, j], expected, size[:, j], magnitude.channels)
    full = camkit.LayerCAM(wrapped, layer, **options)(tiles, target)
    assert full.shape == (1, 3, 3, 32, 32)  # a map per tile at the tile's size
    with pytest.raises(CamkitValueError, match="tiles"):
        GradCAM(wrapped, layer, **{**options, "tiles": 2})(tiles, target)
    with pytest.raises(CamkitValueError, match="3 tiles, so camkit cannot replace"):
        camkit.AblationCAM(wrapped, layer, **options)(tiles, target)
    # LLaVA-NeXT answers many copies with one text's logits, silently: camkit refuses
    with pytest.raises(CamkitValueError, match="follow the batch"):
        camkit.ScoreCAM(wrapped, layer, **options)(tiles, target)
    assert_untouched(before, snapshot(wrapped))


def test_tiles_round_trip_and_refuse_other_layouts() -> None:
    from camkit._engine.layout import Layout

    layout = Layout("tokens", prefix_tokens=1, grid=(2, 3), tiles=3)
    rows = torch.randn(2 * 3, 1 + 6, 5)  # two samples of three tiles, a CLS token each
    grid = layout.to_channels_first(rows, "tower")
    assert grid.shape == (2, 5, 3, 2, 3)
    torch.testing.assert_close(grid[1, :, 2, 1, 0], rows[5, 1 + 3])  # sample 1, tile 2
    torch.testing.assert_close(layout.from_channels_first(grid, rows), rows, rtol=0, atol=0)
    with pytest.raises(CamkitValueError, match="whole number of 3 tiles"):
        layout.to_channels_first(torch.randn(4, 7, 5), "tower")
    with pytest.raises(CamkitValueError, match="tiles"):
        Layout("channels_first", tiles=2)
    with pytest.raises(CamkitValueError, match="tiles"):
        Layout("tokens", grid=(2, 2, 2), token_order=(1, 2, 0), tiles=2)


class IdeficsAnswering(Answering):
    """Idefics3 with its text fixed, taking tiles ``(N, C, tiles, H, W)``."""

    def forward(self, tiles: Tensor) -> Tensor:
        logits: Tensor = self.model(
            input_ids=self.input_ids, pixel_values=tiles.movedim(2, 1)
        ).logits
        return logits


def test_idefics3_tiles_of_siglip_tokens_get_a_map_each_equal_to_plain_autograd() -> None:
    """Idefics3 (SmolVLM's architecture): SigLIP tokens without a class token, an image
    cut into tiles that run as rows of one batch; tiles=3 and prefix_tokens=0."""
    config = transformers.Idefics3Config(
        vision_config={
            "image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 2,
        },
        text_config={
            "vocab_size": 120, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
            "max_position_embeddings": 512,
        },
        image_token_id=100, scale_factor=2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.Idefics3ForConditionalGeneration(config).eval()
    sequence = torch.tensor([[1, *[100] * (4 * 3), 5, 6, 40, 41]])  # 4 tokens a tile
    wrapped = IdeficsAnswering(model, sequence).eval()
    torch.manual_seed(4)
    tiles = torch.randn(1, 3, 3, 32, 32)
    said = sequence[:, -2:]
    layer = "model.model.vision_model.encoder.layers.1"
    options = {"layout": "tokens", "prefix_tokens": 0, "grid": (4, 4), "tiles": 3}
    raw = {"relu": False, "upsample": False, "normalize": False}
    target = TokenTarget(said)
    got = GradCAM(wrapped, layer, **options).explain(tiles, target, **raw).maps
    assert got.shape == (1, 2, 3, 4, 4)
    magnitude = GradCAMMagnitude(wrapped, layer, **options)
    size = magnitude.explain(tiles, target, **raw).maps
    module = resolve_layer(wrapped, layer).module
    length = sequence.shape[1]

    def arrange(t: Tensor) -> Tensor:  # (tiles, 16, C) -> (1, C, tiles, 4, 4)
        return t.reshape(1, 3, 4, 4, t.shape[-1]).movedim(-1, 1)

    for j in range(2):
        position, token = length - 2 + j, int(said[0, j])

        def score(logits: Tensor, p: int = position, t: int = token) -> Tensor:
            return logits[:, p - 1, t]

        expected = reference_gradcam_at(wrapped, module, tiles, score, arrange=arrange)
        assert_gradcam_close(got[:, j], expected, size[:, j], magnitude.channels)


def tiny_siglip_vision() -> nn.Module:
    config = transformers.SiglipVisionConfig(
        image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, vision_use_head=True,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.SiglipVisionModel(config).eval()


class PooledEmbedding(nn.Module):
    """SigLIP's image embedding: its attention-pooling head's output."""

    def __init__(self, vision: nn.Module) -> None:
        super().__init__()
        self.vision = vision

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.vision(pixel_values=pixel_values).pooler_output  # type: ignore[no-any-return]


def test_grad_eclip_reads_siglips_pooling_probe_as_the_class_token() -> None:
    """SigLIP has no class token; its pooling head's probe queries the patches. The map,
    from the equations with the head recomputed here: the similarity's gradient at the
    probe's attention output before out_proj, times the values, times the min-max
    scaled cosine of the probe's query and the keys (both through out_proj)."""
    vision = tiny_siglip_vision()
    wrapped = PooledEmbedding(vision).eval()
    torch.manual_seed(5)
    x, text = torch.randn(2, 3, 32, 32), torch.randn(32)
    head = vision.head
    attention = head.attention
    with torch.no_grad():
        hidden = vision(pixel_values=x).last_hidden_state  # the head's input, (2, 16, 32)
    n, _, d = hidden.shape
    w_q, w_k, w_v = attention.in_proj_weight.chunk(3)
    b_q, b_k, b_v = attention.in_proj_bias.chunk(3)
    probe = head.probe.expand(n, -1, -1)
    q, k, v = F.linear(probe, w_q, b_q), F.linear(hidden, w_k, b_k), F.linear(hidden, w_v, b_v)
    heads = attention.num_heads

    def split(z: Tensor) -> Tensor:
        return z.view(n, len(z[0]), heads, d // heads).transpose(1, 2)

    weights = (split(q) @ split(k).transpose(-1, -2) * (d // heads) ** -0.5).softmax(-1)
    attended = (weights @ split(v)).transpose(1, 2).reshape(n, 1, d).detach().requires_grad_()
    out = attention.out_proj(attended)
    with torch.no_grad():  # the recomputation is the head's own attention
        torch.testing.assert_close(out, attention(probe, hidden, hidden)[0])
    out = out + head.mlp(head.layernorm(out))
    similarity = F.cosine_similarity(out[:, 0], text[None], dim=-1)
    (gradient,) = torch.autograd.grad(similarity.sum(), attended)
    with torch.no_grad():
        query = F.normalize(attention.out_proj(q[:, 0]), dim=-1)
        key = F.normalize(attention.out_proj(k), dim=-1)
        cosine = (key * query[:, None]).sum(-1)
        low, high = cosine.amin(1, keepdim=True), cosine.amax(1, keepdim=True)
        patches = torch.relu((gradient * v).sum(-1) * (cosine - low) / (high - low))
    expected = patches.view(n, 4, 4)
    low = expected.flatten(1).amin(1).view(n, 1, 1)
    high = expected.flatten(1).amax(1).view(n, 1, 1)
    explainer = camkit.GradECLIP(wrapped, "vision.head.attention", prefix_tokens=0)
    got = explainer(x, camkit.SimilarityTarget(text), upsample=False)
    torch.testing.assert_close(got, (expected - low) / (high - low), rtol=0, atol=1e-5)
    assert float((high - low).min()) > 0  # the maps are not flat
    not_batch_first = nn.Sequential(nn.MultiheadAttention(8, 2))
    with pytest.raises(CamkitValueError, match="not batch first"):
        camkit.GradECLIP(not_batch_first, "0")


class TextAsInput(nn.Module):
    """LLaVA taking the image first and the text as a keyword input, which camkit picks
    the rows of for every copy a method makes."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: Tensor, input_ids: Tensor) -> Tensor:
        logits: Tensor = self.model(input_ids=input_ids, pixel_values=pixel_values).logits
        return logits


def test_methods_that_rerun_the_model_need_the_text_to_follow_the_batch() -> None:
    """Score-CAM runs the model on masked copies of the images: with the text fixed in a
    wrapper, the model sees one text for many copies, a clear error; with the text as
    forward_kwargs, camkit picks each copy's row, and a batch equals its samples alone."""
    model = tiny_llava()
    torch.manual_seed(6)
    images = torch.randn(2, 3, 32, 32)
    sequences = torch.cat([answer(model, images[i : i + 1], 3)[0] for i in range(2)])
    said = sequences[:, -3:]
    fixed = Answering(model, sequences[:1]).eval()
    with pytest.raises(CamkitModelError, match="image tokens do not match"):  # LLaVA refuses
        camkit.ScoreCAM(fixed, LAYER, **TOKENS)(images[:1], TokenTarget(said[:1]))
    wrapped = TextAsInput(model).eval()
    cam = camkit.ScoreCAM(wrapped, LAYER, **TOKENS, batch_size=8)
    both = cam(images, TokenTarget(said), forward_kwargs={"input_ids": sequences})
    assert both.shape == (2, 3, 32, 32)
    for i in range(2):
        alone = cam(images[i : i + 1], TokenTarget(said[i : i + 1]),
                    forward_kwargs={"input_ids": sequences[i : i + 1]})  # fmt: skip
        torch.testing.assert_close(both[i], alone[0], rtol=0, atol=1e-5)


def test_the_helpers_refuse_arguments_of_the_wrong_kind_with_camkits_error() -> None:
    """patchify and image_grid, given each argument ten wrong values: camkit's error naming
    it, never a raw ZeroDivisionError, AttributeError or IndexError."""
    from types import SimpleNamespace

    from camkit.errors import CamkitError
    from camkit.vision_language import image_grid, patchify
    from tests.helpers import WRONG_VALUES

    image = torch.rand(1, 3, 28, 28)
    grids = {"image_grid_thw": torch.tensor([[1, 4, 6], [1, 2, 2]])}
    config = SimpleNamespace(vision_config=SimpleNamespace(spatial_merge_size=2))
    calls = {
        "images": lambda v: patchify(v, 14),
        "patch_size": lambda v: patchify(image, v),
        "merge_size": lambda v: patchify(image, 14, merge_size=v),
        "temporal_patch_size": lambda v: patchify(image, 14, temporal_patch_size=v),
        "inputs": lambda v: image_grid(config, v),
        "index": lambda v: image_grid(config, grids, index=v),
    }
    wrong = [*WRONG_VALUES, 2, torch.ones(2), torch.ones(1, 3, 28, 28, dtype=torch.long)]
    right = {"index": (0, 1), "patch_size": (1, 2), "merge_size": (1, 2),
             "temporal_patch_size": (1, 2)}  # fmt: skip
    for name, call in calls.items():
        for value in wrong:
            if type(value) is int and value in right.get(name, ()):
                continue
            with pytest.raises(CamkitError, match=f"^{name}: "):
                call(value)
    assert image_grid(config, grids, index=1) == (1, 1)
    assert image_grid(config, grids, index=torch.tensor(0)) == (2, 3)
