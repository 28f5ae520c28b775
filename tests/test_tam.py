"""TAM (Token Activation Map): checked against the authors' equations written out here the
way their code (github.com/xmed-lab/TAM, ``tam.py``) computes them, round by round from
``generate``'s hidden states, with numpy loops; and by hand on its parts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import camkit
from camkit import TAM, TokenTarget
from camkit.errors import CamkitTypeError, CamkitValueError
from camkit.methods.tam import rank_gaussian_filter
from camkit.vision_language import image_grid
from tests.helpers import assert_untouched, snapshot
from tests.test_vision_language import tiny_llava as llava_of_size

transformers = pytest.importorskip("transformers")

IMAGE_TOKEN = 99
EPS = float(torch.finfo(torch.float32).eps)


def tiny_llava() -> nn.Module:
    """The vision-language tests' LLaVA on 48 x 48 images: 6 x 6 image tokens."""
    return llava_of_size(48)


GRID = (6, 6)  # 48 / 8
PROMPT = [1, 5, *[IMAGE_TOKEN] * 36, 7, 8, 9, 10, 11, 12]
TEXT = list(range(38, 44))  # the prompt's words after the image: 7 ... 12


def generated(model: nn.Module, image: Tensor, new_tokens: int) -> tuple[Tensor, list[Tensor]]:
    """The authors' inputs: the sequence, and each round's logits from the hidden states."""
    out = model.generate(
        input_ids=torch.tensor([PROMPT]), pixel_values=image, max_new_tokens=new_tokens,
        min_new_tokens=new_tokens, do_sample=False, suppress_tokens=[IMAGE_TOKEN],
        output_hidden_states=True, return_dict_in_generate=True,
    )  # fmt: skip
    with torch.no_grad():
        logits = [model.lm_head(feats[-1]) for feats in out.hidden_states]
    return out.sequences, logits


def authors_filter(img: np.ndarray, kernel_size: int = 3) -> np.ndarray:
    """The rank Gaussian filter, loop by loop as the authors write it."""
    out = np.zeros_like(img)
    pad = kernel_size // 2
    padded = np.pad(img, pad, mode="reflect")
    ax = np.arange(kernel_size**2) - kernel_size**2 // 2
    for i in range(pad, img.shape[0] + pad):
        for j in range(pad, img.shape[1] + pad):
            window = np.sort(padded[i - pad : i + pad + 1, j - pad : j + pad + 1].flatten())
            mean = window.mean()
            if mean > 0:
                sigma = window.std() / mean
                kernel = np.exp(-(ax**2) / (2 * sigma**2))
                out[i - pad, j - pad] = (window * kernel / kernel.sum()).sum()
    return out


def authors_tam(tokens: list[int], logits: list[Tensor], prompt: list[int]) -> list[np.ndarray]:
    """TAM for every generated token, the authors' way: round r's scores are the
    concatenated logits of rounds 0..r; prompt scores at the prompt's positions, then the
    last prompt position, then the answer's; ECI over the earlier text with a least-squares
    scale; joint min-max with the text scores but the token's own; the filter.

    camkit's stated departures are taken: every context token's map uses its own class
    (the authors give the first answer token the class of the token before it, and the
    first prompt token the class predicted after it), and repeats are compared by id."""
    length = logits[0].shape[1]
    image = [i for i, t in enumerate(tokens[:length]) if t == IMAGE_TOKEN]
    text_ids = [tokens[p] for p in prompt] + tokens[length:]
    everything = torch.cat(logits, 1)[0].float().numpy()  # (positions, vocabulary)
    maps_of = [np.clip(everything[:, c], 0, None)[image] for c in text_ids]
    results = []
    for r in range(len(logits)):
        cls = tokens[length + r]
        scores = np.clip(
            np.concatenate([lg[0, :, cls].float().numpy() for lg in logits[: r + 1]]), 0, None
        )
        txt = np.concatenate([scores[prompt], scores[length - 1 : length], scores[length:]])
        img = scores[image]
        here = len(prompt) + r  # this token's index among the text
        keep = [i for i in range(here) if text_ids[i] != text_ids[here]]
        if keep:
            w = txt[keep] / (txt[keep].sum() + 1e-8)
            interference = (np.stack([maps_of[i] for i in keep]) * w[:, None]).sum(0)
            scale = (img * interference).sum() / (interference * interference).sum()
            img = np.clip(img - interference * scale, 0, None)
        joint = np.concatenate([img, txt[:-1]])
        img = (img - joint.min()) / (joint.max() - joint.min())
        results.append(authors_filter(img.reshape(GRID)))
    return results


