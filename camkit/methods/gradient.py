"""CAM methods that weight the layer's channels (or pixels) by the score's gradients."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from camkit._engine import map_ops
from camkit._engine.option_checks import non_negative, positive_int, positive_number, seed_or_none
from camkit.base import BaseCAM, LayerSpec
from camkit.context import LayerContext
from camkit.errors import CamkitTypeError
from camkit.targets import FinerTarget, Target

__all__ = [
    "EigenGradCAM",
    "FinerCAM",
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "HiResCAM",
    "LayerCAM",
    "RefineCAM",
    "SegEigenCAM",
    "ShapleyCAM",
    "SmoothGradCAMPlusPlus",
    "XGradCAM",
]


class GradCAM(BaseCAM):
    r"""Grad-CAM: channels weighted by their spatially averaged gradient.

    Selvaraju et al., *Grad-CAM: Visual Explanations from Deep Networks via
    Gradient-based Localization*, IJCV 2020 (ICCV 2017),
    https://arxiv.org/abs/1610.02391.

    For the pre-softmax score :math:`y^c` and the layer's activations
    :math:`A^k` over :math:`Z` spatial positions,

    .. math::

        \alpha_k^c = \frac{1}{Z} \sum_{i,j} \frac{\partial y^c}{\partial A^k_{ij}},
        \qquad
        L^c = \mathrm{ReLU}\Big(\sum_k \alpha_k^c A^k\Big).

    On a network that ends in global average pooling and one linear layer,
    :math:`\alpha_k^c = w_k^c / Z` and Grad-CAM equals CAM (Zhou et al., 2016)
    up to scale.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(
        ...     nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...     nn.Flatten(), nn.Linear(4, 10))
        >>> maps = GradCAM(model, "1")(torch.randn(2, 1, 8, 8), target=3)
        >>> maps.shape
        torch.Size([2, 8, 8])
    """

    def weights(self, context: LayerContext) -> Tensor:
        r"""Return :math:`\alpha_k^c`, the mean gradient of each channel."""
        return context.gradients.mean(dim=context.spatial_dims)


class GradCAMPlusPlus(BaseCAM):
    r"""Grad-CAM++: gradients weighted per pixel to credit every instance of a class.

    Chattopadhay et al., *Grad-CAM++: Generalized Gradient-based Visual
    Explanations for Deep Convolutional Networks*, WACV 2018,
    https://arxiv.org/abs/1710.11063.

    camkit uses the paper's closed form for an exponential score
    :math:`Y^c = \exp(S^c)` (their Eq. 19), in which higher derivatives become
    powers of the first, :math:`g = \partial S^c / \partial A^k_{ij}`:

    .. math::

        \alpha_{ij}^{kc} = \frac{g_{ij}^2}
            {2 g_{ij}^2 + \sum_{a,b} A^k_{ab}\, g_{ij}^3},
        \qquad
        w_k^c = \sum_{i,j} \alpha_{ij}^{kc}\, \mathrm{ReLU}(g_{ij}),

    with :math:`\alpha = 0` where :math:`g = 0` (or the denominator is 0). The
    positive factor :math:`\exp(S^c)` scales every weight equally and is dropped.
    This is the approximation used by the authors' code and by the usual
    implementations, not the exact higher-order derivatives of :math:`S^c`.
    pytorch-grad-cam adds :math:`10^{-6}` to the denominator, which changes its
    maps where gradients are small (near :math:`10^{-3}`); otherwise the two agree.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
        >>> GradCAMPlusPlus(model, "1")(torch.randn(3, 1, 8, 8)).shape
        torch.Size([3, 8, 8])
    """

    def weights(self, context: LayerContext) -> Tensor:
        """Return :math:`w_k^c`, the alpha-weighted sum of positive gradients.

        Only positive gradients count, and there :math:`\\alpha\\,g = g / (2 + g \\sum A)`:
        the same value with fewer operations, and no :math:`g^3` to overflow.
        """
        g, dims = context.gradients, context.spatial_dims
        total = context.activations.sum(dim=dims, keepdim=True)
        denominator = total * g + 2
        usable = (g > 0) & (denominator != 0)
        return torch.where(usable, g / torch.where(usable, denominator, 1.0), 0.0).sum(dim=dims)


class XGradCAM(BaseCAM):
    r"""XGrad-CAM: gradients weighted by the normalized activations.

    Fu et al., *Axiom-based Grad-CAM: Towards Accurate Visualization and
    Explanation of CNNs*, BMVC 2020, https://arxiv.org/abs/2008.02312.

    .. math::

        \alpha_k^c = \sum_{i,j} \frac{A^k_{ij}}{\sum_{a,b} A^k_{ab}}
            \frac{\partial y^c}{\partial A^k_{ij}},

    with :math:`\alpha_k^c = 0` for a channel whose activations sum to 0.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
        >>> XGradCAM(model, "1")(torch.randn(3, 1, 8, 8)).shape
        torch.Size([3, 8, 8])
    """

    def weights(self, context: LayerContext) -> Tensor:
        r"""Return :math:`\alpha_k^c`."""
        a, dims = context.activations, context.spatial_dims
        total = a.sum(dim=dims)
        weighted = (a * context.gradients).sum(dim=dims)
        return torch.where(total != 0, weighted / torch.where(total != 0, total, 1.0), 0.0)


class HiResCAM(BaseCAM):
    r"""HiResCAM: gradients times activations, element-wise, with no averaging.

    Draelos & Carin, *Use HiResCAM instead of Grad-CAM for faithful explanations
    of convolutional neural networks*, 2020, https://arxiv.org/abs/2011.08891.

    .. math::

        L^c = \mathrm{ReLU}\Big(\sum_k \frac{\partial y^c}{\partial A^k} \odot A^k\Big).

    When everything after the layer is piecewise linear (ReLU, max-pooling,
    linear layers), the signed map sums exactly to :math:`y^c - b^c`, where
    :math:`b^c` is the score of the linear piece at zero.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
        >>> HiResCAM(model, "1")(torch.randn(3, 1, 8, 8)).shape
        torch.Size([3, 8, 8])
    """

    def weights(self, context: LayerContext) -> Tensor:
        """Return the gradients themselves as pixel weights."""
        return context.gradients


class LayerCAM(BaseCAM):
    r"""LayerCAM: activations weighted by their positive gradients, pixel by pixel.

    Jiang et al., *LayerCAM: Exploring Hierarchical Class Activation Maps for
    Localization*, IEEE TIP 2021, https://doi.org/10.1109/TIP.2021.3089943.

    .. math::

        L^c = \mathrm{ReLU}\Big(\sum_k \mathrm{ReLU}\Big(
            \frac{\partial y^c}{\partial A^k_{ij}}\Big) A^k_{ij}\Big).

    For shallow layers the paper rescales the map as
    :math:`\tanh(\gamma L^c / \max L^c)` with :math:`\gamma = 2`; pass
    ``tanh_scale=2.0`` to do so (applied per map at the layer's resolution).

    Args:
        model: As for :class:`~camkit.BaseCAM`.
        layer: As for :class:`~camkit.BaseCAM`.
        tanh_scale: The paper's :math:`\gamma`, or ``None`` for no rescaling.
        **options: ``layout``, ``prefix_tokens``, ``grid`` as for :class:`~camkit.BaseCAM`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
        >>> LayerCAM(model, "1", tanh_scale=2.0)(torch.randn(3, 1, 8, 8)).shape
        torch.Size([3, 8, 8])
    """

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec | list[LayerSpec],
        *,
        tanh_scale: float | None = None,
        **options: object,
    ) -> None:
        super().__init__(model, layer, **options)  # type: ignore[arg-type]
        if tanh_scale is not None:
            positive_number(tanh_scale, "tanh_scale")
        self.tanh_scale = tanh_scale

    def settings(self) -> dict[str, Any]:
        """The shared settings and ``tanh_scale``."""
        return {**super().settings(), "tanh_scale": self.tanh_scale}

    def weights(self, context: LayerContext) -> Tensor:
        """Return the positive part of the gradients as pixel weights."""
        return context.gradients.clamp_min(0)

    def refine(self, maps: Tensor, context: LayerContext) -> Tensor:
        """Apply the paper's tanh rescaling when ``tanh_scale`` is set."""
        if self.tanh_scale is None:
            return maps
        peak = maps.flatten(2).amax(dim=2).view(*maps.shape[:2], *([1] * (maps.dim() - 2)))
        return torch.tanh(self.tanh_scale * maps / torch.where(peak > 0, peak, 1.0))


class RefineCAM(GradCAMPlusPlus):
    r"""RefineCAM: Grad-CAM++ maps of several layers, multiplied to keep what all of them show.

    pytorch-grad-cam's ``RefineCAM`` (multi-layer refinement, which denoises the
    maps of early layers): each layer's map :math:`L_l` is upsampled to the
    input and scaled to :math:`[0, 1]`, and the maps are multiplied,

    .. math::

        L = \prod_l \frac{L_l - \min L_l}{\max L_l - \min L_l},

    then scaled again. It is Grad-CAM++ with ``fuse="product"``; any other
    method refines its layers the same way with that option (pytorch-grad-cam's
    ``base_method``).

    Args:
        model: As for :class:`~camkit.BaseCAM`.
        layer: The layers to refine, such as a deep layer and an early one.
        **options: ``layout``, ``prefix_tokens``, ``grid`` as for :class:`~camkit.BaseCAM`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(
        ...     nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(),
        ...     nn.Flatten(), nn.Linear(64, 2))
        >>> RefineCAM(model, ["1", "3"])(torch.randn(3, 1, 8, 8)).shape
        torch.Size([3, 8, 8])
    """

    def __init__(
        self, model: nn.Module, layer: LayerSpec | list[LayerSpec], **options: object
    ) -> None:
        super().__init__(model, layer, **{"fuse": "product", **options})  # type: ignore[arg-type]


class SegEigenCAM(BaseCAM):
    r"""Seg-Eigen-CAM: the first principal component of absolute gradients times activations.

    Chung & Ying, *Seg-Eigen-CAM: Eigen-Value-Based Visual Explanations for
    Semantic Segmentation Models*, Applied Sciences 15(13) 7562, 2025,
    https://doi.org/10.3390/app15137562.

    Made for segmentation (pair it with :class:`~camkit.SegmentationTarget`):
    with :math:`G = |\partial y^c / \partial A| \odot A` (their Eq. 10)
    arranged as a (positions x channels) matrix, centred per channel
    (:math:`\bar G`), and :math:`v_1` its first right singular vector,

    .. math::

        P = \bar G\, v_1, \qquad
        L^c = \mathrm{ReLU}\big(\operatorname{sign} \cdot P\big),

    where the sign makes the larger of :math:`|\min P|` and :math:`|\max P|`
    positive (their Eq. 13). Centring and sign follow pytorch-grad-cam's
    ``SegEigenCAM``, with which camkit's maps agree.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
        >>> SegEigenCAM(model, "1")(torch.randn(3, 1, 8, 8)).shape
        torch.Size([3, 8, 8])
    """

    def weights(self, context: LayerContext) -> Tensor:
        """Return the absolute gradients as pixel weights."""
        return context.gradients.abs()

    def combine(self, weighted: Tensor) -> Tensor:
        r"""Project :math:`|g| \odot A`, centred, on its first principal direction."""
        return map_ops.first_component(weighted, centred=True)


class GradCAMElementWise(BaseCAM):
    r"""Element-wise Grad-CAM: the positive part of gradient times activation, then the sum.

    pytorch-grad-cam's ``GradCAMElementWise``: HiResCAM with the ReLU moved
    inside the channel sum, so that no channel's negative evidence cancels
    another's positive evidence at a position:

    .. math::

        L^c = \sum_k \mathrm{ReLU}\Big(\frac{\partial y^c}{\partial A^k} \odot A^k\Big).

    As pixel weights: :math:`g` where :math:`g A > 0`, else 0. The map is
    non-negative even with ``relu=False``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
        >>> GradCAMElementWise(model, "1")(torch.randn(3, 1, 8, 8)).shape
        torch.Size([3, 8, 8])
    """

    def weights(self, context: LayerContext) -> Tensor:
        """Return the gradients where gradient times activation is positive, else 0."""
        g = context.gradients
        return torch.where(g * context.activations > 0, g, 0.0)


class EigenGradCAM(BaseCAM):
    r"""Eigen-Grad-CAM: gradient times activation, projected on its first principal direction.

    pytorch-grad-cam's ``EigenGradCAM``: Eigen-CAM (Muhammad & Yeasin, IJCNN
    2020, https://arxiv.org/abs/2008.00299) of the class-weighted activations
    :math:`G = \partial y^c / \partial A \odot A` instead of :math:`A`. With
    :math:`G` arranged as a (positions x channels) matrix and :math:`v_1` its
    first right singular vector,

    .. math::

        L^c = \mathrm{ReLU}(G\, v_1),

    the sign of :math:`v_1` fixed so that :math:`G v_1` sums to a non-negative
    value. As in :class:`~camkit.EigenCAM` (and the Eigen-CAM paper's
    equation), :math:`G` is not centred; pytorch-grad-cam centres it and
    leaves the sign as the SVD returns it, so its maps differ.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
        >>> EigenGradCAM(model, "1")(torch.randn(3, 1, 8, 8)).shape
        torch.Size([3, 8, 8])
    """

    def weights(self, context: LayerContext) -> Tensor:
        """Return the gradients as pixel weights."""
        return context.gradients

    def combine(self, weighted: Tensor) -> Tensor:
        r"""Project :math:`g \odot A` on its first principal direction."""
        return map_ops.first_component(weighted)


class ShapleyCAM(BaseCAM):
    r"""Shapley-CAM: gradients corrected by second-order terms, a Shapley-value view of CAM.

    Cai et al., *CAMs as Shapley Value-based Explainers*, The Visual Computer
    2025, https://arxiv.org/abs/2501.06261.

    With :math:`g = \partial y^c / \partial A` and :math:`H` the Hessian of
    :math:`y^c` at the layer, the paper's second-order approximation of each
    channel's Shapley value gives

    .. math::

        \alpha_k^c = \frac{1}{Z} \sum_{i,j}
            \Big(g - \tfrac{1}{2} H A\Big)^k_{ij},
        \qquad
        L^c = \mathrm{ReLU}\Big(\sum_k \alpha_k^c A^k\Big),

    as in the authors' code in pytorch-grad-cam. :math:`H A` is one
    Hessian-vector product per target, taken by autograd. Where the network
    after the layer is piecewise linear in it (ReLUs, max-pooling, linear
    layers) and the score is a logit, :math:`H = 0` and Shapley-CAM is
    Grad-CAM; the paper pairs it with a softmax-based score, such as the
    log-probability (a callable target), where :math:`H \ne 0`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
        >>> log_probability = lambda out: out.log_softmax(1)[:, 0]
        >>> ShapleyCAM(model, "1")(torch.randn(3, 1, 8, 8), log_probability).shape
        torch.Size([3, 8, 8])
    """

    needs_hessian = True
    differentiable = False
    not_differentiable_because = "its Hessian term is computed outside the autograd graph"

    def weights(self, context: LayerContext) -> Tensor:
        r"""Return :math:`\alpha_k^c`."""
        corrected = context.gradients - 0.5 * context.hessian_times(context.activations[:, 0])
        return corrected.mean(dim=context.spatial_dims)


class SmoothGradCAMPlusPlus(BaseCAM):
    r"""Smooth Grad-CAM++: Grad-CAM++ with its derivatives averaged over noisy copies of x.

    Omeiza et al., *Smooth Grad-CAM++: An Enhanced Inference Level
    Visualization Technique for Deep Convolutional Neural Network Models*,
    2019, https://arxiv.org/abs/1908.01224.

    With :math:`g_s` the gradient at the layer for the input :math:`x +
    \varepsilon_s`, :math:`\varepsilon_s \sim \mathcal{N}(0, \sigma^2)` per
    element, and :math:`D_p = \frac{1}{S}\sum_{s=1}^{S} g_s^p`, the paper's
    Grad-CAM++ weights on the averaged derivatives are

    .. math::

        \alpha_{ij}^{kc} = \frac{D_2}{2 D_2 + \sum_{a,b} A^k_{ab}\, D_3},
        \qquad
        w_k^c = \sum_{i,j} \alpha_{ij}^{kc}\, \mathrm{ReLU}(D_1),

    with :math:`\alpha = 0` where the denominator is 0, and :math:`A` the
    activations of the clean input, also in the map :math:`\sum_k w_k^c A^k`.
    TorchCAM's ``SmoothGradCAMpp`` differs in three places (read in its
    code). The largest: its noisy passes overwrite the activations it
    stored, so its map weighs the *last noisy copy's* activations, not the
    clean input's (on the MNIST example the two maps differ by up to 0.45 of
    their [0, 1] range). It also sums :math:`A^k_{ab} D_3` over positions in
    the denominator, and takes the ReLU of the last noisy copy's gradient
    instead of :math:`D_1`. ``S`` forward and backward passes; the defaults
    (:math:`S = 4`, :math:`\sigma = 0.3`) are TorchCAM's.

    Args:
        model: As for :class:`~camkit.BaseCAM`.
        layer: As for :class:`~camkit.BaseCAM`.
        samples: :math:`S`, noisy copies of the input.
        noise_std: :math:`\sigma`, in the units of ``x``.
        seed: Seed of a generator made for each call (reproducible maps); ``None``
            draws from torch's global generator. The noise is drawn for the whole
            batch (in float32, whatever ``x``'s precision), so a sample's map depends
            on the batch it is in: the same batch gives the same maps, the sample
            alone another.
        **options: ``layout``, ``prefix_tokens``, ``grid`` as for :class:`~camkit.BaseCAM`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
        >>> SmoothGradCAMPlusPlus(model, "1", seed=0)(torch.randn(3, 1, 8, 8)).shape
        torch.Size([3, 8, 8])
    """

    differentiable = False
    not_differentiable_because = "its gradients come from noisy copies run outside the graph"

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec | list[LayerSpec],
        *,
        samples: int = 4,
        noise_std: float = 0.3,
        seed: int | None = None,
        **options: object,
    ) -> None:
        super().__init__(model, layer, **options)  # type: ignore[arg-type]
        self.samples = positive_int(samples, "samples")
        self.noise_std = non_negative(noise_std, "noise_std")
        self.seed = seed_or_none(seed)

    def settings(self) -> dict[str, Any]:
        """The shared settings and the noise: ``samples``, ``noise_std``, ``seed``."""
        return {
            **super().settings(),
            "samples": self.samples,
            "noise_std": self.noise_std,
            "seed": self.seed,
        }

    def weights(self, context: LayerContext) -> Tensor:
        """Return :math:`w_k^c` from the derivatives averaged over the noisy copies."""
        x, dims = context.inputs, context.spatial_dims
        generator = None
        if self.seed is not None:
            generator = torch.Generator(x.device).manual_seed(self.seed)
        moments = [torch.zeros((), dtype=torch.float64, device=x.device)] * 3
        for _ in range(self.samples):
            # drawn in float32 whatever the input's precision: a seed gives the same noise
            noise = torch.randn(x.shape, generator=generator, device=x.device).to(x.dtype)
            g = context.rerun(x + self.noise_std * noise).gradients.double()
            moments = [m + g**p for m, p in zip(moments, (1, 2, 3), strict=True)]
        d1, d2, d3 = (m / self.samples for m in moments)
        total = context.activations.double().sum(dim=dims, keepdim=True)
        denominator = 2 * d2 + total * d3
        alpha = torch.where(denominator != 0, d2 / torch.where(denominator != 0, denominator, 1), 0)
        return (alpha * d1.clamp_min(0)).sum(dim=dims).float()


