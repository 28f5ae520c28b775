"""camkit: class activation maps for any PyTorch model, by layer name.

>>> import torch
>>> from torch import nn
>>> from camkit import GradCAM
>>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))
>>> GradCAM(model, "1")(torch.randn(5, 1, 8, 8), target=3).shape
torch.Size([5, 8, 8])
"""

from importlib.metadata import PackageNotFoundError, version

from camkit import augment, datasets, metrics, plot, viewer, vision_language
from camkit._engine.state import clear_caches
from camkit.base import BaseCAM
from camkit.context import LayerContext
from camkit.datasets import MapStore, explain_dataset
from camkit.errors import (
    CamkitError,
    CamkitModelError,
    CamkitStorageError,
    CamkitTypeError,
    CamkitValueError,
)
from camkit.explainer import Explainer
from camkit.layers import find_layer, list_layers
from camkit.methods import (
    CAM,
    FEM,
    ISCAM,
    KPCACAM,
    SESS,
    SSCAM,
    TAM,
    AblationCAM,
    DeepFeatureFactorization,
    EigenCAM,
    EigenGradCAM,
    Factorization,
    FinerCAM,
    FullGrad,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    GradECLIP,
    GuidedBackprop,
    GuidedGradCAM,
    HiResCAM,
    LayerCAM,
    LeGrad,
    OcclusionSensitivity,
    RandomCAM,
    RefineCAM,
    ScoreCAM,
    SegEigenCAM,
    ShapleyCAM,
    SmoothGradCAMPlusPlus,
    XGradCAM,
)
from camkit.result import CAMResult
from camkit.targets import (
    BinaryTarget,
    DetectionTarget,
    FinerTarget,
    RegressionTarget,
    ScoreFunction,
    SegmentationTarget,
    SimilarityTarget,
    Target,
    TokenTarget,
    class_scores,
)

try:
    __version__ = version("camkit")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

from camkit.viewer import view

__all__ = [
    "CAM",
    "FEM",
    "ISCAM",
    "KPCACAM",
    "SESS",
    "SSCAM",
    "TAM",
    "AblationCAM",
    "BaseCAM",
    "BinaryTarget",
    "CAMResult",
    "CamkitError",
    "CamkitModelError",
    "CamkitStorageError",
    "CamkitTypeError",
    "CamkitValueError",
    "DeepFeatureFactorization",
    "DetectionTarget",
    "EigenCAM",
    "EigenGradCAM",
    "Explainer",
    "Factorization",
    "FinerCAM",
    "FinerTarget",
    "FullGrad",
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "GradECLIP",
    "GuidedBackprop",
    "GuidedGradCAM",
    "HiResCAM",
    "LayerCAM",
    "LayerContext",
    "LeGrad",
    "MapStore",
    "OcclusionSensitivity",
    "RandomCAM",
    "RefineCAM",
    "RegressionTarget",
    "ScoreCAM",
    "ScoreFunction",
    "SegEigenCAM",
    "SegmentationTarget",
    "ShapleyCAM",
    "SimilarityTarget",
    "SmoothGradCAMPlusPlus",
    "Target",
    "TokenTarget",
    "XGradCAM",
    "__version__",
    "augment",
    "class_scores",
    "clear_caches",
    "datasets",
    "explain_dataset",
    "find_layer",
    "list_layers",
    "metrics",
    "plot",
    "view",
    "viewer",
    "vision_language",
]