def test_tam_equals_the_authors_equations_for_every_generated_token() -> None:
    model = tiny_llava()
    torch.manual_seed(1)
    image = torch.randn(1, 3, 48, 48)
    sequence, logits = generated(model, image, new_tokens=12)
    expected = np.stack(authors_tam(sequence[0].tolist(), logits, TEXT))
    said = sequence[:, len(PROMPT) :]
    result = TAM(model, grid=GRID).explain(
        {"input_ids": sequence, "pixel_values": image}, TokenTarget(said), prompt=TEXT
    )
    assert result.maps.shape == (1, 12, *GRID)
    assert torch.equal(result.classes, said)
    # generate's cached rounds and camkit's one teacher-forced pass round differently:
    # float32 sums of 32 terms in two layers, then scaled by each map's span
    got = result.maps[0].numpy()
    assert np.isfinite(expected).all()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    assert (got > 1e-3).any(axis=(1, 2)).all()  # no token's map is empty here
    # the causal inference step matters here: without it the maps differ
    plain = TAM(model, grid=GRID, causal_inference=False).explain(
        {"input_ids": sequence, "pixel_values": image}, TokenTarget(said), prompt=TEXT
    )
    assert float((plain.maps[0] - result.maps[0]).abs().max()) > 0.05
    # the scores are the tokens' logits at the positions before them
    teacher = model(input_ids=sequence, pixel_values=image).logits[0]
    rows = torch.arange(len(PROMPT) - 1, sequence.shape[1] - 1)
    torch.testing.assert_close(result.scores[0], teacher[rows, said[0]].detach())


def test_each_step_can_be_switched_off_and_the_raw_map_is_the_logit_lens() -> None:
    model = tiny_llava()
    torch.manual_seed(2)
    image = torch.randn(1, 3, 48, 48)
    sequence, _ = generated(model, image, new_tokens=5)
    inputs = {"input_ids": sequence, "pixel_values": image}
    said = sequence[:, len(PROMPT) :]
    raw = TAM(model, grid=GRID, causal_inference=False, rank_filter=False, scale=None)
    maps = raw.explain(inputs, TokenTarget(said)).maps[0]
    with torch.no_grad():
        logits = model(**inputs).logits[0]
    image_rows = torch.arange(2, 38)
    expected = logits[image_rows][:, said[0]].T.clamp_min(0).reshape(5, *GRID)
    bound = 64 * EPS * float(logits.abs().max())
    torch.testing.assert_close(maps, expected, rtol=0, atol=bound)
    # with every step, each map is the filter of a scaled, interference-free map in [0, 1]
    full = TAM(model, grid=GRID).explain(inputs, TokenTarget(said)).maps[0]
    assert float(full.min()) >= 0 and float(full.max()) <= 1 + 1e-6
    per_map = TAM(model, grid=GRID, scale="map").explain(inputs, TokenTarget(said)).maps[0]
    assert torch.allclose(per_map.flatten(1).amax(1), torch.ones(5))


