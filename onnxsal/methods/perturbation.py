"""Registers the perturbation (gradient-free) methods of `onnxsal.perturbation` as attribution methods."""

from __future__ import annotations

from ..perturbation import (build_occlusion, build_rise, feature_ablation, kernel_shap, lime, occlusion, rise, score_cam,
                            shapley_value_sampling)
from . import Method, register

register(Method("occlusion", build_occlusion, occlusion, gradient_free=True, summary="mean score drop over the sliding windows covering each element"))
register(Method("feature_ablation", None, feature_ablation, gradient_free=True, summary="score drop when each feature group is set to the baseline"))
register(Method("rise", build_rise, rise, gradient_free=True, summary="mean score of randomly masked copies, weighted by the masks (RISE)"))
register(Method("shapley_value_sampling", None, shapley_value_sampling, gradient_free=True, summary="Shapley values estimated over random feature orders"))
register(Method("kernel_shap", None, kernel_shap, gradient_free=True, summary="Shapley values as a kernel-weighted linear regression"))
register(Method("lime", None, lime, gradient_free=True, summary="local linear surrogate on random feature subsets"))
register(Method("score_cam", None, score_cam, gradient_free=True, summary="layer activations weighted by the scores of the inputs they mask"))
