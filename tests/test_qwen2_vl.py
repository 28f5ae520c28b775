"""Qwen2-VL, built from a small configuration: images as its processor's flattened patches,
its vision blocks' merged-token layout, and every answer token's map against plain
autograd with the patch grid rebuilt index by index."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import camkit
from camkit import GradCAM, TokenTarget
from camkit.errors import CamkitValueError
from camkit.vision_language import image_grid, patchify
from tests.helpers import assert_untouched, snapshot

transformers = pytest.importorskip("transformers")

IMAGE, VIDEO, VISION_START, VISION_END = 100, 101, 102, 103
PATCH, MERGE = 4, 2
HEIGHT, WIDTH = 16, 24  # 4 x 6 patches, 2 x 3 merged image tokens
GRID = (HEIGHT // PATCH, WIDTH // PATCH)
TOKENS = GRID[0] * GRID[1] // MERGE**2
EPS = float(torch.finfo(torch.float32).eps)


def tiny_qwen2_vl() -> nn.Module:
    config = transformers.Qwen2VLConfig(
        vision_config={
            "depth": 2, "embed_dim": 32, "hidden_size": 32, "num_heads": 2, "mlp_ratio": 2,
            "patch_size": PATCH, "spatial_merge_size": MERGE, "temporal_patch_size": 2,
        },
        text_config={
            "vocab_size": 120, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
            "max_position_embeddings": 512,
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        },
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.Qwen2VLForConditionalGeneration(config).eval()


class Answering(nn.Module):
    """Qwen2-VL with its text fixed, taking images ``(N, 3, H, W)`` first, as a CAM calls it."""

    def __init__(self, model: nn.Module, input_ids: Tensor) -> None:
        super().__init__()
        self.model = model
        self.input_ids = input_ids

    def forward(self, images: Tensor) -> Tensor:
        pixel_values, grid = patchify(images, PATCH, MERGE)
        logits: Tensor = self.model(
            input_ids=self.input_ids, pixel_values=pixel_values, image_grid_thw=grid,
            mm_token_type_ids=(self.input_ids == IMAGE).int(),
        ).logits  # fmt: skip
        return logits


def sequences(n: int, answer: list[list[int]]) -> Tensor:
    prompt = [1, VISION_START, *[IMAGE] * TOKENS, VISION_END, 5, 6]
    return torch.tensor([prompt + a for a in answer[:n]])


def test_patchify_lays_out_patches_as_the_image_processor_does() -> None:
    processor = transformers.Qwen2VLImageProcessor(
        patch_size=PATCH, merge_size=MERGE, temporal_patch_size=2, do_resize=False,
        do_rescale=False, do_normalize=False,
    )  # fmt: skip
    images = torch.randn(2, 3, HEIGHT, WIDTH)
    expected = processor(images=list(images), return_tensors="pt")
    pixel_values, grid = patchify(images, PATCH, MERGE)
    torch.testing.assert_close(pixel_values, expected["pixel_values"], rtol=0, atol=0)
    assert torch.equal(grid, expected["image_grid_thw"])
    model = tiny_qwen2_vl()
    assert image_grid(model.config, {"image_grid_thw": grid}) == (GRID[0] // 2, GRID[1] // 2)
    with pytest.raises(CamkitValueError, match="multiples of patch_size"):
        patchify(torch.randn(1, 3, 18, 24), PATCH, MERGE)


def block_output_by_hand(
    model: nn.Module,
    answering: nn.Module,
    x: Tensor,
    said: Tensor,
    block: str,
    grid: tuple[int, int, int],
) -> tuple[Tensor, Tensor]:
    """The block's output (N, C, t, h, w) and each token's gradient (N, k, C, t, h, w), the
    place of each token found by counting through the frame groups and the blocks of 2 x 2
    patches, one token at a time."""  # fmt: skip
    kept: list[Tensor] = []
    handle = model.get_submodule(block).register_forward_hook(lambda m, i, o: kept.append(o))
    try:
        logits = answering(x)
    finally:
        handle.remove()
    flat = kept[0]  # (N * t * h * w, C), no batch axis
    n, k = said.shape
    t, h, w = grid
    where = []
    for token in range(n * t * h * w):
        sample, j = divmod(token, t * h * w)
        frame, j = divmod(j, h * w)
        block_index, inside = divmod(j, MERGE * MERGE)
        row_block, col_block = divmod(block_index, w // MERGE)
        row = row_block * MERGE + inside // MERGE
        col = col_block * MERGE + inside % MERGE
        where.append((sample, frame, row, col))
    length = answering.input_ids.shape[1]
    grads = []
    for j in range(k):
        score = logits[torch.arange(n), length - k + j - 1, said[:, j]].sum()
        (grad,) = torch.autograd.grad(score, flat, retain_graph=True)
        grads.append(grad)

    def grid_of(values: Tensor) -> Tensor:
        out = torch.zeros(n, values.shape[1], t, h, w)
        for token, (sample, frame, row, col) in enumerate(where):
            out[sample, :, frame, row, col] = values[token]
        return out

    return grid_of(flat.detach()), torch.stack([grid_of(g) for g in grads], 1)


def grad_cam_by_hand(activations: Tensor, grads: Tensor) -> Tensor:
    """Grad-CAM's maps (N, k, t, h, w): channel weights averaged over every position."""
    weights = grads.mean(dim=(3, 4, 5))  # (N, k, C)
    return torch.einsum("nkc,ncthw->nkthw", weights, activations).clamp_min(0)


