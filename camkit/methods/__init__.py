"""The CAM methods, grouped by family.

* :mod:`camkit.methods.gradient`: channels or pixels weighted by gradients
  (Grad-CAM, Grad-CAM++, XGrad-CAM, HiResCAM, LayerCAM, element-wise
  Grad-CAM, Eigen-Grad-CAM, Shapley-CAM, Smooth Grad-CAM++, Finer-CAM).
* :mod:`camkit.methods.activation`: no gradients (CAM, Eigen-CAM, FEM).
* :mod:`camkit.methods.perturbation`: weights from re-running the model
  (Score-CAM, SS-CAM, IS-CAM, Ablation-CAM).
* :mod:`camkit.methods.guided`: input-resolution maps (Guided Backprop,
  Guided Grad-CAM).
* :mod:`camkit.methods.baseline`: random weights (Random-CAM), for the metrics.
"""

from camkit.methods.activation import CAM, FEM, EigenCAM
from camkit.methods.baseline import RandomCAM
from camkit.methods.gradient import (
    EigenGradCAM,
    FinerCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ShapleyCAM,
    SmoothGradCAMPlusPlus,
    XGradCAM,
)
from camkit.methods.guided import GuidedBackprop, GuidedGradCAM
from camkit.methods.perturbation import ISCAM, SSCAM, AblationCAM, ScoreCAM

__all__ = [
    "CAM",
    "FEM",
    "ISCAM",
    "SSCAM",
    "AblationCAM",
    "EigenCAM",
    "EigenGradCAM",
    "FinerCAM",
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "GuidedBackprop",
    "GuidedGradCAM",
    "HiResCAM",
    "LayerCAM",
    "RandomCAM",
    "ScoreCAM",
    "ShapleyCAM",
    "SmoothGradCAMPlusPlus",
    "XGradCAM",
]