def test_causal_inference_removes_a_context_words_map_by_hand() -> None:
    """A head built so that the explained token's map is its own pattern plus 3 times a
    context word's: ECI (one context word, its weight normalised to 1) removes exactly
    the context word's part."""

    class Toy(nn.Module):
        def __init__(self, hidden: Tensor) -> None:
            super().__init__()
            self.hidden = hidden
            self.lm_head = nn.Linear(2, 3, bias=False)
            with torch.no_grad():
                self.lm_head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 1.0]]))

        def forward(self, input_ids: Tensor) -> Tensor:
            return self.lm_head(self.hidden)  # type: ignore[no-any-return]

    # positions: 4 image tokens (id 9), the prompt word (id 0), the answer (id 2)
    own = torch.tensor([0.0, 2.0, 0.0, 1.0])  # the explained token's own pattern (dim 1)
    other = torch.tensor([1.0, 0.0, 2.0, 0.0])  # the context word's (dim 0)
    hidden = torch.zeros(1, 6, 2)
    hidden[0, :4, 0], hidden[0, :4, 1] = other, own
    hidden[0, 4] = torch.tensor([1.0, 0.0])  # where the word sits: class 2 reads 3
    hidden[0, 5] = torch.tensor([0.0, 1.0])
    ids = torch.tensor([[9, 9, 9, 9, 0, 2]])
    tam = TAM(Toy(hidden), image_token=9, grid=(2, 2), rank_filter=False, scale=None)
    raw = TAM(Toy(hidden), image_token=9, grid=(2, 2), rank_filter=False, scale=None,
              causal_inference=False)  # fmt: skip
    target = TokenTarget([2], positions=[5])
    torch.testing.assert_close(raw({"input_ids": ids}, target)[0, 0].flatten(), 3 * other + own)
    # interference = the word's map (class 0 over the image) = other; the least-squares
    # scale of 3*other + own on other is 3 + <own, other>/|other|^2 = 3 (they are orthogonal)
    torch.testing.assert_close(tam({"input_ids": ids}, target)[0, 0].flatten(), own)
    # a context word with the explained token's own id is left out: nothing is removed
    same = torch.tensor([[9, 9, 9, 9, 2, 2]])
    torch.testing.assert_close(tam({"input_ids": same}, target)[0, 0].flatten(), 3 * other + own)


def test_rank_gaussian_filter_equals_the_authors_loop() -> None:
    generator = torch.Generator().manual_seed(3)
    maps = torch.rand(3, 7, 5, generator=generator, dtype=torch.float64)
    maps[0, :3, :3] = 0  # windows whose mean is 0
    got = rank_gaussian_filter(maps)
    for m, one in zip(maps, got, strict=True):
        np.testing.assert_allclose(one.numpy(), authors_filter(m.numpy()), rtol=1e-12, atol=0)
    big = rank_gaussian_filter(maps, kernel_size=5)
    np.testing.assert_allclose(big[1].numpy(), authors_filter(maps[1].numpy(), 5), rtol=1e-12)
    # a constant positive window keeps its value (the authors' division by a zero sigma
    # gives NaN there); the filter is homogeneous: scaling a map scales its result
    assert rank_gaussian_filter(torch.full((1, 4, 4), 0.5)).eq(0.5).all()
    torch.testing.assert_close(rank_gaussian_filter(3 * maps), 3 * got)


def test_video_grids_are_filtered_frame_by_frame_and_maps_upsample() -> None:
    model = tiny_llava()
    torch.manual_seed(4)
    image = torch.randn(1, 3, 48, 48)
    sequence, _ = generated(model, image, new_tokens=3)
    inputs = {"input_ids": sequence, "pixel_values": image}
    target = TokenTarget(sequence[:, len(PROMPT) :])
    flat = TAM(model, grid=(1, 6, 6)).explain(inputs, target).maps
    assert flat.shape == (1, 3, 1, 6, 6)
    torch.testing.assert_close(flat[:, :, 0], TAM(model, grid=GRID)(inputs, target))
    frames = TAM(model, grid=(4, 3, 3), scale=None, causal_inference=False)(inputs, target)
    raw = TAM(model, grid=(4, 3, 3), scale=None, causal_inference=False, rank_filter=False)
    unfiltered = raw(inputs, target)
    torch.testing.assert_close(
        frames, rank_gaussian_filter(unfiltered.view(-1, 3, 3)).view(1, 3, 4, 3, 3)
    )
    big = TAM(model, grid=GRID).explain(inputs, target, size=(48, 48)).maps
    assert big.shape == (1, 3, 48, 48)


