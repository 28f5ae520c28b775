"""Layer names beyond a module: which call of a reused module, which part of a container output.

Each map is checked against plain autograd at the same call and element, or
against a twin model that computes the same function with separate modules
(a siamese network's shared encoder against two copies of it; a module that
returns a container against one that returns the tensor).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import camkit
from camkit.layers import LayerRef, find_layer, resolve_layer
from tests.helpers import (
    GradCAMMagnitude,
    assert_gradcam_close,
    assert_untouched,
    finish,
    reference_gradcam,
    reference_gradcam_at,
    snapshot,
)

METHODS: dict[str, Callable[[nn.Module, Any], camkit.BaseCAM]] = {
    "GradCAM": lambda m, layer: camkit.GradCAM(m, layer),
    "GradCAMPlusPlus": lambda m, layer: camkit.GradCAMPlusPlus(m, layer),
    "XGradCAM": lambda m, layer: camkit.XGradCAM(m, layer),
    "HiResCAM": lambda m, layer: camkit.HiResCAM(m, layer),
    "LayerCAM": lambda m, layer: camkit.LayerCAM(m, layer),
    "EigenCAM": lambda m, layer: camkit.EigenCAM(m, layer),
    "ScoreCAM": lambda m, layer: camkit.ScoreCAM(m, layer, batch_size=8),
    "AblationCAM": lambda m, layer: camkit.AblationCAM(m, layer, batch_size=8),
}


class Encoder(nn.Module):
    """A conv block that returns its features in a container (``kind``) or as a tensor."""

    def __init__(self, kind: str = "tensor") -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.relu = nn.ReLU()
        self.kind = kind

    def forward(self, x: Tensor) -> Any:
        features = self.relu(self.conv(x))
        summary = features.mean(dim=(2, 3))
        if self.kind == "tuple":
            return features, summary
        if self.kind == "dict":
            return OrderedDict([("0", summary), ("features", features)])
        return features


def features(output: Any) -> Tensor:
    if isinstance(output, tuple):
        return output[0]
    return output["features"] if isinstance(output, dict) else output


class Siamese(nn.Module):
    """Two views through one shared encoder (or two copies of it, ``twin=True``)."""

    def __init__(self, kind: str = "tensor", twin: bool = False) -> None:
        super().__init__()
        self.encoder = Encoder(kind)
        self.other = copy.deepcopy(self.encoder) if twin else self.encoder
        self.head = nn.Linear(2 * 4 * 6 * 6, 3)

    def forward(self, x: Tensor) -> Tensor:
        a = features(self.encoder(x))
        b = features(self.other(x.flip(-1) * 0.5))
        return self.head(torch.cat([a.flatten(1), b.flatten(1)], dim=1))


def _x() -> Tensor:
    return torch.randn(3, 1, 8, 8)


def _twins(kind: str) -> tuple[nn.Module, nn.Module]:
    shared = Siamese(kind).eval()
    twin = Siamese("tensor", twin=True).eval()
    twin.load_state_dict(shared.state_dict(), strict=False)
    twin.other.load_state_dict(shared.encoder.state_dict())
    return shared, twin


@pytest.mark.parametrize(
    ("layer", "call"), [("encoder@0", 0), ("encoder@1", 1), ("encoder", 1), ("encoder@-2", 0)]
)
def test_each_call_of_a_shared_module_matches_plain_autograd(layer: str, call: int) -> None:
    model, x = Siamese().eval(), _x()
    got = camkit.GradCAM(model, layer)(x, target=2)
    raw = reference_gradcam_at(model, model.encoder, x, lambda out: out[:, 2], call=call)
    torch.testing.assert_close(got.double(), finish(raw, (8, 8)), atol=1e-5, rtol=1e-4)


def test_the_two_calls_of_a_shared_module_have_their_own_maps() -> None:
    model, x = Siamese().eval(), _x()
    first = camkit.GradCAM(model, "encoder@0")(x, target=2)
    second = camkit.GradCAM(model, "encoder@1")(x, target=2)
    assert not torch.allclose(first, second)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("shared_layer", "twin_layer"), [("encoder@0", "encoder"), ("encoder@1", "other")]
)
def test_a_call_of_a_shared_module_equals_its_own_copy(
    method: str, shared_layer: str, twin_layer: str
) -> None:
    shared, twin = _twins("tensor")
    x = _x()
    got = METHODS[method](shared, shared_layer)(x, target=1)
    expected = METHODS[method](twin, twin_layer)(x, target=1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("kind", "layer"),
    [("tuple", "encoder@0[0]"), ("dict", "encoder@0['features']"), ("dict", "encoder@0[features]")],
)
def test_an_element_of_a_container_output_equals_the_plain_tensor(
    method: str, kind: str, layer: str
) -> None:
    shared, twin = _twins(kind)
    x = _x()
    got = METHODS[method](shared, layer)(x, target=0)
    expected = METHODS[method](twin, "encoder")(x, target=0)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_an_element_of_a_container_output_matches_plain_autograd() -> None:
    model, x = Siamese("tuple").eval(), _x()
    got = camkit.GradCAM(model, "encoder[0]")(x, target=0)
    raw = reference_gradcam_at(
        model, model.encoder, x, lambda out: out[:, 0], call=-1, pick=lambda out: out[0]
    )
    torch.testing.assert_close(got.double(), finish(raw, (8, 8)), atol=1e-5, rtol=1e-4)


class Pyramid(nn.Module):
    """A feature pyramid that returns its levels as a dict, as torchvision's FPN does."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.down = nn.Conv2d(4, 4, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        fine = torch.relu(self.stem(x))
        return OrderedDict([("0", fine), ("1", torch.relu(self.down(fine)))])


