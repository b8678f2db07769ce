"""Any timm model with `features_only` support as a backbone body (ResNets, ConvNeXt, EfficientNet, RegNet...)."""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import List, Sequence

from torch import Tensor, nn

from .base import Backbone
from .features import check_out_features
from .norms import check_freeze_at, convert_frozen_batchnorm, freeze_module
from .shape import ShapeSpec

__all__ = ["TimmFeatures"]

TIMM_NORMS = ("frozen_bn", "bn", "sync_bn")


class TimmFeatures(Backbone):
    """A timm ``features_only`` model whose outputs are named by stride: ``c2`` (4) .. ``c5`` (32).

    Channels and strides come from timm's ``feature_info``; nothing is downloaded (``pretrained=False``;
    load weights with ``load_weights`` or ``build_backbone(..., weights=)``).

    Args:
        model_name: a timm model name, e.g. ``"resnet18"``, ``"convnext_tiny"``, ``"efficientnet_b0"``.
        out_features: names among the model's ``c2..c5``.
        norm: "frozen_bn", "bn" or "sync_bn" (timm fixes the norm type of its models; GN is not offered).
        freeze_at: 0 nothing, 1 the stem (everything before c2's stage), 2.. up to and including c<freeze_at>'s.

    Raises:
        ValueError: an unknown timm model, a model without features_only support, a bad option.
    """

    def __init__(self, model_name: str, *, out_features: Sequence[str] = ("c2", "c3", "c4", "c5"),
                 norm: str = "bn", freeze_at: int = 0) -> None:
        super().__init__()
        import timm

        if not timm.is_model(model_name):
            from ..models.variants import suggest_names

            raise ValueError(f"unknown timm model {model_name!r}.{suggest_names(model_name, timm.list_models())}")
        if norm not in TIMM_NORMS:
            raise ValueError(f"timm backbones take norm in {TIMM_NORMS}, got {norm!r}")
        try:
            self.model = timm.create_model(model_name, pretrained=False, features_only=True)
        except RuntimeError as exc:  # timm raises RuntimeError for models without feature support
            raise ValueError(f"timm model {model_name!r} does not support features_only: {exc}") from exc
        info = self.model.feature_info
        by_name = {}
        for index, (channels, reduction, module) in enumerate(
            zip(info.channels(), info.reduction(), info.module_name())
        ):
            level = int(round(math.log2(reduction)))
            if 2 <= level <= 5:
                by_name[f"c{level}"] = (index, ShapeSpec(channels, reduction), module)
        self.out_features = check_out_features(out_features, list(by_name))
        self._index = [by_name[name][0] for name in self.out_features]
        self.set_output_shape({name: by_name[name][1] for name in self.out_features})
        self._stage_modules = {name: by_name[name][2] for name in by_name}
        if norm == "frozen_bn":
            convert_frozen_batchnorm(self.model)
        elif norm == "sync_bn":
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int) -> None:
        """Freeze the top-level children of timm's feature net up to the stage of ``c<freeze_at>``."""
        check_freeze_at(freeze_at)
        if freeze_at == 0:
            return
        names = [name for name, _ in self.model.named_children()]
        # The stage producing c2 ends the stem; freeze_at=k>=2 freezes through the stage producing c<k>.
        boundary_name = self._stage_modules.get(f"c{max(freeze_at, 2)}")
        if boundary_name is None:  # fewer stages than asked: freeze everything
            stop = len(names)
        else:
            # FeatureListNet flattens nested sequentials: module "stages.1" is the child "stages_1".
            top = boundary_name.replace(".", "_")
            if top not in names:
                raise ValueError(f"freeze_at: cannot find stage module {boundary_name!r} among {names}")
            stop = names.index(top) + (1 if freeze_at >= 2 else 0)
        for name in names[:stop]:
            setattr(self.model, name, freeze_module(getattr(self.model, name)))

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        features: List[Tensor] = self.model(x)
        return OrderedDict((name, features[i]) for name, i in zip(self.out_features, self._index))
