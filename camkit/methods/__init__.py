"""The CAM methods, grouped by family.

* :mod:`camkit.methods.gradient`: methods weighting channels by gradients.
"""

from camkit.methods.gradient import GradCAM

__all__ = ["GradCAM"]
