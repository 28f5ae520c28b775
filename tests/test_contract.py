"""The explainer contract: every camkit explainer declares what it can do, and it is true.

One shared check (:func:`camkit.testing.check_explainer`) runs on each of the
explainers camkit exports; a second test checks that every option of every
constructor is part of the explainer's settings (what the map store compares
before it resumes), and that changing it changes them.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import camkit
from camkit import CamkitError, Explainer
from camkit.explainer import differentiable_methods, setting
from camkit.testing import check_explainer
from examples.mnist.vit import MnistViT
from tests.helpers import WRONG_VALUES


def smooth_net() -> nn.Sequential:
    """Smooth (Tanh, Softplus) so that gradcheck meets no kink; layer "1" is 3 x 6 x 6."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.Tanh(), nn.Conv2d(3, 2, 3), nn.Softplus(), nn.Flatten(),
        nn.Linear(2 * 4 * 4, 3),
    ).eval()  # fmt: skip


def pooled_net() -> nn.Sequential:
    """Global pooling then linear layers, as CAM and a concept head need (two of them, so
    that CAM's ``fc`` has a second choice)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 3),
        nn.Linear(3, 3),
    ).eval()  # fmt: skip


def relu_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 3)
    ).eval()


def vit() -> MnistViT:
    torch.manual_seed(0)
    return MnistViT().eval()


class _ClipClassifier(nn.Module):
    """A small CLIP image encoder (from a configuration) with a linear head on its
    embedding, so that class targets score it."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        config = CLIPVisionConfig(
            image_size=16, patch_size=8, hidden_size=16, intermediate_size=32,
            num_hidden_layers=1, num_attention_heads=2, projection_dim=8,
        )  # fmt: skip
        self.vision = CLIPVisionModelWithProjection(config)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.head(self.vision(pixel_values=x).image_embeds)
        return logits


def clip_classifier() -> _ClipClassifier:
    torch.manual_seed(0)
    return _ClipClassifier().eval()


CLIP_ATTENTION = "vision.vision_model.encoder.layers.0.self_attn"


def concept_head(net: nn.Sequential) -> Callable[[Tensor], Tensor]:
    def head(directions: Tensor) -> Tensor:
        scores: Tensor = net[4](directions)
        return scores

    return head


