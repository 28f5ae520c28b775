"""Evaluating explanations: faithfulness, localization and sanity metrics.

* Faithfulness: :func:`average_drop`, :func:`increase_in_confidence`,
  :func:`deletion`, :func:`insertion`, :func:`road`, :func:`faithfulness_estimate`,
  :func:`monotonicity`, :func:`faithfulness_correlation`,
  :func:`monotonicity_correlation`, :func:`sensitivity_n`, :func:`region_perturbation`,
  :func:`selectivity`, :func:`irof`, :func:`infidelity`, :func:`sufficiency`.
* Localization: :func:`pointing_game`, :func:`energy_pointing_game`, :func:`auc`,
  :func:`relevance_rank_accuracy`, :func:`top_k_intersection`; on :func:`mosaics`,
  :func:`focus`.
* Complexity (the maps alone): :func:`sparseness`, :func:`complexity`,
  :func:`effective_complexity`.
* Robustness (the explainer re-run on noisy inputs): :func:`max_sensitivity`,
  :func:`avg_sensitivity`, :func:`local_lipschitz_estimate`, :func:`continuity`,
  :func:`relative_input_stability`, :func:`relative_output_stability`,
  :func:`relative_representation_stability`; across a batch: :func:`consistency`.
* Axiomatic: :func:`non_sensitivity` (Completeness and Input Invariance do not apply
  to CAMs: see the Metrics page).
* Sanity: :func:`randomization_test` with :func:`spearman` and :func:`ssim`,
  :func:`efficient_mprt`, :func:`smooth_mprt`;
  :func:`random_logit` (with :func:`off_classes`).
* Datasets: :func:`evaluate` runs metrics over a DataLoader; :func:`compare` scores
  several methods or layers side by side, with confidence intervals, ranks and a
  random-map baseline.

Every metric takes the model, the inputs, the maps (or a CAM to compute them)
and the target classes; returns per-sample values and their summary as a
:class:`MetricResult`; scores softmax probabilities; runs the model without
gradients in eval mode; and leaves the model as it was.
"""

from camkit.metrics._common import MetricResult
from camkit.metrics._complexity import complexity, effective_complexity, sparseness
from camkit.metrics.class_sensitivity import off_classes, random_logit
from camkit.metrics.comparison import Comparison, RandomMaps, compare
from camkit.metrics.correlations import (
    faithfulness_correlation,
    monotonicity_correlation,
    sensitivity_n,
)
from camkit.metrics.evaluate import evaluate
from camkit.metrics.faithfulness import (
    average_drop,
    blur,
    deletion,
    increase_in_confidence,
    insertion,
)
from camkit.metrics.feature_removal import faithfulness_estimate, monotonicity, non_sensitivity
from camkit.metrics.localization import (
    auc,
    energy_pointing_game,
    focus,
    mosaics,
    pointing_game,
    relevance_rank_accuracy,
    top_k_intersection,
)
from camkit.metrics.mprt import efficient_mprt, smooth_mprt
from camkit.metrics.neighbours import consistency, sufficiency
from camkit.metrics.patches import infidelity, irof, region_perturbation, selectivity
from camkit.metrics.road import impute, road
from camkit.metrics.robustness import avg_sensitivity, max_sensitivity
from camkit.metrics.sanity import RandomizationResult, randomization_test, spearman, ssim
from camkit.metrics.stability import (
    continuity,
    local_lipschitz_estimate,
    relative_input_stability,
    relative_output_stability,
    relative_representation_stability,
)

__all__ = [
    "Comparison",
    "MetricResult",
    "RandomMaps",
    "RandomizationResult",
    "auc",
    "average_drop",
    "avg_sensitivity",
    "blur",
    "compare",
    "complexity",
    "consistency",
    "continuity",
    "deletion",
    "effective_complexity",
    "efficient_mprt",
    "energy_pointing_game",
    "evaluate",
    "faithfulness_correlation",
    "faithfulness_estimate",
    "focus",
    "impute",
    "increase_in_confidence",
    "infidelity",
    "insertion",
    "irof",
    "local_lipschitz_estimate",
    "max_sensitivity",
    "monotonicity",
    "monotonicity_correlation",
    "mosaics",
    "non_sensitivity",
    "off_classes",
    "pointing_game",
    "random_logit",
    "randomization_test",
    "region_perturbation",
    "relative_input_stability",
    "relative_output_stability",
    "relative_representation_stability",
    "relevance_rank_accuracy",
    "road",
    "selectivity",
    "sensitivity_n",
    "smooth_mprt",
    "sparseness",
    "spearman",
    "ssim",
    "sufficiency",
    "top_k_intersection",
]