def rounding_bound(activations: Tensor, grads: Tensor) -> float:
    """float32 rounding of the channel sums: 64 eps times the largest sum of magnitudes."""
    weights = grads.mean(dim=(3, 4, 5)).abs()
    return 64 * EPS * float(torch.einsum("nkc,ncthw->nkthw", weights, activations.abs()).max())


def test_every_answer_tokens_map_at_a_vision_block_equals_plain_autograd() -> None:
    model = tiny_qwen2_vl()
    said = torch.tensor([[7, 8, 9], [10, 11, 12]])
    input_ids = sequences(2, said.tolist())
    images = torch.randn(2, 3, HEIGHT, WIDTH)
    block = "model.visual.blocks.1"
    answering = Answering(model, input_ids)
    activations, grads = block_output_by_hand(model, answering, images, said, block, (1, *GRID))
    expected = grad_cam_by_hand(activations, grads)[:, :, 0]
    bound = rounding_bound(activations, grads)
    cam = GradCAM(Answering(model, input_ids), f"model.{block}", layout="merged_tokens",
                  grid=GRID, merge_size=MERGE)  # fmt: skip
    before = snapshot(model)
    got = cam.explain(images, TokenTarget(said), upsample=False, normalize=False).maps
    assert_untouched(before, snapshot(model))
    assert got.shape == (2, 3, *GRID)
    torch.testing.assert_close(got, expected, rtol=0, atol=bound)
    assert float(expected.amax()) > 100 * bound  # the maps are not all zero
    full = cam(images, TokenTarget(said))
    assert full.shape == (2, 3, HEIGHT, WIDTH)
    # the merger's output lies on the merged grid, row-major: merge_size 1
    merged = GradCAM(Answering(model, input_ids), "model.model.visual.merger",
                     layout="merged_tokens", grid=(GRID[0] // 2, GRID[1] // 2))  # fmt: skip
    assert merged(images, TokenTarget(said), upsample=False).shape == (2, 3, 2, 3)


def test_merged_tokens_round_trip_and_refuse_what_does_not_fit() -> None:
    from camkit._engine.layout import Layout

    layout = Layout("merged_tokens", grid=(2, 4, 6), merge_size=2)  # a clip: 2 frames
    tokens = torch.randn(3 * 48, 5)
    grid = layout.to_channels_first(tokens, "block")
    assert grid.shape == (3, 5, 2, 4, 6)
    torch.testing.assert_close(layout.from_channels_first(grid, tokens), tokens, rtol=0, atol=0)
    # token 5 of sample 1: block 1 (row 0, columns 2-3), its second patch (row 0, column 3)
    torch.testing.assert_close(grid[1, :, 0, 0, 3], tokens[48 + 5])
    with pytest.raises(CamkitValueError, match="multiple of the 48 tokens"):
        layout.to_channels_first(torch.randn(50, 5), "block")
    with pytest.raises(CamkitValueError, match="blocks"):
        Layout("merged_tokens", grid=(5, 6), merge_size=2)
    with pytest.raises(CamkitValueError, match="patch grid"):
        Layout("merged_tokens", grid=None, merge_size=2)
    model = tiny_qwen2_vl()
    input_ids = sequences(1, [[7, 8]])
    cam = GradCAM(Answering(model, input_ids), "model.model.visual.blocks.1",
                  layout="merged_tokens", grid=(4, 4), merge_size=MERGE)  # fmt: skip
    with pytest.raises(CamkitValueError, match="grid"):
        cam(torch.randn(1, 3, HEIGHT, WIDTH), TokenTarget([7, 8]))
    ablation = camkit.AblationCAM(Answering(model, input_ids), "model.model.visual.blocks.1",
                                  layout="merged_tokens", grid=GRID, merge_size=MERGE)  # fmt: skip
    with pytest.raises(CamkitValueError, match="merged tokens, so camkit cannot replace"):
        ablation(torch.randn(1, 3, HEIGHT, WIDTH), TokenTarget([7, 8]))
    assert camkit.GradCAM(model, "model.visual.blocks.1").settings()["merge_size"] == 1


class VideoAnswering(Answering):
    """Qwen2-VL with its text fixed, taking clips ``(N, 3, T, H, W)`` first."""

    def forward(self, clips: Tensor) -> Tensor:
        pixel_values, grid = patchify(clips, PATCH, MERGE)
        logits: Tensor = self.model(
            input_ids=self.input_ids, pixel_values_videos=pixel_values, video_grid_thw=grid,
            mm_token_type_ids=2 * (self.input_ids == VIDEO).int(),
        ).logits  # fmt: skip
        return logits


def test_a_clip_gets_a_map_per_frame_group_equal_to_plain_autograd() -> None:
    processor = transformers.Qwen2VLVideoProcessor()
    clips = torch.randn(2, 3, 4, HEIGHT, WIDTH)  # 4 frames: 2 groups of 2
    expected_patches, *_ = processor.patchify(clips.movedim(1, 2), PATCH, MERGE, 2)
    pixel_values, grid = patchify(clips, PATCH, MERGE)
    torch.testing.assert_close(pixel_values, expected_patches.flatten(0, 1), rtol=0, atol=0)
    assert grid.tolist() == [[2, *GRID], [2, *GRID]]
    odd, odd_grid = patchify(clips[:, :, :3], PATCH, MERGE)  # the last frame is repeated
    torch.testing.assert_close(odd, patchify(clips[:, :, [0, 1, 2, 2]], PATCH, MERGE)[0])
    assert odd_grid.tolist() == grid.tolist()

    model = tiny_qwen2_vl()
    said = torch.tensor([[7, 8], [9, 10]])
    prompt = [1, VISION_START, *[VIDEO] * (2 * TOKENS), VISION_END, 5, 6]
    input_ids = torch.tensor([prompt + a for a in said.tolist()])
    answering = VideoAnswering(model, input_ids)
    block = "model.visual.blocks.1"
    activations, grads = block_output_by_hand(model, answering, clips, said, block, (2, *GRID))
    expected = grad_cam_by_hand(activations, grads)
    cam = GradCAM(answering, f"model.{block}", layout="merged_tokens", grid=(2, *GRID),
                  merge_size=MERGE)  # fmt: skip
    got = cam.explain(clips, TokenTarget(said), upsample=False, normalize=False).maps
    assert got.shape == (2, 2, 2, *GRID)
    bound = rounding_bound(activations, grads)
    torch.testing.assert_close(got, expected, rtol=0, atol=bound)
    assert float(expected.amax()) > 100 * bound
    per_frame = cam(clips, TokenTarget(said))  # upsampled over time too: one map per frame
    assert per_frame.shape == (2, 2, 4, HEIGHT, WIDTH)
