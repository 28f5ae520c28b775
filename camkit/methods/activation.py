"""CAM methods that need no gradients: weights read from the activations or the model."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from camkit._engine import map_ops
from camkit._engine.layers import find_layer
from camkit._engine.option_checks import finite_number, non_negative, positive_int, positive_number
from camkit.base import BaseCAM, LayerSpec
from camkit.context import LayerContext
from camkit.errors import CamkitTypeError, CamkitValueError

__all__ = ["CAM", "FEM", "KPCACAM", "EigenCAM"]


class CAM(BaseCAM):
    r"""CAM: the classifier's own weights on globally pooled channels.

    Zhou et al., *Learning Deep Features for Discriminative Localization*,
    CVPR 2016, https://arxiv.org/abs/1512.04150.

    For a network that ends in ``conv → global average pool → linear``, with
    :math:`w_k^c` the linear layer's weight from channel :math:`k` to class
    :math:`c`,

    .. math::

        L^c = \mathrm{ReLU}\Big(\sum_k w_k^c A^k\Big).

    Needs class targets (not a callable) and no gradients.

    Args:
        model: As for :class:`~camkit.BaseCAM`.
        layer: The last conv layer (before the global pooling).
        fc: The linear classifier: its dotted name or the module.
        **options: ``layout``, ``prefix_tokens``, ``grid`` as for :class:`~camkit.BaseCAM`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(
        ...     nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...     nn.Flatten(), nn.Linear(4, 10))
        >>> CAM(model, "1", fc="4")(torch.randn(2, 1, 8, 8), target=3).shape
        torch.Size([2, 8, 8])
    """

    needs_gradients = False

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec | list[LayerSpec],
        *,
        fc: LayerSpec,
        **options: object,
    ) -> None:
        super().__init__(model, layer, **options)  # type: ignore[arg-type]
        self.fc_name, fc_module = find_layer(model, fc)
        if not isinstance(fc_module, nn.Linear):
            raise CamkitTypeError(
                f"fc: {self.fc_name!r} is a {type(fc_module).__name__}; CAM needs the "
                f"nn.Linear classifier that follows the global pooling"
            )
        self.fc = fc_module

    def settings(self) -> dict[str, Any]:
        """The shared settings and the classifier's name, ``fc``."""
        return {**super().settings(), "fc": self.fc_name}

    def weights(self, context: LayerContext) -> Tensor:
        """Return the classifier weights :math:`w_k^c` of each target class."""
        if context.classes is None:
            raise CamkitValueError(
                "target: CAM reads class weights from the classifier, so it needs class "
                "targets (None, ints), not a callable"
            )
        weight = self.fc.weight.to(context.activations.dtype)  # differentiable maps only: graph
        channels = context.activations.shape[2]
        if weight.shape[1] != channels:
            raise CamkitValueError(
                f"fc: {self.fc_name!r} has {weight.shape[1]} input features but layer "
                f"{context.layer!r} has {channels} channels; CAM needs conv → global pool → fc"
            )
        return weight[context.classes.to(weight.device)].to(context.activations.device)


class EigenCAM(BaseCAM):
    r"""Eigen-CAM: the activations projected on their first principal direction.

    Muhammad & Yeasin, *Eigen-CAM: Class Activation Map using Principal
    Components*, IJCNN 2020, https://arxiv.org/abs/2008.00299.

    With the layer's activations arranged as a (pixels x channels) matrix
    :math:`A = U \Sigma V^\top` (not centred, as in the paper),

    .. math::

        L = \mathrm{ReLU}(A\, v_1),

    where :math:`v_1` is the first right singular vector. Its sign, arbitrary
    in an SVD, is fixed so that :math:`A v_1` sums to a non-negative value
    (pointing to the positive mass). The map does not depend on the target.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
        >>> EigenCAM(model, "1")(torch.randn(3, 1, 8, 8)).shape
        torch.Size([3, 8, 8])
    """

    needs_gradients = False

    def weights(self, context: LayerContext) -> Tensor:
        """Return :math:`v_1` for each sample, repeated for every target."""
        pixels = context.activations[:, 0].flatten(2).transpose(1, 2)  # (N, pixels, C)
        first = map_ops.first_direction(pixels)
        return first[:, None, :].expand(-1, context.scores.shape[1], -1)


