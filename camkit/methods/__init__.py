"""The CAM methods, grouped by family.

* :mod:`camkit.methods.gradient`: channels or pixels weighted by gradients
  (Grad-CAM, Grad-CAM++, XGrad-CAM, HiResCAM, LayerCAM).
"""

from camkit.methods.gradient import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM

__all__ = ["GradCAM", "GradCAMPlusPlus", "HiResCAM", "LayerCAM", "XGradCAM"]
