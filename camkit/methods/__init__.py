"""The CAM methods, grouped by family.

* :mod:`camkit.methods.gradient`: channels or pixels weighted by gradients
  (Grad-CAM, Grad-CAM++, XGrad-CAM, HiResCAM, LayerCAM).
* :mod:`camkit.methods.activation`: no gradients (CAM, Eigen-CAM).
* :mod:`camkit.methods.perturbation`: weights from re-running the model
  (Score-CAM, SS-CAM, IS-CAM, Ablation-CAM).
* :mod:`camkit.methods.guided`: input-resolution maps (Guided Backprop,
  Guided Grad-CAM).
"""

from camkit.methods.activation import CAM, EigenCAM
from camkit.methods.gradient import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from camkit.methods.guided import GuidedBackprop, GuidedGradCAM
from camkit.methods.perturbation import ISCAM, SSCAM, AblationCAM, ScoreCAM

__all__ = [
    "CAM",
    "ISCAM",
    "SSCAM",
    "AblationCAM",
    "EigenCAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "GuidedBackprop",
    "GuidedGradCAM",
    "HiResCAM",
    "LayerCAM",
    "ScoreCAM",
    "XGradCAM",
]
