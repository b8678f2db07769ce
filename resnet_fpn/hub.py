"""Pretrained weights by name: ``torchvision://``, ``timm://`` and ``detectron2://``, and fetching their files.

A name stands for one published file and says what it needs beyond its tensors: the input normalisation it was
trained with (`Preprocessing`), ResNet options (``stride_in_1x1`` for MSRA's nets) and, for detectors, the
model it belongs to. Names come from the sources' own metadata where they publish it:

- ``torchvision://<builder>[/<MEMBER>]``: generated from torchvision's weight enums
  (``torchvision.models.get_model_weights``); ``torchvision://<builder>`` is the enum's ``DEFAULT``.
- ``timm://<model>[.<tag>]``: timm's ``pretrained_cfg`` for the timm architectures of our variant table; the file
  comes from the Hugging Face hub (``huggingface_hub.hf_hub_download``).
- ``detectron2://ImageNetPretrained/...pkl``: detectron2's ImageNet pickles (MODEL_ZOO.md), Caffe2 names.

Files are cached as torch.hub caches them (``$TORCH_HOME/hub/checkpoints``; timm's in the Hugging Face cache),
a cached file is used with no network access and no hash check (as torch.hub does), and a download that does
not match the hash in its file name is refused and not kept.
"""
from __future__ import annotations

import dataclasses

import difflib
import fnmatch
import http.client
import os
import re
import urllib.error
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Dict, List, Mapping, Optional, Tuple, Union
from urllib.parse import urlparse

import torch

from .preprocessing import IMAGENET, Preprocessing

__all__ = [
    "NamedWeights", "SCHEMES", "get_weights", "list_weights", "is_weights_name", "fetch_weights", "cache_path",
    "weights_preprocessing", "weights_options", "with_required_options",
]

SCHEMES = ("torchvision://", "timm://", "detectron2://")
SOURCES = ("torchvision", "timm", "detectron2")
KINDS = ("classifier", "detector")


@dataclass(frozen=True)
class NamedWeights:
    """One published set of weights, by name.

    Attributes:
        name: the canonical name, e.g. ``"torchvision://resnet50"`` (the enum's DEFAULT) or
            ``"torchvision://resnet50/IMAGENET1K_V1"``.
        source: ``"torchvision"``, ``"timm"`` or ``"detectron2"``.
        kind: ``"classifier"`` (an ImageNet network: backbone weights) or ``"detector"`` (a whole detector).
        architecture: our name for what the weights fit: a variant of ``models/variants.py`` (``"resnet50"``,
            ``"se_resnet50"``) for a classifier, a detector name (``"faster_rcnn"``) for a detector.
        url: where the file is published.
        file_name: the file's name (torch.hub caches it under this name).
        hash_prefix: the leading hex digits of the file's SHA-256 that a download must match (torch.hub's
            convention: the digits after the ``-`` of the file name), or None where the source publishes none.
        preprocessing: the input normalisation the weights were trained with, in the source's terms.
        options: ResNet options the weights require (``{"stride_in_1x1": True}`` for MSRA's nets), else empty.
        metrics: the source's published accuracy (``{"ImageNet-1K acc@1": 80.858}``,
            ``{"COCO-val2017 box AP": 37.0}``), empty where the source's metadata has none.
        file_size_mb: the file's size as published (torchvision's ``_file_size``), None where unknown.
        num_classes: the classifier's or detector's number of classes (91 for COCO detectors, 2 for keypoint
            R-CNN: background and person), None where unknown.
        backbone: for a detector, our backbone name (``"resnet50-fpn"``); None for a classifier.
        aliases: other names of the same file (``"torchvision://resnet50/IMAGENET1K_V2"``).
        hf_hub_id: for timm weights, the Hugging Face repository holding the file.
    """

    name: str
    source: str
    kind: str
    architecture: str
    url: str
    file_name: str
    hash_prefix: Optional[str]
    preprocessing: Preprocessing
    options: Mapping[str, object] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    file_size_mb: Optional[float] = None
    num_classes: Optional[int] = None
    backbone: Optional[str] = None
    aliases: Tuple[str, ...] = ()
    hf_hub_id: Optional[str] = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"weights source must be one of {SOURCES}, got {self.source!r}")
        if self.kind not in KINDS:
            raise ValueError(f"weights kind must be one of {KINDS}, got {self.kind!r}")
        # Read-only views: an entry is shared by every caller of get_weights.
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        object.__setattr__(self, "metrics", MappingProxyType(dict(self.metrics)))
        object.__setattr__(self, "aliases", tuple(self.aliases))

    def __hash__(self) -> int:  # the mappings are not hashable; the name identifies an entry
        return hash(self.name)


