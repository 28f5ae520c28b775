"""The CAM methods, grouped by family.

* :mod:`camkit.methods.gradient`: channels or pixels weighted by gradients
  (Grad-CAM, Grad-CAM++, XGrad-CAM, HiResCAM, LayerCAM, element-wise
  Grad-CAM, Eigen-Grad-CAM, Seg-Eigen-CAM, Shapley-CAM, Smooth Grad-CAM++,
  Finer-CAM, RefineCAM).
* :mod:`camkit.methods.activation`: no gradients (CAM, Eigen-CAM, KPCA-CAM, FEM).
* :mod:`camkit.methods.perturbation`: weights from re-running the model
  (Score-CAM, SS-CAM, IS-CAM, Ablation-CAM).
* :mod:`camkit.methods.guided`: input-resolution maps (Guided Backprop,
  Guided Grad-CAM).
* :mod:`camkit.methods.fullgrad`: the input's and every bias's gradient (FullGrad).
* :mod:`camkit.methods.sess`: any CAM over patches at many scales (SESS).
* :mod:`camkit.methods.grad_eclip`: CLIP-style encoders, read through an image-text
  similarity (Grad-ECLIP).
* :mod:`camkit.methods.tam`: vision-language models, a map per token said, from the
  last hidden states (TAM).
* :mod:`camkit.methods.legrad`: attention-map gradients of vision transformers (LeGrad).
* :mod:`camkit.methods.occlusion`: hiding windows of the input, 2D or 3D (occlusion
  sensitivity).
* :mod:`camkit.methods.baseline`: random weights (Random-CAM), for the metrics.
* :mod:`camkit.methods.factorization`: concepts without a target (Deep Feature
  Factorization).
"""

from camkit.methods.activation import CAM, FEM, KPCACAM, EigenCAM
from camkit.methods.baseline import RandomCAM
from camkit.methods.factorization import DeepFeatureFactorization, Factorization
from camkit.methods.fullgrad import FullGrad
from camkit.methods.grad_eclip import GradECLIP
from camkit.methods.gradient import (
    EigenGradCAM,
    FinerCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    RefineCAM,
    SegEigenCAM,
    ShapleyCAM,
    SmoothGradCAMPlusPlus,
    XGradCAM,
)
from camkit.methods.guided import GuidedBackprop, GuidedGradCAM
from camkit.methods.legrad import LeGrad
from camkit.methods.occlusion import OcclusionSensitivity
from camkit.methods.perturbation import ISCAM, SSCAM, AblationCAM, ScoreCAM
from camkit.methods.sess import SESS
from camkit.methods.tam import TAM

__all__ = [
    "CAM",
    "FEM",
    "ISCAM",
    "KPCACAM",
    "SESS",
    "SSCAM",
    "TAM",
    "AblationCAM",
    "DeepFeatureFactorization",
    "EigenCAM",
    "EigenGradCAM",
    "Factorization",
    "FinerCAM",
    "FullGrad",
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "GradECLIP",
    "GuidedBackprop",
    "GuidedGradCAM",
    "HiResCAM",
    "LayerCAM",
    "LeGrad",
    "OcclusionSensitivity",
    "RandomCAM",
    "RefineCAM",
    "ScoreCAM",
    "SegEigenCAM",
    "ShapleyCAM",
    "SmoothGradCAMPlusPlus",
    "XGradCAM",
]