class Detector(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fpn = Pyramid()
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        levels = self.fpn(x)
        pooled = [level.mean(dim=(2, 3)) for level in levels.values()]
        return self.head(torch.cat(pooled, dim=1))


def test_pyramid_levels_are_fused_and_each_matches_plain_autograd() -> None:
    model, x = Detector().eval(), torch.randn(2, 1, 8, 8)
    result = camkit.GradCAM(model, ["fpn[0]", "fpn['1']"]).explain(x, target=1)
    for name, key in [("fpn[0]", "0"), ("fpn['1']", "1")]:
        raw = reference_gradcam_at(
            model, model.fpn, x, lambda out: out[:, 1], pick=lambda out, k=key: out[k]
        )
        torch.testing.assert_close(
            result.layer_maps[name].double(), finish(raw, (8, 8)), atol=1e-5, rtol=1e-4
        )
    fused = torch.stack(list(result.layer_maps.values())).mean(0)
    torch.testing.assert_close(result.maps, finish(fused, (8, 8)).float(), atol=1e-6, rtol=1e-5)


class Output(OrderedDict[str, Any]):
    """A container like Hugging Face's ModelOutput: a dict that also indexes by position."""

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(self.values())


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x: Tensor) -> Output:
        return Output(last_hidden_state=torch.relu(self.conv(x)), pooled=x.mean())


def test_a_model_output_is_indexed_by_position_or_by_key() -> None:
    model = nn.Sequential(Block())
    net = _ScoreOf(model).eval()
    x = torch.randn(2, 1, 8, 8)
    by_position = camkit.GradCAM(net, "inner.0[0]")(x, target=1)
    by_key = camkit.GradCAM(net, "inner.0[last_hidden_state]")(x, target=1)
    raw = reference_gradcam_at(
        net, net.inner[0], x, lambda out: out[:, 1], pick=lambda out: out["last_hidden_state"]
    )
    torch.testing.assert_close(by_position, by_key)
    torch.testing.assert_close(by_key.double(), finish(raw, (8, 8)), atol=1e-5, rtol=1e-4)


