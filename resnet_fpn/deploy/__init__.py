"""Deployment: inference copies of backbones and detectors (BN folding, channels_last, bf16, compile).

Public API:
    optimize_for_inference   a folded, channels_last (optionally bf16 / compiled) copy for inference
    fold_batchnorm           fold conv -> BN pairs in place (what optimize_for_inference does first)
    norms_after_convs        the norms still directly following a conv (empty after folding)
    InferenceWrapper         channels_last input conversion and autocast around a module

Speed measurements against torchvision live in ``resnet_fpn.deploy.benchmark`` (CLI: tools/benchmark.py).
"""
from .optimize import InferenceWrapper, fold_batchnorm, norms_after_convs, optimize_for_inference

__all__ = ["optimize_for_inference", "fold_batchnorm", "norms_after_convs", "InferenceWrapper"]