# ---------------------------------------------------------------------------------------------------------------
# torchvision: generated from its weight enums.

# torchvision detection builder -> our detector name (resnet_fpn.detectors.DETECTORS) on resnet50-fpn.
_TORCHVISION_DETECTORS = {
    "fasterrcnn_resnet50_fpn": "faster_rcnn",
    "fasterrcnn_resnet50_fpn_v2": "faster_rcnn_v2",
    "maskrcnn_resnet50_fpn": "mask_rcnn",
    "maskrcnn_resnet50_fpn_v2": "mask_rcnn_v2",
    "retinanet_resnet50_fpn": "retinanet",
    "retinanet_resnet50_fpn_v2": "retinanet_v2",
    "fcos_resnet50_fpn": "fcos",
    "keypointrcnn_resnet50_fpn": "keypoint_rcnn",
}
# torchvision's "_metrics" keys -> the words of our listing.
_COCO_METRICS = {"box_map": "box AP", "mask_map": "mask AP", "kp_map": "keypoint AP"}


def hash_prefix_of(file_name: str) -> Optional[str]:
    """The SHA-256 prefix a file name declares by torch.hub's convention, or None.

    torch.hub names files ``<name>-<first eight or more hex digits of the SHA-256>.<ext>`` and finds the digits
    with ``torch.hub.HASH_REGEX``; fewer than eight digits (``model-12.pth``) is a version, not a hash.

    Args:
        file_name: a file name (no folder).

    Returns:
        The hex digits, or None.
    """
    match = torch.hub.HASH_REGEX.search(file_name)
    return match.group(1) if match and len(match.group(1)) >= 8 else None


def _metrics(meta: Mapping[str, object]) -> Dict[str, float]:
    out: Dict[str, float] = {}
    for dataset, values in dict(meta.get("_metrics", {})).items():
        for key, value in dict(values).items():
            out[f"{dataset} {_COCO_METRICS.get(key, key)}"] = float(value)
    return out


def _torchvision_entries(builder: str, *, kind: str, architecture: str,
                         backbone: Optional[str]) -> List[NamedWeights]:
    from torchvision.models import get_model_weights

    enum = get_model_weights(builder)
    entries = []
    for member in enum:
        file_name = os.path.basename(urlparse(member.url).path)
        if kind == "classifier":
            transform = member.transforms()  # ImageClassification: the mean/std it normalises with
            preprocessing = Preprocessing(tuple(transform.mean), tuple(transform.std))
        else:
            # Detection weights' transforms() only converts to float; the normalisation is the model's
            # GeneralizedRCNNTransform, which every torchvision detector builds with ImageNet's mean/std.
            preprocessing = IMAGENET
        default = member is enum.DEFAULT
        short, full = f"torchvision://{builder}", f"torchvision://{builder}/{member.name}"
        entries.append(NamedWeights(
            name=short if default else full, source="torchvision", kind=kind, architecture=architecture,
            url=member.url, file_name=file_name, hash_prefix=hash_prefix_of(file_name), preprocessing=preprocessing,
            metrics=_metrics(member.meta), file_size_mb=member.meta.get("_file_size"),
            num_classes=len(member.meta["categories"]) if member.meta.get("categories") else None,
            backbone=backbone, aliases=(full,) if default else (),
        ))
    return entries


# ---------------------------------------------------------------------------------------------------------------
# detectron2's ImageNet pickles (detectron2 MODEL_ZOO.md, "ImageNet Pretrained Models").