class FEM(BaseCAM):
    r"""FEM (Feature Explanation Method): channels weighted by how often they fire strongly.

    Fuad et al., *Features Understanding in 3D CNNs for Actions Recognition
    in Video*, IPTA 2020, https://hal.science/hal-02963298.

    A position of channel :math:`k` counts as a strong response when it
    exceeds the channel's mean by :math:`\kappa` standard deviations (over
    positions, the population deviation); the weight is the fraction of such
    positions:

    .. math::

        w_k = \frac{1}{Z} \sum_{i,j}
            \mathbb{1}\big[A^k_{ij} > \mu_k + \kappa\, \sigma_k\big],
        \qquad
        L = \mathrm{ReLU}\Big(\sum_k w_k A^k\Big).

    No gradients: the map is the same for every target, as in
    pytorch-grad-cam's ``FEM``.

    Args:
        model: As for :class:`~camkit.BaseCAM`.
        layer: As for :class:`~camkit.BaseCAM`.
        k: :math:`\kappa`, the number of standard deviations (2, as in the paper).
        **options: ``layout``, ``prefix_tokens``, ``grid`` as for :class:`~camkit.BaseCAM`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
        >>> FEM(model, "1")(torch.randn(3, 1, 8, 8)).shape
        torch.Size([3, 8, 8])
    """

    needs_gradients = False

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec | list[LayerSpec],
        *,
        k: float = 2.0,
        **options: object,
    ) -> None:
        super().__init__(model, layer, **options)  # type: ignore[arg-type]
        self.k = non_negative(k, "k")

    def settings(self) -> dict[str, Any]:
        """The shared settings and ``k``."""
        return {**super().settings(), "k": self.k}

    def weights(self, context: LayerContext) -> Tensor:
        """Return :math:`w_k`, the fraction of strong responses, repeated for every target."""
        flat = context.activations[:, 0].flatten(2)  # (N, C, positions)
        mean = flat.mean(dim=2, keepdim=True)
        std = flat.std(dim=2, correction=0, keepdim=True)
        strong = (flat > mean + self.k * std).to(flat.dtype).mean(dim=2)
        return strong[:, None, :].expand(-1, context.scores.shape[1], -1)


class KPCACAM(BaseCAM):
    r"""KPCA-CAM: the activations' first kernel principal component.

    Karmani et al., *KPCA-CAM: Visual Explainability of Deep Computer Vision
    Models using Kernel PCA*, MMSP 2024, https://arxiv.org/abs/2410.00267.

    Eigen-CAM with kernel PCA in place of PCA: the layer's activations as
    (positions x channels) rows :math:`a_p`, centred per channel, give the
    kernel matrix :math:`K_{pq} = \kappa(a_p, a_q)`, centred in feature space
    (:math:`\tilde K = K - 1K - K1 + 1K1`, with :math:`1` the matrix of
    :math:`1/P`). With :math:`(\lambda_1, u_1)` its top eigenpair,

    .. math::

        L = \mathrm{ReLU}\big(\pm \sqrt{\lambda_1}\, u_1\big),

    the sign making the largest magnitude positive. The kernels and their
    defaults are scikit-learn's ``KernelPCA``'s (which pytorch-grad-cam's
    ``KPCA_CAM`` calls, and whose maps camkit's agree with): ``"sigmoid"``
    :math:`\tanh(\gamma\, a \cdot b + c_0)` (the default), ``"rbf"``
    :math:`\exp(-\gamma \|a - b\|^2)`, ``"poly"`` :math:`(\gamma\, a \cdot b +
    c_0)^d`, ``"cosine"`` and ``"linear"`` (which is centred Eigen-CAM), with
    :math:`\gamma = 1 / C` unless given, :math:`c_0 = 1`, :math:`d = 3`. The
    map does not depend on the target. One :math:`P \times P` eigenproblem per
    sample, in float64: cheap for the usual 7 x 7 to 28 x 28 layers.

    Args:
        model: As for :class:`~camkit.BaseCAM`.
        layer: As for :class:`~camkit.BaseCAM`.
        kernel: ``"sigmoid"``, ``"rbf"``, ``"poly"``, ``"cosine"`` or ``"linear"``.
        gamma: :math:`\gamma`, or ``None`` for :math:`1 / C`.
        coef0: :math:`c_0` of the sigmoid and polynomial kernels.
        degree: :math:`d` of the polynomial kernel.
        **options: ``layout``, ``prefix_tokens``, ``grid`` as for :class:`~camkit.BaseCAM`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
        >>> KPCACAM(model, "1", kernel="rbf")(torch.randn(3, 1, 8, 8)).shape
        torch.Size([3, 8, 8])
    """

    needs_gradients = False

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec | list[LayerSpec],
        *,
        kernel: str = "sigmoid",
        gamma: float | None = None,
        coef0: float = 1.0,
        degree: int = 3,
        **options: object,
    ) -> None:
        super().__init__(model, layer, **options)  # type: ignore[arg-type]
        if kernel not in map_ops.KERNELS:
            raise CamkitValueError(
                f"kernel: got {kernel!r}; allowed: {', '.join(map(repr, map_ops.KERNELS))}"
            )
        self.kernel = kernel
        self.gamma = None if gamma is None else positive_number(gamma, "gamma")
        self.coef0 = finite_number(coef0, "coef0")
        self.degree = positive_int(degree, "degree")

    def settings(self) -> dict[str, Any]:
        """The shared settings and the kernel: ``kernel``, ``gamma``, ``coef0``, ``degree``."""
        return {
            **super().settings(),
            "kernel": self.kernel,
            "gamma": self.gamma,
            "coef0": self.coef0,
            "degree": self.degree,
        }

    def weights(self, context: LayerContext) -> Tensor:
        """Return ones: :meth:`combine` reads the activations themselves."""
        a = context.activations
        return a.new_ones(a.shape[0], context.scores.shape[1], a.shape[2])

    def combine(self, weighted: Tensor) -> Tensor:
        """Return the first kernel principal component of the activations."""
        return map_ops.kernel_component(weighted, self.kernel, self.gamma, self.coef0, self.degree)
