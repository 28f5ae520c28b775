"""What a method sees of one layer when it computes its weights: :class:`LayerContext`."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from camkit.errors import CamkitValueError

__all__ = ["LayerContext", "Rescore"]

Rescore = Callable[[Tensor, Tensor], Tensor]
"""``rescore(rows, samples) -> (M, k) scores``: the model re-run, row ``i`` for sample
``samples[i]``, without gradients."""


class LayerContext:
    """What a method sees of one layer: tensors, and ways to re-run the model.

    Plain data: a CAM builds one per layer and call, and a test can build one
    by hand to check a method's :meth:`~camkit.BaseCAM.weights` on tensors of
    its choosing (see the "Extending camkit" page).

    Args:
        layer: The layer's name.
        activations: The layer's output ``A`` as float32 ``(N, 1, C, *spatial)``;
            the singleton axis broadcasts against the ``k`` targets.
        scores: The target scores of the forward pass, ``(N, k)``.
        inputs: The input batch ``x``.
        classes: The target classes ``(N, k)``, or ``None`` for a callable target.
        gradients: ``d score / d A`` as float32 ``(N, k, C, *spatial)``, one
            slice per target; ``None`` for a method that needs no gradients.
        score_inputs: Re-runs the model on other inputs (``(M, *x.shape[1:])``
            rows, the sample of each row); see :meth:`score_inputs`.
        score_activations: Re-runs the model with the layer's output replaced
            by ``(M, C, *spatial)`` rows; see :meth:`score_activations`.
        hessian_times: Second derivatives of the scores at the layer times a
            vector; see :meth:`hessian_times`.
        rerun: The context of the same layer and targets for other inputs; see
            :meth:`rerun`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from camkit import GradCAM, LayerContext
        >>> gradients = torch.arange(32.0).view(1, 1, 2, 4, 4)  # N=1, k=1, C=2, 4x4
        >>> context = LayerContext(layer="0", activations=torch.rand(1, 1, 2, 4, 4),
        ...                        scores=torch.zeros(1, 1), inputs=torch.zeros(1, 1, 6, 6),
        ...                        gradients=gradients)
        >>> model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(32, 3))
        >>> GradCAM(model, "0").weights(context)  # the mean gradient of each channel
        tensor([[[ 7.5000, 23.5000]]])
    """

    def __init__(
        self,
        *,
        layer: str,
        activations: Tensor,
        scores: Tensor,
        inputs: Tensor,
        classes: Tensor | None = None,
        gradients: Tensor | None = None,
        score_inputs: Rescore | None = None,
        score_activations: Rescore | None = None,
        hessian_times: Callable[[Tensor], Tensor] | None = None,
        rerun: Callable[[Tensor], LayerContext] | None = None,
    ) -> None:
        self.layer = layer
        self.activations = activations
        self.scores = scores
        self.inputs = inputs
        self.classes = classes
        self._gradients = gradients
        self._score_inputs = score_inputs
        self._score_activations = score_activations
        self._hessian_times = hessian_times
        self._rerun = rerun

    @property
    def gradients(self) -> Tensor:
        """``d score / d A`` as float32 ``(N, k, C, *spatial)``, one slice per target."""
        if self._gradients is None:
            raise CamkitValueError(
                f"gradients: this context of layer {self.layer!r} holds none (a method with "
                f"needs_gradients = False gets none); set needs_gradients = True"
            )
        return self._gradients

    @property
    def spatial_dims(self) -> tuple[int, ...]:
        """The axes of :attr:`activations` and :attr:`gradients` that are spatial."""
        return tuple(range(3, self.activations.dim()))

    def score_inputs(self, inputs: Tensor, samples: Tensor) -> Tensor:
        """Run the model on other inputs; row ``i`` belongs to sample ``samples[i]``.

        Returns:
            The target scores ``(M, k)`` of each row, for its sample's targets.
        """
        return _rescore(self._score_inputs, "score_inputs", self.layer)(inputs, samples)

    def score_activations(self, activations: Tensor, samples: Tensor) -> Tensor:
        """Run the model with the layer's output replaced.

        Args:
            activations: Replacement activations ``(M, C, *spatial)``, one row per
                run, in the channels-first layout of :attr:`activations`.
            samples: ``(M,)`` the sample each row belongs to; its input is used.

        Returns:
            The target scores ``(M, k)`` of each row.
        """
        return _rescore(self._score_activations, "score_activations", self.layer)(
            activations, samples
        )

    def hessian_times(self, vectors: Tensor) -> Tensor:
        r"""The Hessian of each target's score at the layer times ``vectors``.

        Args:
            vectors: ``(N, C, *spatial)``, one per sample, in the layout of
                :attr:`activations`.

        Returns:
            :math:`\big(\partial^2 y^c / \partial A\, \partial A\big)\, v` as
            ``(N, k, C, *spatial)``; zero where the network after the layer is
            piecewise linear. Only for methods with ``needs_hessian = True``.
        """
        if self._hessian_times is None:
            raise CamkitValueError(
                f"hessian_times: this context of layer {self.layer!r} was built without "
                f"second derivatives; pass hessian_times= when building it"
            )
        return self._hessian_times(vectors)

    def rerun(self, inputs: Tensor) -> LayerContext:
        """The context of the same layer and the same target classes for other inputs.

        A fresh forward (and, for a method that needs gradients, backward) pass
        on ``inputs`` (``x``'s shape, row ``i`` for sample ``i``), such as
        ``x`` plus noise (Smooth Grad-CAM++). A class target keeps the classes
        of the explained pass, even where the predicted class changes.
        """
        if self._rerun is None:
            raise CamkitValueError(
                f"rerun: this context of layer {self.layer!r} was built without a way to "
                f"re-run the model; pass rerun= when building it"
            )
        return self._rerun(inputs)


def _rescore(function: Rescore | None, name: str, layer: str) -> Rescore:
    if function is None:
        raise CamkitValueError(
            f"{name}: this context of layer {layer!r} was built without a way to re-run "
            f"the model; pass {name}= when building it"
        )
    return function