class _ScoreOf(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.head = nn.Linear(4 * 6 * 6, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.inner(x)["last_hidden_state"].flatten(1))


class InPlaceAfter(nn.Module):
    """The network writes in place to the element camkit explains."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = Encoder("tuple")
        self.head = nn.Linear(4 * 6 * 6, 2)

    def forward(self, x: Tensor) -> Tensor:
        features, _ = self.encoder(x)
        return self.head(features.mul_(2).flatten(1))


def test_an_element_the_network_overwrites_is_explained_intact() -> None:
    model, x = InPlaceAfter().eval(), _x()
    got = camkit.GradCAM(model, "encoder[0]")(x, target=1)

    def pick(output: tuple[Tensor, Tensor]) -> Tensor:
        return output[0]

    seen: list[Tensor] = []

    def hook(module: nn.Module, inputs: Any, output: tuple[Tensor, Tensor]) -> Any:
        seen.append(output[0])
        return output[0].clone(), output[1]

    handle = model.encoder.register_forward_hook(hook)
    try:
        (grad,) = torch.autograd.grad(model(x)[:, 1].sum(), seen[0])
    finally:
        handle.remove()
    raw = torch.einsum("nc,nc...->n...", grad.double().mean(dim=(2, 3)), seen[0].detach().double())
    torch.testing.assert_close(got.double(), finish(raw, (8, 8)), atol=1e-5, rtol=1e-4)


def test_resolve_layer_reads_calls_and_keys() -> None:
    model = Siamese("dict")
    ref = resolve_layer(model, "encoder@-2['features']")
    assert isinstance(ref, LayerRef)
    assert (ref.path, ref.call, ref.keys, ref.module) == (
        "encoder",
        -2,
        ("features",),
        model.encoder,
    )
    assert resolve_layer(model, "encoder[0][1]").keys == (0, 1)
    assert resolve_layer(model, model.encoder) == LayerRef("encoder", "encoder", model.encoder)
    assert find_layer(model, "encoder@1[0]") == ("encoder", model.encoder)


def test_a_module_whose_name_has_at_or_brackets_is_found_by_its_name() -> None:
    model = nn.Sequential()
    model.add_module("conv@2x", nn.Conv2d(1, 3, 3))
    model.add_module("relu", nn.ReLU())
    ref = resolve_layer(model, "conv@2x")
    assert (ref.path, ref.call, ref.keys) == ("conv@2x", -1, ())


@pytest.mark.parametrize(
    ("layer", "error", "message"),
    [
        (
            "encoder",
            camkit.CamkitTypeError,
            r"returned tuple, not a tensor; pick a tensor in it, such as 'encoder\[0\]'",
        ),
        (
            "encoder[2]",
            camkit.CamkitTypeError,
            r"tuple of 2 elements; index it with an int from -2 to 1",
        ),
        (
            "encoder[0][0]",
            camkit.CamkitTypeError,
            r"'encoder\[0\]' returned a tensor of shape \(3, 4, 6, 6\), which has no element 0",
        ),
        (
            "encoder@2[0]",
            camkit.CamkitValueError,
            r"asks for call 2 of 'encoder', which ran 2 time\(s\).*@0 to @1",
        ),
        ("encoder@-3[0]", camkit.CamkitValueError, r"which ran 2 time\(s\)"),
    ],
)
def test_a_wrong_call_or_element_is_a_clear_error_and_leaves_the_model_untouched(
    layer: str, error: type[Exception], message: str
) -> None:
    model, x = Siamese("tuple"), _x()
    before = snapshot(model, x)
    with pytest.raises(error, match=message):
        camkit.GradCAM(model, layer)(x, target=0)
    assert_untouched(before, snapshot(model, x))


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ("encoder[", r"cannot read 'encoder\['"),
        ("encoder@x", r"cannot read 'encoder@x'"),
        ("encoder[a b]", r"cannot read the key \[a b\]"),
        ("encodr@0", r"no submodule named 'encodr'; closest names: 'encoder'"),
        ("@0", r"empty name"),
    ],
)
def test_a_malformed_layer_name_is_refused_when_the_cam_is_made(layer: str, message: str) -> None:
    with pytest.raises(camkit.CamkitValueError, match=message):
        camkit.GradCAM(Siamese(), layer)


@pytest.mark.parametrize(
    "layers", [["encoder@1[0]", "encoder@1[0]"], ["encoder[0]", "encoder@-1[0]"]]
)
def test_the_same_call_and_element_twice_is_refused(layers: list[str]) -> None:
    with pytest.raises(camkit.CamkitValueError, match="names a layer twice"):
        camkit.GradCAM(Siamese("tuple"), layers)


def _every_listed_layer_works(model: nn.Module, x: Tensor) -> list[camkit.layers.LayerInfo]:
    infos = camkit.list_layers(model, x)
    for info in infos:
        maps = camkit.GradCAM(model, info.name, **info.options)(x, target=0)
        assert maps.shape == (len(x), *x.shape[2:]), info
    return infos


def test_list_layers_finds_each_layout_with_the_options_it_needs() -> None:
    from tests.models import TokenNet, channels_last_net, conv_net

    x = torch.randn(2, 2, 9, 9)
    cnn = {i.name: i for i in _every_listed_layer_works(conv_net(2), x)}
    assert list(cnn) == ["0", "1", "2", "3", "4", "5", "6"]  # not the pool, flatten or linear
    assert cnn["4"].layout == "channels_first"
    assert cnn["4"].shape == (2, 5, 4, 4)
    assert cnn["4"].options == {}
    last = {i.name: i for i in _every_listed_layer_works(channels_last_net(), x)}
    assert last["2"].layout == "channels_last"
    assert last["2"].options == {"layout": "channels_last"}
    tokens = {i.name: i for i in _every_listed_layer_works(TokenNet(), x)}
    assert tokens["mix"].options == {"layout": "tokens", "prefix_tokens": 1, "grid": (3, 3)}


def test_list_layers_shows_calls_and_elements_and_leaves_the_model_untouched() -> None:
    model, x = Siamese("tuple"), _x()
    before = snapshot(model, x)
    infos = {i.name: i for i in camkit.list_layers(model, x)}
    assert_untouched(before, snapshot(model, x))
    assert infos["encoder[0]"].calls == 2
    assert infos["encoder.conv"].kind == "Conv2d"
    assert "encoder[1]" not in infos  # (N, C) summaries are no maps
    assert "2 calls: @0 to @1" in str(infos["encoder[0]"])
    for name in ["encoder@0[0]", "encoder@1[0]"]:
        assert camkit.GradCAM(model, name)(x, target=0).shape == (3, 8, 8)


def test_list_layers_finds_a_token_grid_of_a_non_square_input() -> None:
    from tests.models import TokenNet

    x = torch.randn(2, 2, 6, 12)  # 2 x 4 patches of 3 x 3 pixels
    infos = {i.name: i for i in _every_listed_layer_works(TokenNet(), x)}
    assert infos["mix"].options["grid"] == (2, 4)


def test_an_unusable_layer_points_to_list_layers() -> None:
    model, x = Siamese("tuple"), _x()
    with pytest.raises(camkit.CamkitTypeError, match=r"list_layers\(model, x\)"):
        camkit.GradCAM(model, "encoder")(x, target=0)
    with pytest.raises(camkit.CamkitValueError, match=r"list_layers\(model, x\)"):
        camkit.GradCAM(model, "head")(x, target=0)


class OneLevelHead(nn.Module):
    """Reads only the fine level of the pyramid, as a box head reads each box from one level."""

    def __init__(self) -> None:
        super().__init__()
        self.fpn = Pyramid()
        self.head = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.fpn(x)["0"].mean(dim=(2, 3)))


def test_a_fused_level_the_score_does_not_read_adds_a_zero_map() -> None:
    model, x = OneLevelHead().eval(), torch.randn(2, 1, 8, 8)
    result = camkit.GradCAM(model, ["fpn[0]", "fpn[1]"]).explain(x, target=1)
    assert (result.layer_maps["fpn[1]"] == 0).all()
    torch.testing.assert_close(result.maps, camkit.GradCAM(model, "fpn[0]")(x, target=1))
    with pytest.raises(camkit.CamkitValueError, match=r"does not depend on layer 'fpn\[1\]'"):
        camkit.GradCAM(model, "fpn[1]")(x, target=1)


@pytest.mark.parametrize("name", ["1", "_orig_mod.1"])
def test_a_compiled_model_is_explained_as_its_eager_module(name: str) -> None:
    """``torch.compile`` wraps the model (its layers become ``_orig_mod.*``, and compiled
    graphs skip hooks): camkit explains the eager module, with the eager model's maps."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 3), nn.Flatten(), nn.Linear(48, 3)
    ).eval()
    compiled = torch.compile(model)
    x = torch.randn(2, 1, 8, 8)
    before = snapshot(model)
    pairs = [
        (camkit.GradCAM(compiled, name), camkit.GradCAM(model, "1")),
        (camkit.ScoreCAM(compiled, name), camkit.ScoreCAM(model, "1")),
        (camkit.FullGrad(compiled), camkit.FullGrad(model)),
        (camkit.GuidedBackprop(compiled), camkit.GuidedBackprop(model)),
    ]
    for on_compiled, on_eager in pairs:
        assert on_compiled.model is model
        assert on_compiled.layer_names == on_eager.layer_names
        assert torch.equal(on_compiled(x, target=[0, 2]), on_eager(x, target=[0, 2]))
    assert camkit.find_layer(compiled, name) == ("1", model[1])
    listed = [info.name for info in camkit.list_layers(compiled, x)]
    assert listed == [info.name for info in camkit.list_layers(model, x)]
    assert_untouched(before, snapshot(model))


