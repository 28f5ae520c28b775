"""How well the network classifies: accuracy, per-class precision and recall, confusion."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from examples.mnist.model import CLASSES


@dataclass(frozen=True)
class Scores:
    """Classification scores: overall accuracy, per-class precision and recall, confusion."""

    accuracy: float
    precision: list[float]
    recall: list[float]
    confusion: Tensor  # rows: true class, columns: predicted class


def classification_scores(predicted: Tensor, labels: Tensor) -> Scores:
    """Accuracy, per-class precision and recall, and the confusion matrix."""
    confusion = torch.bincount(labels * CLASSES + predicted, minlength=CLASSES**2)
    confusion = confusion.view(CLASSES, CLASSES)
    hits = confusion.diag().double()
    precision = (hits / confusion.sum(0).double().clamp(min=1)).tolist()
    recall = (hits / confusion.sum(1).double().clamp(min=1)).tolist()
    return Scores(
        accuracy=float(hits.sum() / len(labels)),
        precision=precision,
        recall=recall,
        confusion=confusion,
    )