def test_a_batch_of_two_is_each_sequence_alone_and_the_model_is_untouched() -> None:
    model = tiny_llava()
    torch.manual_seed(5)
    images = torch.randn(2, 3, 48, 48)
    sequences = torch.cat([generated(model, images[i : i + 1], 4)[0] for i in range(2)])
    said = sequences[:, len(PROMPT) :]
    model.train()  # generate ran once: Hugging Face's output recorders are in place
    before = snapshot(model)
    both = TAM(model, grid=GRID)(
        {"input_ids": sequences, "pixel_values": images}, TokenTarget(said)
    )
    assert_untouched(before, snapshot(model))
    for i in range(2):
        alone = TAM(model, grid=GRID)(
            {"input_ids": sequences[i : i + 1], "pixel_values": images[i : i + 1]},
            TokenTarget(said[i : i + 1]),
        )
        torch.testing.assert_close(both[i], alone[0], rtol=0, atol=1e-5)


def test_image_grid_reads_configs_and_inputs() -> None:
    model = tiny_llava()
    assert image_grid(model.config, {}) == (6, 6)
    qwen = transformers.Qwen2VLConfig(vision_config={"spatial_merge_size": 2})
    assert image_grid(qwen, {"image_grid_thw": torch.tensor([[1, 16, 22]])}) == (8, 11)
    assert image_grid(qwen, {"video_grid_thw": torch.tensor([[4, 8, 8]])}) == (4, 4, 4)
    with pytest.raises(CamkitValueError, match="grid"):
        image_grid(object(), {})


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda m, i, t: TAM(m, "model.multi_modal_projector"), CamkitValueError, "Linear"),
        (lambda m, i, t: TAM(m, kernel_size=2), CamkitValueError, "kernel_size"),
        (lambda m, i, t: TAM(m, scale="both"), CamkitValueError, "scale"),
        (lambda m, i, t: TAM(m, grid=(5, 5))(i, t), CamkitValueError, "36 image tokens"),
        (lambda m, i, t: TAM(m)(i, 3), CamkitTypeError, "TokenTarget"),
        (
            lambda m, i, t: TAM(m)({"pixel_values": i["pixel_values"]}, t),
            CamkitTypeError,
            "input_ids",
        ),
        (lambda m, i, t: TAM(m)(i, TokenTarget([5], positions=[10])), CamkitValueError, "before"),
        (lambda m, i, t: TAM(m)(i, TokenTarget([500])), CamkitValueError, "vocabulary"),
        (lambda m, i, t: TAM(m)(i, t, prompt=[50]), CamkitValueError, "prompt"),
        (lambda m, i, t: TAM(m, image_token=3)(i, t), CamkitValueError, "no image token"),
    ],
)
def test_tam_refuses_bad_input(call: object, error: type, message: str) -> None:
    model = tiny_llava()
    inputs = {
        "input_ids": torch.tensor([[*PROMPT, 20, 21]]),
        "pixel_values": torch.randn(1, 3, 48, 48),
    }
    with torch.no_grad():
        model(**inputs)  # Hugging Face adds its output recorders on the first call
    before = snapshot(model)
    with pytest.raises(error, match=message):
        call(model, inputs, TokenTarget([20, 21]))  # type: ignore[operator]
    assert_untouched(before, snapshot(model))


def test_tam_is_exported_and_declares_its_settings() -> None:
    assert camkit.TAM is TAM
    settings = TAM(tiny_llava(), grid=GRID).settings()
    assert (
        settings["method"] == "TAM" and settings["grid"] == GRID and settings["head"] == "lm_head"
    )