IMAGE = (1, 8, 8)
Case = tuple[Callable[[], nn.Module], Callable[[Any], Explainer], tuple[int, ...]]
CASES: dict[str, Case] = {
    "GradCAM": (smooth_net, lambda m: camkit.GradCAM(m, "1"), IMAGE),
    "GradCAMPlusPlus": (smooth_net, lambda m: camkit.GradCAMPlusPlus(m, "1"), IMAGE),
    "XGradCAM": (smooth_net, lambda m: camkit.XGradCAM(m, "1"), IMAGE),
    "HiResCAM": (smooth_net, lambda m: camkit.HiResCAM(m, "1"), IMAGE),
    "LayerCAM": (smooth_net, lambda m: camkit.LayerCAM(m, "1"), IMAGE),
    "GradCAMElementWise": (smooth_net, lambda m: camkit.GradCAMElementWise(m, "1"), IMAGE),
    "EigenGradCAM": (smooth_net, lambda m: camkit.EigenGradCAM(m, "1"), IMAGE),
    "SegEigenCAM": (smooth_net, lambda m: camkit.SegEigenCAM(m, "1"), IMAGE),
    "ShapleyCAM": (smooth_net, lambda m: camkit.ShapleyCAM(m, "1"), IMAGE),
    "SmoothGradCAMPlusPlus": (
        smooth_net,
        lambda m: camkit.SmoothGradCAMPlusPlus(m, "1", seed=0),
        IMAGE,
    ),
    "FinerCAM": (smooth_net, lambda m: camkit.FinerCAM(m, "1", similar=1), IMAGE),
    "RefineCAM": (smooth_net, lambda m: camkit.RefineCAM(m, ["1", "3"]), IMAGE),
    "CAM": (pooled_net, lambda m: camkit.CAM(m, "1", fc="5"), IMAGE),
    "EigenCAM": (smooth_net, lambda m: camkit.EigenCAM(m, "1"), IMAGE),
    "KPCACAM": (smooth_net, lambda m: camkit.KPCACAM(m, "1"), IMAGE),
    "FEM": (smooth_net, lambda m: camkit.FEM(m, "1"), IMAGE),
    "ScoreCAM": (smooth_net, lambda m: camkit.ScoreCAM(m, "1"), IMAGE),
    "SSCAM": (smooth_net, lambda m: camkit.SSCAM(m, "1", samples=2, seed=0), IMAGE),
    "ISCAM": (smooth_net, lambda m: camkit.ISCAM(m, "1", samples=2), IMAGE),
    "AblationCAM": (smooth_net, lambda m: camkit.AblationCAM(m, "1"), IMAGE),
    "RandomCAM": (smooth_net, lambda m: camkit.RandomCAM(m, "1", seed=0), IMAGE),
    "FullGrad": (smooth_net, lambda m: camkit.FullGrad(m), IMAGE),
    "SESS": (smooth_net, lambda m: camkit.SESS(camkit.GradCAM(m, "1"), num_scales=2), IMAGE),
    "DeepFeatureFactorization": (
        pooled_net,
        lambda m: camkit.DeepFeatureFactorization(m, "1", concepts=2, head=concept_head(m)),
        IMAGE,
    ),
    "LeGrad": (
        vit,
        lambda m: camkit.LeGrad(
            m,
            ["blocks.1.attn.probs", "blocks.2.attn.probs"],
            blocks=["blocks.1", "blocks.2"],
            head=m.classify,
        ),
        (1, 28, 28),
    ),
    "GuidedBackprop": (relu_net, lambda m: camkit.GuidedBackprop(m), IMAGE),
    "GuidedGradCAM": (relu_net, lambda m: camkit.GuidedGradCAM(m, "1"), IMAGE),
    "GradECLIP": (
        clip_classifier,
        lambda m: camkit.GradECLIP(m, CLIP_ATTENTION),
        (3, 16, 16),
    ),
    "OcclusionSensitivity": (
        smooth_net,
        lambda m: camkit.OcclusionSensitivity(m, mask_size=4, stride=2),
        IMAGE,
    ),
}
EXPLAINERS = [
    name
    for name in camkit.methods.__all__
    if isinstance(getattr(camkit, name), type) and issubclass(getattr(camkit, name), Explainer)
]