# detectron2/checkpoint/catalog.py, Detectron2Handler: "detectron2://" is this URL prefix.
DETECTRON2_PREFIX = "https://dl.fbaipublicfiles.com/detectron2/"
# detectron2/config/defaults.py: PIXEL_MEAN [103.530, 116.280, 123.675] "BGR order, since INPUT.FORMAT defaults
# to BGR", PIXEL_STD [1.0, 1.0, 1.0] ("for MSRA models std has been absorbed into its conv1 weights"), pixels in
# [0, 255]; configs/Base-RCNN-FPN.yaml and the configs keep those defaults.
_MSRA = Preprocessing((103.530, 116.280, 123.675), (1.0, 1.0, 1.0), value_range=255.0, channels="BGR")
# configs/COCO-Detection/faster_rcnn_X_101_32x8d_FPN_3x.yaml: PIXEL_STD [57.375, 57.120, 58.395] with the default
# BGR PIXEL_MEAN and INPUT.FORMAT (BGR): ImageNet's std in BGR order (0.225, 0.224, 0.229) * 255.
_FAIR = Preprocessing((103.530, 116.280, 123.675), (57.375, 57.120, 58.395), value_range=255.0, channels="BGR")
# (path under the prefix, architecture, options, preprocessing). STRIDE_IN_1X1: True in defaults.py ("use True
# only for the original MSRA ResNet"), False in the X-101-32x8d config ("this is a C2 model").
_DETECTRON2 = (
    ("ImageNetPretrained/MSRA/R-50.pkl", "resnet50", {"stride_in_1x1": True}, _MSRA),
    ("ImageNetPretrained/MSRA/R-101.pkl", "resnet101", {"stride_in_1x1": True}, _MSRA),
    ("ImageNetPretrained/FAIR/X-101-32x8d.pkl", "resnext101_32x8d", {}, _FAIR),
)


def _detectron2_entries() -> List[NamedWeights]:
    return [
        NamedWeights(
            name=f"detectron2://{path}", source="detectron2", kind="classifier", architecture=architecture,
            url=DETECTRON2_PREFIX + path, file_name=path.rsplit("/", 1)[1], hash_prefix=None,  # none published
            preprocessing=preprocessing, options=options, num_classes=1000,  # their fc1000 blobs
        )
        for path, architecture, options, preprocessing in _DETECTRON2
    ]


# ---------------------------------------------------------------------------------------------------------------
# timm: resolved through its pretrained_cfg, for the timm architectures of our variant table.

# Architectures that share a prefix with ours but are other networks: why they are refused.
_TIMM_REFUSED = (
    (re.compile(r"^resnetv2_\d+x\d+_bit$"), "Big Transfer (BiT) nets use weight-standardised convolutions "
     "(StdConv2d) and GroupNorm; our pre-activation ResNets have plain convolutions and BatchNorm, so these "
     "tensors would load into different operations"),
)


def _timm_architectures() -> Dict[str, str]:
    """timm model name -> our variant name: the ``timm:<model>`` sources of the variant table, and the
    torchvision-layout variants under their own names (timm's resnet50, resnext50_32x4d... share that layout)."""
    from .models.variants import VARIANTS

    out: Dict[str, str] = {}
    for name, variant in VARIANTS.items():
        if variant.source.startswith("timm:"):
            out[variant.source[len("timm:"):]] = name
        elif variant.source == "torchvision":
            out[name] = name
    return out


def _timm_entry(spec: str) -> NamedWeights:
    import timm.models

    model, tag = timm.models.split_model_name_tag(spec)
    ours = _timm_architectures()
    if model not in ours:
        why = next((reason for pattern, reason in _TIMM_REFUSED if pattern.match(model)), None)
        if why:
            raise ValueError(f"timm://{spec} is refused: {why}")
        raise ValueError(
            f"timm architecture {model!r} is not one of ours.{_suggest(model, list(ours))} The timm architectures "
            f"whose weights fit our variants: {', '.join(sorted(ours))}"
        )
    try:
        cfg = timm.models.get_pretrained_cfg(spec)
    except RuntimeError:  # timm: "Invalid pretrained tag"
        cfg = None
    if cfg is None or not getattr(cfg, "hf_hub_id", None):
        tags = timm.list_pretrained(f"{model}.*")
        raise ValueError(
            f"timm has no pretrained weights {spec!r} on the Hugging Face hub.{_suggest(spec, tags)} "
            f"Its tags: {', '.join(tags) or 'none'}"
        )
    default = timm.models.get_pretrained_cfg(model)
    filename = cfg.hf_hub_filename or "model.safetensors"
    from huggingface_hub import hf_hub_url

    return NamedWeights(
        name=f"timm://{model}.{cfg.tag}", source="timm", kind="classifier", architecture=ours[model],
        url=hf_hub_url(cfg.hf_hub_id, filename), file_name=filename, hash_prefix=None,
        preprocessing=Preprocessing(tuple(cfg.mean), tuple(cfg.std)),  # timm: RGB in [0, 1]
        num_classes=cfg.num_classes or None, aliases=(f"timm://{model}",) if default and default.tag == cfg.tag else (),
        hf_hub_id=cfg.hf_hub_id,
    )