class FinerCAM(GradCAM):
    r"""Finer-CAM: Grad-CAM of the target's score against the classes most like it.

    Zhang et al., *Finer-CAM: Spotting the Difference Reveals Finer Details
    for Visual Explanation*, CVPR 2025, https://arxiv.org/abs/2501.11309.

    For fine-grained classes, Grad-CAM of :math:`y^c` shows what the target
    shares with its look-alikes. Finer-CAM explains instead the score of
    :class:`~camkit.targets.FinerTarget`: with :math:`S` the ``similar``
    classes whose logits are closest to :math:`y^c` and :math:`p =
    \operatorname{softmax}(y)`,

    .. math::

        s^c = \frac{\sum_{j \in S} p_j \,(y^c - \alpha\, y^j)}{\sum_{j \in S} p_j},

    and Grad-CAM's weights of that score. :math:`\alpha = 0` gives Grad-CAM
    back; :math:`\alpha = 1` (the default) keeps only what separates the target
    from its neighbours. Any other method explains the same score with
    ``target=camkit.targets.FinerTarget(...)``, as pytorch-grad-cam's
    ``FinerCAM(base_method=...)`` does.

    Args:
        model: As for :class:`~camkit.BaseCAM`.
        layer: As for :class:`~camkit.BaseCAM`.
        alpha: :math:`\alpha`, the weight of the similar classes' logits.
        similar: How many similar classes to compare against (pytorch-grad-cam's
            default comparison categories are the 3 closest).
        **options: ``layout``, ``prefix_tokens``, ``grid`` as for :class:`~camkit.BaseCAM`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))
        >>> FinerCAM(model, "1")(torch.randn(3, 1, 8, 8), target=2).shape
        torch.Size([3, 8, 8])
    """

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec | list[LayerSpec],
        *,
        alpha: float = 1.0,
        similar: int = 3,
        **options: object,
    ) -> None:
        super().__init__(model, layer, **options)  # type: ignore[arg-type]
        FinerTarget(None, alpha=alpha, similar=similar)  # checks the options
        self.alpha = alpha
        self.similar = similar

    def settings(self) -> dict[str, Any]:
        """The shared settings and the comparison: ``alpha``, ``similar``."""
        return {**super().settings(), "alpha": self.alpha, "similar": self.similar}

    def target_for(self, target: Target) -> Target:
        """The :class:`~camkit.targets.FinerTarget` of the class(es) ``target`` names."""
        if callable(target):
            raise CamkitTypeError(
                f"target: FinerCAM compares the target class with its most similar classes, "
                f"so it needs class indices or None, not a callable ({target!r}); to explain "
                f"a score of your own, use GradCAM"
            )
        classes = cast(int | Sequence[int] | Tensor | None, target)  # FinerTarget checks it
        return FinerTarget(classes, alpha=self.alpha, similar=self.similar)
