"""What a network expects of its input pixels: THE record that weights carry and detectors apply.

Every detector of this project takes torchvision's input: float RGB images with values in [0, 1]. A set of
weights was trained on pixels prepared some other way (torchvision: RGB in [0, 1], ImageNet mean/std;
detectron2's MSRA nets: BGR in [0, 255], mean [103.530, 116.280, 123.675], std 1; its FAIR X-101: BGR in
[0, 255], the same mean and std [57.375, 57.120, 58.395], i.e. ImageNet's in BGR order). `Preprocessing` states it in the source's own terms, and
`image_mean`/`image_std` restate it in the terms of torchvision's ``GeneralizedRCNNTransform`` (RGB, [0, 1]),
which is all a detector needs: a BGR source is made RGB once, when its weights are converted (the first conv's
input channels are reversed), so nothing at run time flips channels.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Mapping, Tuple, Union

__all__ = ["Preprocessing", "IMAGENET", "CHANNEL_ORDERS"]

CHANNEL_ORDERS = ("RGB", "BGR")


@dataclass(frozen=True)
class Preprocessing:
    """Input normalisation of a set of weights, in the units and channel order of its source.

    Attributes:
        mean: per-channel mean, in `channels` order and in units of `value_range`.
        std: per-channel standard deviation, same order and units.
        value_range: 1.0 for pixels in [0, 1] (torchvision, timm), 255.0 for [0, 255] (detectron2, Caffe).
        channels: "RGB" or "BGR": the order the source's first conv expects.

    Raises:
        ValueError: a mean/std that is not 3 numbers, a non-positive std or range, an unknown channel order.

    Example:
        >>> msra = Preprocessing((103.530, 116.280, 123.675), (1.0, 1.0, 1.0), value_range=255.0, channels="BGR")
        >>> [round(m, 4) for m in msra.image_mean]  # RGB, [0, 1]: what torchvision's transform subtracts
        [0.485, 0.456, 0.406]
    """

    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    value_range: float = 1.0
    channels: str = "RGB"

    def __post_init__(self) -> None:
        for name in ("mean", "std"):
            value = getattr(self, name)
            if not isinstance(value, (tuple, list)) or len(value) != 3 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
            ):
                raise ValueError(f"preprocessing {name} must be 3 numbers (one per channel), got {value!r}")
            object.__setattr__(self, name, tuple(float(v) for v in value))
        if any(s <= 0 for s in self.std):
            raise ValueError(f"preprocessing std must be positive, got {self.std}")
        if isinstance(self.value_range, bool) or not isinstance(self.value_range, (int, float)) or self.value_range <= 0:
            raise ValueError(f"preprocessing value_range must be a positive number (1.0 or 255.0), "
                             f"got {self.value_range!r}")
        object.__setattr__(self, "value_range", float(self.value_range))
        if self.channels not in CHANNEL_ORDERS:
            raise ValueError(f"preprocessing channels must be one of {CHANNEL_ORDERS}, got {self.channels!r}")

    def _rgb(self, values: Tuple[float, float, float]) -> Tuple[float, float, float]:
        return tuple(reversed(values)) if self.channels == "BGR" else values  # type: ignore[return-value]

    @property
    def image_mean(self) -> Tuple[float, float, float]:
        """The mean in torchvision's terms (RGB order, pixels in [0, 1]): ``image_mean=`` of its detectors."""
        return tuple(m / self.value_range for m in self._rgb(self.mean))  # type: ignore[return-value]

    @property
    def image_std(self) -> Tuple[float, float, float]:
        """The std in torchvision's terms (RGB order, pixels in [0, 1]): ``image_std=`` of its detectors."""
        return tuple(s / self.value_range for s in self._rgb(self.std))  # type: ignore[return-value]

    def to_dict(self) -> Dict[str, object]:
        """A plain mapping (for checkpoints, YAML and JSON); `from_mapping` reads it back."""
        out = asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out

    @classmethod
    def from_mapping(cls, value: Union["Preprocessing", Mapping[str, object]]) -> "Preprocessing":
        """A `Preprocessing` from an instance or a mapping of its fields.

        Raises:
            ValueError: an unknown key (the valid ones are listed) or a bad value.
            TypeError: neither a `Preprocessing` nor a mapping.
        """
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(f"preprocessing must be a Preprocessing or a mapping, got {type(value).__name__}")
        valid = ("mean", "std", "value_range", "channels")
        unknown = [k for k in value if k not in valid]
        if unknown:
            raise ValueError(f"unknown preprocessing key(s) {unknown}; valid keys: {list(valid)}")
        return cls(**value)  # type: ignore[arg-type]


# torchvision's ImageNet classifiers (and timm's default_cfg for most ResNets): RGB in [0, 1].
IMAGENET = Preprocessing(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