class _Recorded(nn.Module):
    """Its head reads what a forward hook registered at build time recorded of ``relu``'s
    output (as a Hugging Face model's hidden-state recorder does), not the flow after it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.relu = nn.Conv2d(1, 3, 3), nn.ReLU()
        self.head = nn.Linear(3 * 6 * 6, 4)
        self.kept: list[Tensor] = []
        self.relu.register_forward_hook(lambda m, i, output: self.kept.append(output))

    def forward(self, x: Tensor) -> Tensor:
        self.kept.clear()
        self.relu(self.conv(x))  # the flow after relu is not used
        out: Tensor = self.head(self.kept[-1].flatten(1))
        return out


def test_a_layer_whose_output_a_model_hook_records_is_explained() -> None:
    """camkit's hook runs before the model's own, so the recorder keeps the tensor camkit
    differentiates (before, the score did not depend on it and the call failed)."""
    model = _Recorded().eval()
    x = torch.randn(2, 1, 8, 8)
    raw = {"relu": False, "upsample": False, "normalize": False}
    got = camkit.GradCAM(model, "relu")(x, [1, 3], **raw)
    expected = reference_gradcam(model, model.relu, x, torch.tensor([1, 3]))
    magnitude = GradCAMMagnitude(model, "relu")
    assert_gradcam_close(got, expected, magnitude(x, [1, 3], **raw), magnitude.channels)
    assert len(model.relu._forward_hooks) == 1  # the model's own hook, and only it, is left