def test_every_explainer_camkit_exports_has_a_case() -> None:
    # the 30 methods: Faster Score-CAM is ScoreCAM(top_channels=)
    assert len(EXPLAINERS) == 29
    assert sorted(CASES) == sorted(EXPLAINERS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_explainer_keeps_the_contract(name: str) -> None:
    make_model, make, shape = CASES[name]
    explainer = make(make_model())
    assert type(explainer).__name__ == name
    torch.manual_seed(1)
    check_explainer(explainer, torch.randn(2, *shape), target=[0, 2])


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_explainer_explains_a_float64_model_as_the_float32_one(name: str) -> None:
    """A float64 model (and input) gives camkit's float32 maps, equal to the float32 model's
    up to float32's rounding. The largest difference is where a method divides by the
    difference of two nearly equal scores (occlusion, ablation): float32's 1.2e-7 grows to
    about 1e-5 there, so 1e-4 holds with a wide margin."""
    make_model, make, shape = CASES[name]
    torch.manual_seed(1)
    x = torch.randn(2, *shape)
    expected = make(make_model())(x, [0, 2])
    got = make(make_model().double())(x.double(), [0, 2])
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", sorted(CASES))
def test_each_explainer_explains_a_half_precision_model(name: str, dtype: torch.dtype) -> None:
    """A model converted to bfloat16 or float16 (its input too) gives finite float32 maps of
    the float32 model's shape, in [0, 1] where its are (guided backpropagation's are signed
    gradients); their values are the half-precision model's own, so they are not compared."""
    make_model, make, shape = CASES[name]
    torch.manual_seed(1)
    x = torch.randn(2, *shape)
    full = make(make_model())(x, [0, 2])
    maps = make(make_model().to(dtype))(x.to(dtype), [0, 2])
    assert maps.dtype == torch.float32 and maps.shape == full.shape
    assert bool(maps.isfinite().all())
    if float(full.min()) >= 0 and float(full.max()) <= 1:
        assert 0 <= float(maps.min()) <= float(maps.max()) <= 1


def test_the_check_catches_a_broken_declaration() -> None:
    """The shared check fails an explainer whose declarations are false."""

    class Ignores(Explainer):
        """Declares nothing, and ignores the options it does not offer instead of refusing."""

        def __init__(self, cam: Explainer) -> None:
            self.cam, self.model, self.layer_names = cam, cam.model, cam.layer_names

        def explain(self, x: Tensor, target: Any = None, **options: Any) -> camkit.CAMResult:
            return self.cam.explain(x, target)

    x = torch.randn(2, *IMAGE)
    check_explainer(camkit.GradCAM(smooth_net(), "1"), x, target=[0, 1])
    with pytest.raises(AssertionError, match="upsample is not declared, yet it was not refused"):
        check_explainer(Ignores(camkit.GradCAM(smooth_net(), "1")), x, target=[0, 1])

    class Pretends(camkit.ScoreCAM):
        differentiable = True  # but its weights come from passes without gradients

    with pytest.raises((AssertionError, RuntimeError)):  # maps outside the graph
        check_explainer(Pretends(smooth_net(), "1"), x, target=[0, 1])

    class Shifted(camkit.GradCAM):
        """Declares (as GradCAM does) that its output is the model's, then changes it."""

        def explain(self, x: Tensor, target: Any = None, **options: Any) -> camkit.CAMResult:
            result = super().explain(x, target, **options)
            return dataclasses.replace(result, output=result.output + 1e-3)

    with pytest.raises(AssertionError, match="declares reports_output, but explain's output"):
        check_explainer(Shifted(smooth_net(), "1"), x, target=[0, 1])

    class Bare(camkit.GradCAM):
        """Takes a gradient itself, outside camkit's pass, with grad mode on: that works
        under no_grad, but under inference_mode no graph is recorded."""

        def explain(self, x: Tensor, target: Any = None, **options: Any) -> camkit.CAMResult:
            result = super().explain(x, target, **options)
            with torch.enable_grad():
                leaf = x.detach().requires_grad_()
                torch.autograd.grad(self.model(leaf).sum(), leaf)
            return result

    with pytest.raises(AssertionError, match=r"fails under torch.inference_mode\(\)"):
        check_explainer(Bare(smooth_net(), "1"), x, target=[0, 1])


def test_the_differentiable_methods_are_those_that_declare_it() -> None:
    declared = {n for n in EXPLAINERS if getattr(camkit, n).differentiable}
    assert set(differentiable_methods().replace(" and ", ", ").split(", ")) == declared
    assert declared == {
        *("GradCAM", "GradCAMPlusPlus", "XGradCAM", "HiResCAM", "LayerCAM"),
        *("GradCAMElementWise", "EigenGradCAM", "SegEigenCAM", "FinerCAM", "RefineCAM"),
        *("CAM", "EigenCAM", "KPCACAM", "FEM"),
    }


# A value other than the default for every constructor option (by name, where the type of
# the default does not tell one); options that must change together change together.
# Candidates, the first whose setting differs from the explainer's is used.
OTHER: dict[str, list[Any]] = {
    "layout": ["tokens"], "fuse": ["product", "mean"], "rank_by": ["mean"], "kernel": ["rbf"],
    "pool": ["max"], "tanh_scale": [2.0], "top_channels": [2], "gamma": [0.5],
    "grid": [(6, 6)], "window": [6], "step": [2], "scales": [[8, 9]], "seed": [7],
    "fc": ["4", "5"], "layers": [["0"]], "alpha": [0.5], "scaling": ["per_channel"],
    "token_order": [(1, 0)], "stride": [[2], [3]], "fill": ["mean_patch"],
    "blend": ["constant"], "activation": ["softmax"], "batch_size": [3, 4],
}  # fmt: skip
TOGETHER = {
    ("LeGrad", "blocks"): ("head",),
    ("LeGrad", "head"): ("blocks",),
    ("*", "tiles"): ("layout",),  # tiles need layout="tokens"
}
RENAMED = {"layer": "layers", "attentions": "layers", "attention": "layers", "samples": "samples"}
NOT_OPTIONS = {"self", "model", "layer", "attentions", "attention", "explainer"}


def _options(cls: type) -> dict[str, inspect.Parameter]:
    """Every keyword option of the constructor, up the classes it passes ``**options`` to."""
    options: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if "__init__" not in klass.__dict__ or klass in (Explainer, object):
            continue
        for parameter in inspect.signature(klass.__init__).parameters.values():
            if parameter.kind is parameter.VAR_KEYWORD or parameter.name in NOT_OPTIONS:
                continue
            options.setdefault(parameter.name, parameter)
    return options


def _other(name: str, parameter: inspect.Parameter, current: Any) -> Any:
    default = parameter.default
    if name == "head":
        return lambda t: t
    if name == "blocks":
        return ["blocks.2", "blocks.1"]
    if name in OTHER:
        return next(v for v in OTHER[name] if setting(v) != current)
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 1
    if isinstance(default, float):
        return default / 2 + 0.125
    raise AssertionError(f"no other value for option {name!r} (default {default!r})")


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_constructor_option_is_in_the_settings_and_changes_them(name: str) -> None:
    make_model, make, _ = CASES[name]
    model = make_model()
    explainer = make(model)
    cls = type(explainer)
    base = explainer.settings()
    options = _options(cls)
    missing = [o for o in options if RENAMED.get(o, o) not in base]
    assert not missing, f"{name}.settings() lacks {missing}"
    for option, parameter in options.items():
        changed = {option: _other(option, parameter, base[RENAMED.get(option, option)])}
        for partner in TOGETHER.get((name, option), TOGETHER.get(("*", option), ())):
            changed[partner] = _other(partner, options[partner], base[partner])
        other = _rebuilt(name, model, changed)
        assert other.settings() != base, f"{name}: changing {option} left the settings equal"


def _rebuilt(name: str, model: nn.Module, changed: dict[str, Any]) -> Explainer:
    """The case's explainer built again with ``changed`` options."""
    cls = getattr(camkit, name)
    if name == "SESS":
        return cls(camkit.GradCAM(model, "1"), **{"num_scales": 2, **changed})  # type: ignore[no-any-return]
    if name == "LeGrad":
        attention = ["blocks.1.attn.probs", "blocks.2.attn.probs"]
        defaults = {"blocks": ["blocks.1", "blocks.2"], "head": model.classify}
        return cls(model, attention, **{**defaults, **changed})  # type: ignore[no-any-return]
    if name in ("FullGrad", "GuidedBackprop"):
        return cls(model, **changed)  # type: ignore[no-any-return]
    if name == "OcclusionSensitivity":
        return cls(model, **{"mask_size": 4, **changed})  # type: ignore[no-any-return]
    if name == "GradECLIP":
        return cls(model, CLIP_ATTENTION, **changed)  # type: ignore[no-any-return]
    layer: Any = ["1", "3"] if name == "RefineCAM" else "1"
    defaults = {"CAM": {"fc": "5"}}.get(name, {})
    return cls(model, layer, **{**defaults, **changed})  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_constructor_option_refuses_values_of_the_wrong_kind(name: str) -> None:
    """A wrong value gets camkit's error, on construction or on the first call, never a raw
    TypeError from deep inside; a value taken must give finite maps."""
    make_model, make, shape = CASES[name]
    model = make_model()
    options = _options(type(make(model)))
    x = torch.randn(2, *shape)
    raw = []
    for option, parameter in options.items():
        if option in ("head", "blocks", "fc"):  # callables and layers: other tests
            continue
        for wrong in WRONG_VALUES:
            if wrong is None and parameter.default is None:
                continue
            try:
                explainer = _rebuilt(name, model, {option: wrong})
                torch.manual_seed(0)
                maps = explainer(x, [0, 2])
            except CamkitError:
                continue
            except Exception as error:  # a raw error: what the test looks for
                raw.append(f"{option}={wrong!r}: {type(error).__name__}: {error}"[:160])
                continue
            assert bool(maps.isfinite().all()), f"{name}: {option}={wrong!r} gave non-finite maps"
    assert not raw, f"{name}: raw errors for " + "; ".join(raw)


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_call_option_refuses_values_of_the_wrong_kind(name: str) -> None:
    """explain's options (the on/off flags, forward_args, ...) given a wrong value get
    camkit's error, never a raw one; a flag is a bool, not read by its truthiness."""
    make_model, make, shape = CASES[name]
    explainer = make(make_model())
    x = torch.randn(2, *shape)
    raw, read = [], []
    for option, parameter in inspect.signature(explainer.explain).parameters.items():
        if option in ("x", "target") or parameter.kind is parameter.VAR_KEYWORD:
            continue
        for wrong in WRONG_VALUES:
            if (wrong is None and parameter.default is None) or (
                wrong is True and isinstance(parameter.default, bool)  # a flag's right value
            ):
                continue
            try:
                explainer.explain(x, [0, 2], **{option: wrong})
            except CamkitError:
                continue
            except Exception as error:  # a raw error: what the test looks for
                raw.append(f"{option}={wrong!r}: {type(error).__name__}: {error}"[:160])
                continue
            if isinstance(parameter.default, bool):
                read.append(f"{option}={wrong!r}")
    assert not raw, f"{name}: raw errors for " + "; ".join(raw)
    assert not read, f"{name}: flags read by truthiness: " + ", ".join(read)


def test_the_wrapped_explainer_settings_are_part_of_sess_settings() -> None:
    model = smooth_net()
    plain = camkit.SESS(camkit.GradCAM(model, "1"))
    other = camkit.SESS(camkit.GradCAM(model, "1", fuse="product"))
    assert plain.settings()["explainer"] == camkit.GradCAM(model, "1").settings()
    assert plain.settings() != other.settings()


def test_the_old_name_of_the_differentiable_declaration_still_counts() -> None:
    class Old(camkit.GradCAM):
        differentiable_maps = False  # the name before the contract

    assert Old.differentiable is False
    assert camkit.ScoreCAM.differentiable_maps is False  # read under the old name, too
    assert camkit.GradCAM.differentiable_maps is True
    with pytest.raises(camkit.CamkitValueError, match=r"^differentiable: Old's maps"):
        Old(smooth_net(), "1").explain(torch.randn(2, *IMAGE), differentiable=True)


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_explainer_runs_under_cpu_autocast(name: str) -> None:
    """Re-runs of the model (masked inputs, ablated tails, noisy copies) run in the caller's
    precision, camkit's own arithmetic in float32: the maps are float32 and well formed."""
    make_model, make, shape = CASES[name]
    explainer = make(make_model())
    x = torch.randn(2, *shape)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = explainer.explain(x, [0, 2])
    assert result.maps.dtype == torch.float32
    assert bool(torch.isfinite(result.maps).all())
    if not explainer.input_channels:
        assert tuple(result.maps.shape) == (2, *shape[1:])
        assert 0 <= float(result.maps.min()) <= float(result.maps.max()) <= 1


def test_ablation_cam_on_resnet18_under_autocast_equals_full_reruns() -> None:
    """The issue's case: the fx tail, fed bfloat16 activations, once failed with a dtype
    mismatch; now it runs in the caller's autocast, like re-running the whole model."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tail = camkit.AblationCAM(model, "layer4", batch_size=256)(x, target=3)
        full = camkit.AblationCAM(model, "layer4", batch_size=256, split_tail=False)(x, target=3)
    assert tail.dtype == torch.float32
    rounding = 8 * torch.finfo(torch.bfloat16).eps  # maps in [0, 1]
    torch.testing.assert_close(tail, full, rtol=0, atol=rounding)


# cuda: without a GPU it warns, stays off; mps and xpu where the installed torch has
# autocast for them (torch 2.4 has none for mps)
@pytest.mark.parametrize(
    "device", [d for d in ("cpu", "mps", "xpu") if torch.amp.is_autocast_available(d)]
)
def test_full_precision_closes_the_callers_autocast_on_every_device_type(device: str) -> None:
    """camkit's arithmetic leaves the caller's autocast on any device type (mps and xpu
    were once skipped), and the model's re-runs open it again with the caller's dtype."""
    from camkit._engine.model import Precision

    dtype = torch.bfloat16 if device == "cpu" else torch.float16
    with torch.autocast(device, dtype=dtype):
        precision = Precision.of_caller()
        with precision.full():
            assert not torch.is_autocast_enabled(device)
            with precision.callers():
                assert torch.is_autocast_enabled(device)
                assert torch.get_autocast_dtype(device) == dtype
    assert precision.regions == ((device, dtype),)