@lru_cache(maxsize=1)
def _timm_names() -> Tuple[str, ...]:
    import timm

    ours = _timm_architectures()
    return tuple(n for n in timm.list_pretrained() if n.split(".", 1)[0] in ours)


# ---------------------------------------------------------------------------------------------------------------
# The registry.

@lru_cache(maxsize=1)
def _registry() -> Dict[str, NamedWeights]:
    """Name and alias -> entry for torchvision and detectron2 (timm names are resolved on demand)."""
    from torchvision.models import list_models
    import torchvision.models

    from .models.variants import VARIANTS

    entries: List[NamedWeights] = []
    classifiers = set(list_models(module=torchvision.models))
    for name, variant in VARIANTS.items():
        if variant.source == "torchvision" and name in classifiers:
            entries += _torchvision_entries(name, kind="classifier", architecture=name, backbone=None)
    for builder, detector in _TORCHVISION_DETECTORS.items():
        entries += _torchvision_entries(builder, kind="detector", architecture=detector, backbone="resnet50-fpn")
    entries += _detectron2_entries()
    table: Dict[str, NamedWeights] = {}
    for entry in entries:
        for key in (entry.name, *entry.aliases):
            table[key] = entry
    return table


def _suggest(name: str, valid: List[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.6)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def is_weights_name(text: object) -> bool:
    """True when `text` is a weights name: a string starting with one of `SCHEMES`."""
    return isinstance(text, str) and text.startswith(SCHEMES)


def get_weights(name: str) -> NamedWeights:
    """Look a weights name up.

    Args:
        name: ``"torchvision://resnet50"``, ``"torchvision://resnet50/IMAGENET1K_V1"``,
            ``"timm://seresnet50.a1_in1k"`` (``"timm://seresnet50"``: timm's default tag),
            ``"detectron2://ImageNetPretrained/MSRA/R-50.pkl"``...

    Returns:
        The `NamedWeights`.

    Raises:
        TypeError: `name` is not a string.
        ValueError: an unknown name (the closest names are suggested, and where to list them), a timm
            architecture that is not one of ours (ours are listed), or one refused (the reason is given).
    """
    if not isinstance(name, str):
        raise TypeError(f"weights name must be a str, got {type(name).__name__} {name!r}")
    if name in _registry():
        return _registry()[name]
    if name.startswith("timm://"):
        return _timm_entry(name[len("timm://"):])
    raise ValueError(
        f"unknown weights name {name!r}.{_suggest(name, list(_registry()))} Names start with "
        f"{', '.join(SCHEMES)}; `resnet-fpn weights` or resnet_fpn.list_weights() lists them"
    )


def list_weights(pattern: Optional[str] = None) -> List[NamedWeights]:
    """Named weights, optionally filtered by a shell-style pattern.

    Args:
        pattern: an ``fnmatch`` pattern matched against each name and its aliases
            (``"torchvision://resnet50*"``, ``"*mask*"``); None lists everything.

    Returns:
        The entries, torchvision's first, then detectron2's, then timm's (those whose timm architecture is one
        of our variants, from ``timm.list_pretrained``); each once.
    """
    entries = list(dict.fromkeys(_registry().values()))
    entries += [_timm_entry(n) for n in _timm_names()]
    if pattern is None:
        return entries
    return [e for e in entries if any(fnmatch.fnmatchcase(n, pattern) for n in (e.name, *e.aliases))]


def weights_preprocessing(source: object) -> Optional[Preprocessing]:
    """The input normalisation of weights given by name; None for anything else (a path, URL or state dict).

    Raises:
        ValueError: an unknown name (see `get_weights`).
    """
    return get_weights(source).preprocessing if is_weights_name(source) else None


def weights_options(source: object) -> Dict[str, object]:
    """The ResNet options that weights given by name require (``{"stride_in_1x1": True}`` for MSRA's nets);
    ``{}`` for anything else.

    Raises:
        ValueError: an unknown name (see `get_weights`).
    """
    return dict(get_weights(source).options) if is_weights_name(source) else {}


def with_required_options(options: object, weights: object) -> Optional[Dict[str, object]]:
    """Architecture options plus those the `weights` require (`weights_options`).

    A requirement is added where `options` is silent; a contradiction is an error, never a silent override
    (MSRA's nets computed with the stride on the 3x3 are another network).

    Args:
        options: None, a mapping of ResNet option names, or a dataclass of them (``ResNetOptions``).
        weights: what will be loaded (a name, path, URL, state dict) or None.

    Returns:
        The merged mapping, or None when it is empty.

    Raises:
        ValueError: `options` contradicts what the weights require (both values named).
        TypeError: `options` is neither None, a mapping nor a dataclass.
    """
    if dataclasses.is_dataclass(options) and not isinstance(options, type):
        options = dataclasses.asdict(options)
    if options is not None and not isinstance(options, Mapping):
        raise TypeError(f"backbone options must be a mapping of ResNetOptions fields, got {type(options).__name__}")
    merged: Dict[str, object] = dict(options or {})
    for key, value in (weights_options(weights) if weights is not None else {}).items():
        current = merged.get(key, value)
        if isinstance(current, list):
            current = tuple(current)
        if current != value:
            raise ValueError(f"weights {weights} need backbone option {key}={value!r} (the architecture they were "
                             f"trained with), but the backbone options say {key}={merged[key]!r}")
        merged[key] = value
    return merged or None


# ---------------------------------------------------------------------------------------------------------------
# Fetching.

def _checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def cache_path(name_or_url: Union[str, NamedWeights]) -> Path:
    """Where the file of a name or URL is (or would be) cached.

    torch.hub's layout: ``<torch.hub.get_dir()>/checkpoints/<file name>`` (``$TORCH_HOME/hub/checkpoints``;
    ``~/.cache/torch`` when TORCH_HOME is unset); detectron2's files keep their path under
    ``checkpoints/detectron2/`` (``.../checkpoints/detectron2/ImageNetPretrained/MSRA/R-50.pkl``); timm's are in
    the Hugging Face cache, whose repository folder is returned (``$HF_HUB_CACHE/models--timm--<model>.<tag>``).

    Raises:
        ValueError: not a weights name or an http(s) URL.
    """
    if isinstance(name_or_url, NamedWeights):
        entry: Optional[NamedWeights] = name_or_url
    elif is_weights_name(name_or_url):
        entry = get_weights(name_or_url)
    elif isinstance(name_or_url, str) and name_or_url.startswith(("http://", "https://")):
        return _checkpoints() / os.path.basename(urlparse(name_or_url).path)
    else:
        raise ValueError(f"not a weights name ({', '.join(SCHEMES)}) or an http(s) URL: {name_or_url!r}")
    if entry.source == "timm":
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE) / f"models--{entry.hf_hub_id.replace('/', '--')}"
    if entry.source == "detectron2":
        return _checkpoints() / "detectron2" / entry.url[len(DETECTRON2_PREFIX):]
    return _checkpoints() / entry.file_name


