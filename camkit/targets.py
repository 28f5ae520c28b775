"""What to explain: turning a ``target`` argument into scores per sample.

A CAM explains a scalar score per sample. camkit accepts the target in the
forms users know from pytorch-grad-cam, TorchCAM and Captum:

* ``None``: each sample's predicted class (argmax of the model output);
* an ``int``: that class for every sample;
* a sequence of ints, or a 1-D integer tensor or array: one class per sample;
* a callable ``f(output) -> Tensor`` returning one score per sample, for
  segmentation, regression, multi-head models, or outputs that are tuples or
  dicts.

Several targets per sample at once: a 2-D integer tensor or array (or a list
of lists) of shape ``(N, k)``, or a callable returning ``(N, k)`` scores, gives
``k`` maps per sample from one forward pass, returned as ``(N, k, *spatial)``.
camkit differentiates the ``k`` scores in batched backward passes of up to 16;
a callable with a ``backward_chunk`` attribute sets that number (1: one pass
per score, as :class:`TokenTarget` asks for a language model's tokens).

Class targets read the pre-softmax score from an ``(N, C)`` output, as the
Grad-CAM paper prescribes: the output itself, its ``.logits`` (a Hugging Face
``ModelOutput``), or its ``"logits"`` or ``"out"`` entry (a dict), so models
that return such containers need no callable for a class target.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from camkit._engine.model_outputs import field_of
from camkit._engine.option_checks import finite_number, positive_int
from camkit.errors import CamkitTypeError, CamkitValueError

__all__ = [
    "BinaryTarget",
    "Classes",
    "DetectionTarget",
    "FinerTarget",
    "RegressionTarget",
    "ScoreFunction",
    "SegmentationTarget",
    "SimilarityTarget",
    "Target",
    "TokenTarget",
    "box_iou",
    "class_scores",
]

ScoreFunction = Callable[[Any], Tensor]
"""A callable mapping the model output to ``(N,)`` scores, or ``(N, k)`` for k targets."""

Target = None | int | Sequence[int] | Sequence[Sequence[int]] | Tensor | np.ndarray | ScoreFunction
"""Every form the ``target`` argument of a CAM may take."""


def class_scores(output: Tensor, classes: Tensor) -> Tensor:
    """Pick class scores per sample from a classifier's ``(N, C)`` output.

    Args:
        output: The model's scores (logits), shape ``(N, C)``.
        classes: Class indices, shape ``(N,)`` or ``(N, k)``.

    Returns:
        ``output[i, classes[i]]`` for every sample, shaped like ``classes``.

    Example:
        >>> import torch
        >>> class_scores(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([1, 0]))
        tensor([2., 3.])
    """
    index = _autograd_safe(classes.to(output.device))
    return output.gather(1, index.view(len(index), -1)).view(index.shape)


def _autograd_safe(table: Tensor) -> Tensor:
    """``table``, copied if it is an inference tensor (one made under
    :func:`torch.inference_mode`, such as classes predicted there), which autograd cannot
    save for the backward pass; any other tensor as it is, uncopied."""
    if not table.is_inference():
        return table
    with torch.inference_mode(False):
        return table.clone()


Classes = int | Sequence[int] | Sequence[Sequence[int]] | Tensor | np.ndarray
"""Classes for a ready-made target: one for every sample, one per sample ``(N,)``, or
``k`` per sample ``(N, k)``."""


class SegmentationTarget:
    """The score of a class over a region of a segmentation output.

    The score is the class's logit summed over the region's pixels (the usual
    convention, as in pytorch-grad-cam's ``SemanticSegmentationTarget``): the
    whole image, a ``mask``, or a ``box``. The output is read as ``(N, C, *spatial)``
    logits: the output itself, its ``"out"`` entry (torchvision's FCN,
    DeepLabV3, LRASPP), its ``.logits`` (Hugging Face), or the field ``key``.

    Args:
        classes: The class to explain: an int for every sample, one per sample
            ``(N,)``, or ``k`` per sample ``(N, k)`` for ``k`` maps per sample.
        mask: The region, in the output's pixel grid: ``(*spatial)`` for every
            sample or ``(N, *spatial)``, boolean or weights. A mask of another
            size is resized to the output's (averaging over areas).
        box: The region as a box ``(x0, y0, x1, y1)`` in the output's pixels
            (``x1``, ``y1`` excluded), for every sample ``(4,)`` or per sample
            ``(N, 4)``; 2-D outputs only. Give a mask or a box, not both.
        key: The output field holding the logits, when it is not found as above.

    Example:
        >>> import torch
        >>> target = SegmentationTarget(1, box=(0, 0, 2, 2))
        >>> target(torch.ones(3, 2, 4, 4))
        tensor([4., 4., 4.])
    """

    flip_invariant = False
    """The score depends on pixel positions, so ``aug_smooth`` (a flip) cannot be used."""

    def __init__(
        self,
        classes: Classes,
        *,
        mask: Tensor | np.ndarray | None = None,
        box: Sequence[float] | Tensor | np.ndarray | None = None,
        key: str | None = None,
    ) -> None:
        self.classes, self.multi = _class_table(classes, "classes")
        if mask is not None and box is not None:
            raise CamkitValueError("mask, box: give a mask or a box, not both")
        self.mask = None if mask is None else _tensor(mask, "mask")
        self.box = None if box is None else _boxes(box, "box", per_sample_dim=2)
        self.key = key

    def __call__(self, output: Any, samples: Tensor | None = None) -> Tensor:
        """Scores ``(M,)`` (``(M, k)`` for ``k`` classes) of the ``M`` samples in ``output``
        (row ``i`` is sample ``samples[i]``, or sample ``i`` when ``samples`` is ``None``)."""
        logits = field_of(output, self.key, "SegmentationTarget")
        if logits.dim() < 3:
            raise CamkitValueError(
                f"target: SegmentationTarget needs (N, classes, *spatial) logits, "
                f"got shape {tuple(logits.shape)}"
            )
        m, spatial = len(logits), tuple(logits.shape[2:])
        largest = int(self.classes.max())  # on the host: no device read
        if largest >= logits.shape[1]:
            raise CamkitValueError(
                f"classes: class {largest} is out of range; the output has "
                f"{logits.shape[1]} classes"
            )
        classes = _for_rows(self.classes, samples, m, "classes").to(logits.device)
        index = classes.view(*classes.shape, *([1] * len(spatial))).expand(-1, -1, *spatial)
        picked = logits.gather(1, index)  # (M, k, *spatial)
        region = self._region(samples, m, spatial, logits)
        scores = (picked if region is None else picked * region).flatten(2).sum(-1)
        return scores if self.multi else scores[:, 0]

    def _region(
        self, samples: Tensor | None, m: int, spatial: tuple[int, ...], like: Tensor
    ) -> Tensor | None:
        if self.mask is not None:
            mask = self.mask if self.mask.dim() > len(spatial) else self.mask[None]
            mask = _for_rows(mask, samples, m, "mask").to(like.device, like.dtype)
            if tuple(mask.shape[1:]) != spatial:
                if mask.dim() - 1 != len(spatial):
                    raise CamkitValueError(
                        f"mask: got shape {tuple(self.mask.shape)}; the output's pixel grid "
                        f"is {spatial}, so allowed: {spatial} or (N, *{spatial})"
                    )
                mask = F.interpolate(mask[:, None], size=spatial, mode="area")[:, 0]
            return mask[:, None]
        if self.box is not None:
            if len(spatial) != 2:
                raise CamkitValueError("box: boxes need a 2-D output; give a mask instead")
            boxes = _for_rows(self.box, samples, m, "box").to(like.device)
            ys = torch.arange(spatial[0], device=like.device)[None, :, None]
            xs = torch.arange(spatial[1], device=like.device)[None, None, :]
            x0, y0, x1, y1 = (boxes[:, j, None, None] for j in range(4))
            inside = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
            return inside.to(like.dtype)[:, None]
        return None

    def __repr__(self) -> str:
        region = "mask" if self.mask is not None else "box" if self.box is not None else "image"
        return f"SegmentationTarget(classes={_short(self.classes)}, region={region})"


class DetectionTarget:
    """The score of the detections that match given boxes and labels (torchvision detectors).

    For each given box, the score is that of the detection with the same label
    and the highest IoU with the box, if that IoU reaches ``iou_threshold``;
    one map per box (``k`` boxes per sample give ``(N, k, *spatial)`` maps), or
    one for them all with ``reduce="sum"``. The output is a list with one dict
    per image with ``"boxes"`` (``x0, y0, x1, y1``), ``"labels"`` and
    ``"scores"``, as torchvision's Faster R-CNN, Mask R-CNN, RetinaNet, FCOS and
    SSD return in eval mode.

    A box with no match in the explained forward pass raises an error (naming
    the box and its best IoU); when the model re-runs on perturbed copies
    (Score-CAM, Ablation-CAM), a box with no match scores 0.
    :meth:`every` explains every detection of each image in one pass.

    Args:
        labels: The class of each box: an int for all boxes, ``(k,)`` for the
            same ``k`` boxes of every sample, or ``(N, k)``.
        boxes: ``(4,)`` for one box, ``(k, 4)`` for every sample, or
            ``(N, k, 4)`` (or a list of ``N`` ``(k, 4)`` boxes), in the input
            image's pixels, as the detector reports them.
        iou_threshold: The IoU a detection needs to match a box.
        reduce: ``None`` for one score per box, ``"sum"`` for one per sample.

    Example:
        >>> import torch
        >>> output = [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([3]),
        ...            "scores": torch.tensor([0.9])}]
        >>> DetectionTarget(3, [1.0, 0, 10, 10])(output)
        tensor([0.9000])
    """

    flip_invariant = False
    """The score depends on box positions, so ``aug_smooth`` (a flip) cannot be used."""

    def __init__(
        self,
        labels: Classes,
        boxes: Sequence[Any] | Tensor | np.ndarray,
        *,
        iou_threshold: float = 0.5,
        reduce: str | None = None,
    ) -> None:
        if not 0 < iou_threshold <= 1:
            raise CamkitValueError(f"iou_threshold: got {iou_threshold}; allowed: (0, 1]")
        if reduce not in (None, "sum"):
            raise CamkitValueError(f"reduce: got {reduce!r}; allowed: None or 'sum'")
        self.boxes = _boxes(boxes, "boxes", per_sample_dim=3)
        self.single = _tensor(boxes, "boxes").dim() == 1
        table, _ = _class_table(labels, "labels")
        n, k = self.boxes.shape[:2]
        if table.numel() == 1:
            table = table.expand(1, k)
        elif _tensor(labels, "labels").dim() == 1 and len(table) == k:
            table = table.T  # (k,): the labels of the k boxes
        if table.shape[1] != k or (len(table) not in (1, n) and n != 1):
            raise CamkitValueError(
                f"labels: got shape {tuple(_tensor(labels, 'labels').shape)} for boxes of "
                f"shape {tuple(self.boxes.shape)}; give one label per box: an int, (k,) or (N, k)"
            )
        self.labels = table
        self.iou_threshold = iou_threshold
        self.reduce = reduce
        self._min_score: float | None = None

    @classmethod
    def every(cls, min_score: float = 0.5, *, iou_threshold: float = 0.5) -> DetectionTarget:
        """A target for every detection scoring ``min_score`` or more, ``k`` maps per sample.

        The detections are read from the output of the explained forward pass
        and kept in :attr:`boxes` and :attr:`labels` (``(N, k, 4)`` and ``(N, k)``,
        ``k`` the most any image has; an image with fewer has label ``-1`` in the
        remaining places, and scores 0 and an all-zero map there).

        Example:
            >>> import torch
            >>> output = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [5.0, 5, 9, 9]]),
            ...            "labels": torch.tensor([3, 1]), "scores": torch.tensor([0.9, 0.2])}]
            >>> target = DetectionTarget.every(min_score=0.5)
            >>> target(output), target.labels
            (tensor([[0.9000]]), tensor([[3]]))
        """
        target = cls(0, torch.zeros(1, 1, 4), iou_threshold=iou_threshold)
        target._min_score = float(min_score)
        return target

    def __call__(self, output: Any, samples: Tensor | None = None) -> Tensor:
        """Scores ``(M, k)`` (``(M,)`` for one box or ``reduce="sum"``) of the ``M`` images in
        ``output`` (row ``i`` is sample ``samples[i]``, or ``i`` when ``samples`` is ``None``)."""
        detections = _detections(output)
        if self._min_score is not None and samples is None:
            self._take_detections(detections)
        m = len(detections)
        boxes = _for_rows(self.boxes, samples, m, "boxes")
        labels = _for_rows(self.labels, samples, m, "labels")
        rows = []
        for i, found in enumerate(detections):
            score, iou = _matched(found, boxes[i], labels[i], self.iou_threshold)
            if samples is None and self._min_score is None:
                self._check_matched(i, iou, boxes[i], labels[i])
            rows.append(score)
        scores = torch.stack(rows)
        if self.reduce == "sum":
            return scores.sum(1)
        return scores[:, 0] if self.single else scores

    def _take_detections(self, detections: list[Any]) -> None:
        assert self._min_score is not None
        kept = [d["scores"].detach() >= self._min_score for d in detections]
        counts = [int(keep.sum()) for keep in kept]
        k = max(counts)
        if k == 0:
            best = max(
                (float(d["scores"].detach().max()) for d in detections if len(d["scores"])),
                default=0,
            )
            raise CamkitValueError(
                f"target: no detection scores min_score={self._min_score} or more (the best "
                f"scores {best:.3g}); lower min_score"
            )
        self.boxes = torch.zeros(len(detections), k, 4)
        self.labels = torch.full((len(detections), k), -1, dtype=torch.int64)
        for i, (found, keep, n) in enumerate(zip(detections, kept, counts, strict=True)):
            self.boxes[i, :n] = found["boxes"].detach()[keep.to(found["boxes"].device)].cpu()
            self.labels[i, :n] = found["labels"][keep.to(found["labels"].device)].cpu()

    def _check_matched(self, sample: int, iou: Tensor, boxes: Tensor, labels: Tensor) -> None:
        missing = (iou < self.iou_threshold).nonzero()
        if len(missing):
            j = int(missing[0, 0])
            raise CamkitValueError(
                f"target: box {j} of sample {sample} ({boxes[j].tolist()}, label "
                f"{int(labels[j])}) matches no detection: the best IoU with a detection of "
                f"that label is {max(float(iou[j]), 0.0):.3g}, below iou_threshold="
                f"{self.iou_threshold}; check the box and label, or lower iou_threshold"
            )

    def __repr__(self) -> str:
        if self._min_score is not None:
            return f"DetectionTarget.every(min_score={self._min_score})"
        return f"DetectionTarget(labels={_short(self.labels)}, boxes={tuple(self.boxes.shape)})"


class SimilarityTarget:
    """Cosine similarity of the model's embedding to reference embeddings or concept vectors.

    For CLIP image-text similarity (the reference is a text embedding),
    re-identification and retrieval (the reference is another image's
    embedding) and concept vectors. The embedding is the output itself when
    it is an ``(N, D)`` tensor, or the field ``key`` of a container (such as
    ``"image_embeds"`` of a Hugging Face CLIP output).

    Args:
        reference: ``(D,)`` for one reference, ``(k, D)`` for ``k`` references
            (``k`` maps per sample), or ``(N, D)`` with ``per_sample=True``.
        key: The output field holding the embedding.
        per_sample: Whether ``reference`` has one row per sample.

    Example:
        >>> import torch
        >>> SimilarityTarget(torch.tensor([1.0, 0.0]))(torch.tensor([[2.0, 0.0], [0.0, 3.0]]))
        tensor([1., 0.])
    """

    def __init__(
        self,
        reference: Tensor | np.ndarray,
        *,
        key: str | None = None,
        per_sample: bool = False,
    ) -> None:
        ref = _tensor(reference, "reference").detach()
        if (
            not ref.is_floating_point()
            or ref.dim() not in (1, 2)
            or (per_sample and ref.dim() != 2)
        ):
            allowed = "(N, D)" if per_sample else "(D,) or (k, D)"
            raise CamkitValueError(
                f"reference: got a {ref.dtype} tensor of shape {tuple(ref.shape)}; "
                f"allowed: float {allowed}"
            )
        self.reference = F.normalize(ref.float(), dim=-1)
        self.key = key
        self.per_sample = per_sample

    def __call__(self, output: Any, samples: Tensor | None = None) -> Tensor:
        """Cosine similarities ``(M,)`` or ``(M, k)`` of the ``M`` embeddings in ``output``."""
        embedding = field_of(output, self.key, "SimilarityTarget")
        if embedding.dim() != 2 or embedding.shape[1] != self.reference.shape[-1]:
            raise CamkitValueError(
                f"target: SimilarityTarget needs (N, {self.reference.shape[-1]}) embeddings, "
                f"got shape {tuple(embedding.shape)}"
            )
        unit = F.normalize(embedding, dim=1)
        reference = _autograd_safe(self.reference.to(unit.device, unit.dtype))
        if self.per_sample:
            rows = _for_rows(reference, samples, len(unit), "reference")
            return (unit * rows).sum(1)
        return unit @ reference if reference.dim() == 1 else unit @ reference.T

    def __repr__(self) -> str:
        return f"SimilarityTarget(reference={tuple(self.reference.shape)})"


class BinaryTarget:
    """A single-logit binary classifier's score for class 1 (the logit) or 0 (its negative).

    The output is ``(N,)`` or ``(N, 1)`` logits (before the sigmoid); class 1's
    evidence is the logit, class 0's its negative, as in pytorch-grad-cam's
    ``BinaryClassifierOutputTarget``.

    Args:
        classes: ``1`` or ``0`` for every sample, one per sample, or ``None``
            for each sample's predicted class (logit above 0), read from the
            explained forward pass.
        key: The output field holding the logit, when it is not the output
            itself, its ``.logits`` or its ``"logits"`` or ``"out"`` entry.

    Example:
        >>> import torch
        >>> BinaryTarget(0)(torch.tensor([[2.0], [-1.0]]))
        tensor([-2.,  1.])
    """

    def __init__(self, classes: int | Sequence[int] | Tensor | None = 1, *, key: str | None = None):
        self.classes = None if classes is None else _class_table(classes, "classes")[0]
        if self.classes is not None and (self.classes.shape[1] != 1 or int(self.classes.max()) > 1):
            raise CamkitValueError(
                f"classes: got {_short(self.classes)}; a binary target takes 0 or 1, one per sample"
            )
        self._predicted = classes is None
        self.key = key

    def __call__(self, output: Any, samples: Tensor | None = None) -> Tensor:
        """Signed logits ``(M,)`` of the ``M`` samples in ``output``."""
        logit = _column(field_of(output, self.key, "BinaryTarget"))
        if logit.dim() != 1:
            raise CamkitValueError(
                f"target: BinaryTarget needs one logit per sample, (N,) or (N, 1), got shape "
                f"{tuple(logit.shape)}; for two or more classes give class indices"
            )
        if self._predicted and samples is None:
            self.classes = (logit.detach() > 0).long().cpu()[:, None]
        classes = _for_rows(cast(Tensor, self.classes), samples, len(logit), "classes")[:, 0]
        return torch.where(classes.to(logit.device) == 1, logit, -logit)

    def __repr__(self) -> str:
        return f"BinaryTarget(classes={'predicted' if self._predicted else _short(self.classes)})"


class FinerTarget:
    r"""Finer-CAM's score: a class's logit against the classes whose logits are closest to it.

    Zhang et al., *Finer-CAM: Spotting the Difference Reveals Finer Details
    for Visual Explanation*, CVPR 2025, https://arxiv.org/abs/2501.11309.
    With :math:`S` the ``similar`` classes whose logits are nearest the
    target's :math:`y^c` (the target itself excluded) and :math:`p =
    \operatorname{softmax}(y)`,

    .. math::

        s^c = \frac{\sum_{j \in S} p_j \,(y^c - \alpha\, y^j)}{\sum_{j \in S} p_j},

    as pytorch-grad-cam's ``FinerWeightedTarget`` computes it (the
    probabilities included in the gradient). The similar classes are chosen
    on the explained forward pass and kept for re-scored copies (Score-CAM,
    Ablation-CAM). :class:`~camkit.FinerCAM` is Grad-CAM of this score; any
    other method takes it as its ``target``.

    Args:
        classes: The target class: ``None`` for each sample's predicted class,
            an ``int``, one per sample, or ``(N, k)`` for ``k`` scores per sample.
        alpha: :math:`\alpha`, the weight of the similar classes' logits.
        similar: How many similar classes (at most the number of classes minus 1).
        key: The output field holding the logits, when it is not the output
            itself, its ``.logits`` or its ``"logits"`` or ``"out"`` entry.

    Example:
        >>> import torch
        >>> logits = torch.tensor([[4.0, 3.0, 0.0, -1.0]])
        >>> FinerTarget(0, similar=1)(logits)  # class 1 is closest: 4 - 3
        tensor([1.])
    """

    def __init__(
        self,
        classes: int | Sequence[int] | Tensor | None = None,
        *,
        alpha: float = 1.0,
        similar: int = 3,
        key: str | None = None,
    ) -> None:
        self.classes: Tensor | None = None
        self._multi = False
        self._largest = -1
        if classes is not None:
            self.classes, self._multi = _class_table(classes, "classes")
            self._largest = _python_max(classes)
        self._predicted = classes is None
        self.alpha = finite_number(alpha, "alpha")
        self.similar = positive_int(similar, "similar")
        self.key = key
        self.compared: Tensor | None = None
        """The similar classes ``(N, k, similar)`` of the last explained pass."""

    def __call__(self, output: Any, samples: Tensor | None = None) -> Tensor:
        """Scores ``(M,)`` (or ``(M, k)``) of the ``M`` samples in ``output``."""
        logits = field_of(output, self.key, "FinerTarget")
        if logits.dim() != 2 or logits.shape[1] <= self.similar:
            raise CamkitValueError(
                f"target: FinerTarget compares each class with {self.similar} other(s), so it "
                f"needs (N, C) logits with C > {self.similar}; got shape {tuple(logits.shape)}"
            )
        if samples is None:  # the explained pass: choose the classes
            values = logits.detach()
            if self._predicted:
                self.classes = values.argmax(1, keepdim=True)
            if self._largest >= logits.shape[1]:
                raise CamkitValueError(
                    f"target: class {self._largest} is out of range; the model outputs "
                    f"{logits.shape[1]} classes, so allowed: 0 to {logits.shape[1] - 1}"
                )
            main = _for_rows(cast(Tensor, self.classes), None, len(values), "classes")
            main = main.to(values.device)  # (N, k)
            distance = (values[:, None, :] - values.gather(1, main)[..., None]).abs()
            distance = distance.scatter(2, main[..., None], float("inf"))
            self.compared = distance.topk(self.similar, dim=2, largest=False).indices
        if self.compared is None:
            raise CamkitValueError(
                "target: FinerTarget chooses the similar classes on the explained pass; "
                "call it on that pass (samples=None) first"
            )
        main = _for_rows(cast(Tensor, self.classes), samples, len(logits), "classes")
        compared = _for_rows(self.compared, samples, len(logits), "compared")
        main, compared = main.to(logits.device), compared.to(logits.device)  # (M, k), (M, k, S)
        every = logits[:, None, :].expand(-1, main.shape[1], -1)
        weights = logits.softmax(1)[:, None, :].expand_as(every).gather(2, compared)
        gaps = logits.gather(1, main)[..., None] - self.alpha * every.gather(2, compared)
        scores = (weights * gaps).sum(2) / weights.sum(2)
        return scores if self._multi else scores[:, 0]

    def __repr__(self) -> str:
        classes = "predicted" if self._predicted else _short(self.classes)
        return f"FinerTarget(classes={classes}, alpha={self.alpha}, similar={self.similar})"


class RegressionTarget:
    """A regression output's value: the prediction itself, or one of several.

    Args:
        index: For ``(N, D)`` outputs: the output to explain (an int), or ``k``
            of them (a sequence, ``k`` maps per sample). ``None`` for ``(N,)`` or
            ``(N, 1)`` outputs.
        negate: Explain what lowers the value instead of what raises it.
        key: The output field holding the values, when it is not the output itself.

    Example:
        >>> import torch
        >>> RegressionTarget(index=1)(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        tensor([2., 4.])
    """

    def __init__(
        self,
        index: int | Sequence[int] | None = None,
        *,
        negate: bool = False,
        key: str | None = None,
    ) -> None:
        if isinstance(index, (Tensor, np.ndarray)):  # ints, as the signature says
            index = index.tolist()
        self.index = index
        self.negate = negate
        self.key = key

    def __call__(self, output: Any, samples: Tensor | None = None) -> Tensor:
        """Values ``(M,)`` (or ``(M, k)`` for ``k`` indices) of the ``M`` samples in ``output``."""
        values = field_of(output, self.key, "RegressionTarget")
        if self.index is None:
            values = _column(values)
            if values.dim() != 1:
                raise CamkitValueError(
                    f"index: the output has shape {tuple(values.shape)}; name the output to "
                    f"explain with index= (an int, or a list for several)"
                )
        else:
            if values.dim() != 2:
                raise CamkitValueError(
                    f"index: needs (N, outputs) values, got shape {tuple(values.shape)}"
                )
            values = values[:, self.index]
        return -values if self.negate else values

    def __repr__(self) -> str:
        return f"RegressionTarget(index={self.index!r}, negate={self.negate})"


class TokenTarget:
    """Chosen tokens of a causal language model's output, scored at their positions: one map
    per token, such as every word of a vision-language model's answer.

    A causal model's logits at position ``p`` predict the token at ``p + 1``, so the
    token at position ``q`` is scored by ``logits[:, q - 1, token]``. Run the model
    once on the prompt with the answer appended (teacher forcing, as ``generate``
    returns it) and every answer token is scored from that one forward pass; camkit
    then takes one backward pass per token through that one graph (see
    :attr:`backward_chunk`), never holding ``k`` graphs.

    Args:
        tokens: The token ids explained: ``(k,)`` for every sample, or ``(N, k)``.
        positions: Their positions in the input sequence, ``(k,)`` or ``(N, k)``;
            by default the last ``k`` (an answer at the end of the sequence).
        key: The output field holding the ``(N, L, V)`` logits, when it is not the
            output itself, its ``.logits`` or its ``"logits"``.

    Example:
        >>> import torch
        >>> logits = torch.arange(2 * 4 * 5, dtype=torch.float).view(2, 4, 5)
        >>> TokenTarget([3, 1])(logits)   # positions 2 and 3: logits[:, 1, 3], logits[:, 2, 1]
        tensor([[ 8., 11.],
                [28., 31.]])
    """

    backward_chunk = 1
    """Score columns per backward pass: one. A language model's backward pass holds
    gradients for every position of every layer, so batching 16 tokens' passes (camkit's
    default for other targets) costs 16 times that memory and, measured on a LLaVA-shaped
    model, no time; one token at a time keeps the memory of a single backward pass."""

    def __init__(
        self,
        tokens: Sequence[int] | Tensor | np.ndarray,
        *,
        positions: Sequence[int] | Tensor | np.ndarray | None = None,
        key: str | None = None,
    ) -> None:
        self.tokens = _token_table(tokens, "tokens")
        self.positions = None if positions is None else _token_table(positions, "positions")
        if self.positions is not None:
            if self.positions.shape[1] != self.tokens.shape[1]:
                raise CamkitValueError(
                    f"positions: got {self.positions.shape[1]} per sample for "
                    f"{self.tokens.shape[1]} tokens; give one position per token"
                )
            if int(self.positions.min()) < 1:
                raise CamkitValueError(
                    f"positions: got {int(self.positions.min())}; a token's position must be "
                    f"at least 1 (the logits before it score it)"
                )
        self.key = key

    def __call__(self, output: Any, samples: Tensor | None = None) -> Tensor:
        """Scores ``(M, k)`` of the ``M`` samples in ``output``: each token's logit at the
        position before it."""
        logits = field_of(output, self.key, "TokenTarget")
        if logits.dim() != 3:
            raise CamkitValueError(
                f"target: TokenTarget needs (N, L, vocabulary) logits, got shape "
                f"{tuple(logits.shape)}"
            )
        m, length, vocabulary = logits.shape
        tokens, positions = self.rows(m, length, vocabulary, samples)
        tokens, positions = tokens.to(logits.device), positions.to(logits.device)
        rows = torch.arange(m, device=logits.device)[:, None]
        scores: Tensor = logits[rows, positions - 1, tokens]
        return scores

    def rows(
        self, m: int, length: int, vocabulary: int, samples: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """The token ids and their positions ``(M, k)`` for ``m`` sequences of ``length``
        positions (row ``i`` for sample ``samples[i]``), checked against the sequence and
        a ``vocabulary`` of that many ids."""
        k = self.tokens.shape[1]
        tokens = _for_rows(self.tokens, samples, m, "tokens")
        if self.positions is None:
            positions = torch.arange(length - k, length).expand(m, k)
        else:
            positions = _for_rows(self.positions, samples, m, "positions")
        if int(positions.max()) >= length or length - k < 1:
            raise CamkitValueError(
                f"positions: the sequence has {length} positions, too few for {k} tokens at "
                f"{positions[0].tolist()}; the answer must follow at least one token"
            )
        if int(tokens.max()) >= vocabulary:
            raise CamkitValueError(
                f"tokens: got id {int(tokens.max())}; the vocabulary has {vocabulary}"
            )
        return tokens, positions

    def __repr__(self) -> str:
        return f"TokenTarget({self.tokens.shape[1]} tokens)"


def _token_table(values: Any, name: str) -> Tensor:
    """Token ids or positions as an int64 table ``(1 or N, k)`` on the CPU."""
    table = _tensor(values, name)
    if table.is_floating_point() or table.is_complex() or table.dtype == torch.bool:
        raise CamkitTypeError(f"{name}: expected integers, got {table.dtype}")
    if table.dim() not in (1, 2) or table.numel() == 0 or int(table.min()) < 0:
        raise CamkitValueError(
            f"{name}: got {table.tolist() if table.numel() < 9 else tuple(table.shape)}; "
            f"allowed: non-negative ints, (k,) for every sample or (N, k)"
        )
    return table.long().cpu().view(-1, table.shape[-1])


def _column(values: Tensor) -> Tensor:
    """One value per sample: ``(M, 1)`` as ``(M,)``; any other shape as it is."""
    return values[:, 0] if values.dim() == 2 and values.shape[1] == 1 else values


def _tensor(value: Any, name: str) -> Tensor:
    if isinstance(value, Tensor):
        return value
    try:
        return torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError) as error:
        raise CamkitTypeError(
            f"{name}: expected a tensor, an array or numbers, got {value!r}"
        ) from error


def _class_table(classes: Any, name: str) -> tuple[Tensor, bool]:
    """Classes as an int64 table ``(1 or N, k)`` on the CPU, and whether they give ``k`` maps."""
    table = _tensor(classes, name)
    if table.is_floating_point() or table.is_complex() or table.dtype == torch.bool:
        raise CamkitTypeError(f"{name}: expected integer class indices, got {table.dtype}")
    if table.dim() > 2 or table.numel() == 0:
        raise CamkitValueError(
            f"{name}: got shape {tuple(table.shape)}; allowed: an int, (N,) or (N, k)"
        )
    table = table.detach().to("cpu", torch.int64)
    if _python_min(classes) < 0:
        raise CamkitValueError(f"{name}: got {_short(table)}; class indices must be non-negative")
    return table.view(1, 1) if table.dim() == 0 else table.view(len(table), -1), table.dim() == 2


def _python_values(classes: Any) -> list[int] | None:
    """The ints of ``classes`` if given as Python ints (an int, a list, a list of lists)."""
    if isinstance(classes, int) and not isinstance(classes, bool):
        return [classes]
    if isinstance(classes, Sequence) and all(isinstance(c, int) for c in classes):
        return list(classes)
    if isinstance(classes, Sequence) and all(
        isinstance(row, Sequence) and all(isinstance(c, int) for c in row) for row in classes
    ):
        return [c for row in classes for c in row]
    return None


def _python_min(classes: Any) -> int:
    """The smallest class index; read from Python ints where given as such (no tensor read)."""
    values = _python_values(classes)
    return min(values) if values else int(torch.as_tensor(classes).min())


def _python_max(classes: Any) -> int:
    """The largest class index; read from Python ints where given as such (no tensor read)."""
    values = _python_values(classes)
    return max(values) if values else int(torch.as_tensor(classes).max())


def _boxes(value: Any, name: str, per_sample_dim: int) -> Tensor:
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], Tensor):
        value = torch.stack([torch.as_tensor(v) for v in value])
    boxes = _tensor(value, name).detach().to("cpu", torch.float32)
    if boxes.dim() == 0 or boxes.shape[-1] != 4 or boxes.dim() > per_sample_dim:
        raise CamkitValueError(
            f"{name}: got shape {tuple(boxes.shape)}; a box is (x0, y0, x1, y1): allowed "
            + ("(4,) or (N, 4)" if per_sample_dim == 2 else "(4,), (k, 4) or (N, k, 4)")
        )
    while boxes.dim() < per_sample_dim:
        boxes = boxes[None]
    return boxes


def _for_rows(table: Tensor, samples: Tensor | None, m: int, name: str) -> Tensor:
    """The rows of a per-sample ``table`` (or its one row, broadcast) for ``m`` output rows."""
    table = _autograd_safe(table)
    if len(table) == 1:
        return table.expand(m, *table.shape[1:])
    if samples is not None:
        return table[samples.to(table.device)]
    if len(table) != m:
        raise CamkitValueError(
            f"{name}: got {len(table)} rows for a batch of {m}; give one for every "
            f"sample, or one per sample"
        )
    return table


def _detections(output: Any) -> list[Any]:
    ok = isinstance(output, (list, tuple)) and all(
        isinstance(d, Mapping) and all(k in d for k in ("boxes", "labels", "scores"))
        for d in output
    )
    if not ok:
        raise CamkitTypeError(
            f"target: DetectionTarget needs a list of dicts with 'boxes', 'labels' and "
            f"'scores' (torchvision detection models in eval mode), got {type(output).__name__}"
        )
    return list(output)


def _matched(found: Any, boxes: Tensor, labels: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """Per box: the score of its best-matching detection (0 if none) and that IoU."""
    scores = found["scores"]
    boxes = boxes.to(scores.device, torch.float32)
    if not len(scores):
        zero = scores.new_zeros(len(boxes))
        return zero, torch.full((len(boxes),), -1.0)
    iou = box_iou(boxes, found["boxes"].detach().to(scores.device, torch.float32))
    same = labels.to(scores.device)[:, None] == found["labels"].to(scores.device)[None]
    iou = torch.where(same, iou, torch.full_like(iou, -1.0))
    best_iou, best = iou.max(1)
    score = torch.where(best_iou >= threshold, scores[best], scores.new_zeros(()))
    return score, best_iou.cpu()


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Intersection over union of every box in ``a`` ``(P, 4)`` with every box in ``b``
    ``(Q, 4)``, boxes as ``(x0, y0, x1, y1)``: ``(P, Q)``. Two equal boxes of zero area
    (a detector can output them) have IoU 1.

    Example:
        >>> import torch
        >>> box_iou(torch.tensor([[0.0, 0, 2, 2]]), torch.tensor([[1.0, 0, 3, 2]]))
        tensor([[0.3333]])
    """
    area_a = (a[:, 2] - a[:, 0]).clamp_min(0) * (a[:, 3] - a[:, 1]).clamp_min(0)
    area_b = (b[:, 2] - b[:, 0]).clamp_min(0) * (b[:, 3] - b[:, 1]).clamp_min(0)
    low = torch.maximum(a[:, None, :2], b[None, :, :2])
    high = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (high - low).clamp_min(0).prod(-1)
    union = area_a[:, None] + area_b[None] - inter
    same = (a[:, None] == b[None]).all(-1).to(inter.dtype)  # two equal empty boxes: IoU 1
    return torch.where(union > 0, inter / union.clamp_min(torch.finfo(inter.dtype).tiny), same)


def _short(table: Tensor | None) -> str:
    if table is None:
        return "None"
    values = table.flatten().tolist()
    return str(values[0]) if len(values) == 1 else f"{values[:4]}{'...' if len(values) > 4 else ''}"
