"""Perturbation (gradient-free) attribution methods: they need only forward passes.

Occlusion, feature ablation, RISE, Shapley Value Sampling, KernelSHAP, LIME and Score-CAM run the
model on perturbed copies of the input in bounded batches through one onnxruntime session
(`runner`), so they work where gradients cannot: quantized (int8, QDQ) models, integer steps,
any op onnxruntime runs. They are registered as methods of `Explainer.attribute`
(`onnxsal.methods.perturbation`); occlusion and RISE, fixed sets of perturbations, also compile to
one standalone graph. Every method explains the same score as the gradient methods (see `runner`).
"""

from .ablation import feature_ablation
from .occlusion import build_occlusion, occlusion
from .rise import build_rise, rise, rise_masks
from .score_cam import score_cam
from .shapley import permutations, shapley_value_sampling
from .surrogate import kernel_shap, kernel_shap_samples, lime, lime_samples, weighted_linear_regression

__all__ = ["build_occlusion", "build_rise", "feature_ablation", "kernel_shap", "kernel_shap_samples", "lime", "lime_samples",
           "occlusion", "permutations", "rise", "rise_masks", "score_cam", "shapley_value_sampling",
           "weighted_linear_regression"]