def _torch_home() -> str:
    return f"TORCH_HOME={os.environ['TORCH_HOME']}" if "TORCH_HOME" in os.environ else "TORCH_HOME unset: ~/.cache/torch"


def _download(url: str, dst: Path, hash_prefix: Optional[str], *, label: str) -> Path:
    """`url` into `dst` with torch.hub's downloader (a temporary file moved into place once complete)."""
    if dst.is_file():
        return dst  # as torch.hub: a cached file is used as it is, with no network access and no hash check
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(dst), hash_prefix=hash_prefix, progress=True)
    except RuntimeError as exc:
        if "invalid hash value" not in str(exc):
            raise
        # torch.hub deletes its temporary file before raising: nothing is left in the cache.
        raise ValueError(
            f"{label}the file downloaded from {url} does not match the hash prefix {hash_prefix!r} of its name "
            f"({exc}); it was not kept (nothing written to {dst}). A corrupt download or a changed file: try again, "
            f"or check the source"
        ) from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = exc if isinstance(exc, urllib.error.HTTPError) else getattr(exc, "reason", exc)
        raise ValueError(
            f"{label}could not download weights from {url} ({reason}). Offline? Download the file elsewhere and "
            f"put it at {dst} (torch.hub's cache, $TORCH_HOME/hub/checkpoints; {_torch_home()}; set TORCH_HOME "
            f"to move it), or pass its local path instead"
        ) from exc
    return dst


def _hf_errors() -> tuple:
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    errors = [EntryNotFoundError, HfHubHTTPError, OSError]
    try:
        import httpx

        errors.append(httpx.HTTPError)
    except ImportError:
        pass
    return tuple(errors)


def _fetch_hf(entry: NamedWeights) -> Path:
    """The file of a timm entry from the Hugging Face cache, downloading it when it is not there.

    Tries ``model.safetensors`` then ``pytorch_model.bin`` (as timm does); HF_HOME, HF_HUB_CACHE and
    HF_HUB_OFFLINE are honoured by ``hf_hub_download``.
    """
    from huggingface_hub import constants, hf_hub_download

    files = [entry.file_name] + (["pytorch_model.bin"] if entry.file_name == "model.safetensors" else [])
    problems = []
    for filename in files:
        try:
            return Path(hf_hub_download(repo_id=entry.hf_hub_id, filename=filename))
        except _hf_errors() as exc:
            problems.append(f"{filename}: {type(exc).__name__}")
    home = f"HF_HOME={os.environ['HF_HOME']}" if "HF_HOME" in os.environ else "HF_HOME unset: ~/.cache/huggingface"
    raise ValueError(
        f"{entry.name}: could not fetch {' or '.join(files)} of the Hugging Face repository {entry.hf_hub_id} "
        f"({'; '.join(problems)}){' with HF_HUB_OFFLINE set' if constants.HF_HUB_OFFLINE else ''}. The cache "
        f"looked in is {cache_path(entry)} (HF_HUB_CACHE, by default $HF_HOME/hub; {home}): on a machine with "
        f"network run `hf download {entry.hf_hub_id} {files[0]}` and copy its cache folder "
        f"{cache_path(entry).name} there, or set HF_HOME / HF_HUB_CACHE to a cache that has it, or pass the "
        f"file's local path instead"
    )


def fetch_weights(name_or_url: str) -> Path:
    """The local file of a weights name or an http(s) URL, downloaded into the cache when it is not there.

    Args:
        name_or_url: a weights name (`is_weights_name`) or an http(s) URL. A URL's file is checked against the
            hash prefix its name declares (torch.hub's ``<name>-<sha256 prefix>.<ext>``; see `hash_prefix_of`).

    Returns:
        The cached file (`cache_path`; for timm, a file of the Hugging Face cache).

    Raises:
        ValueError: an unknown name; a download that does not match its hash (not kept); no network or an HTTP
            error (one message: the URL, the cache path where the file can be put by hand and the environment
            variable that moves the cache).
    """
    if is_weights_name(name_or_url):
        entry = get_weights(name_or_url)
        if entry.source == "timm":
            return _fetch_hf(entry)
        return _download(entry.url, cache_path(entry), entry.hash_prefix, label=f"{entry.name}: ")
    if isinstance(name_or_url, str) and name_or_url.startswith(("http://", "https://")):
        dst = cache_path(name_or_url)
        return _download(name_or_url, dst, hash_prefix_of(dst.name), label="")
    raise ValueError(f"not a weights name ({', '.join(SCHEMES)}) or an http(s) URL: {name_or_url!r}")
