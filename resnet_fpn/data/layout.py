"""Find the annotation files and image folders of a COCO-format data set from its root folder.

Two layouts are recognised (first match wins):

- ``simple``: ``<root>/annotations/instances_{train,val}.json`` and one flat ``<root>/images/`` folder for both
  splits (the layout of the bundled data sets and of :func:`resnet_fpn.data.make_synthetic_coco`).
- ``coco2017``: ``<root>/annotations/instances_{train,val}2017.json`` with ``<root>/train2017/`` and
  ``<root>/val2017/`` (the official COCO 2017 download, unzipped).

Any of the four paths can be given explicitly (the CLI's ``--train-ann``, ``--train-images``, ``--val-ann``,
``--val-images``); an explicit path overrides the layout's, and with all four given no root is needed.
Only the splits asked for must exist: evaluation asks for ``splits=("val",)`` and works on a root that has no
training split.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

__all__ = ["DataPaths", "LAYOUTS", "resolve_data_paths"]

PathLike = Union[str, "os.PathLike[str]"]

# name -> (train_ann, train_images, val_ann, val_images), relative to the data root.
LAYOUTS: Dict[str, Tuple[str, str, str, str]] = {
    "simple": ("annotations/instances_train.json", "images", "annotations/instances_val.json", "images"),
    "coco2017": (
        "annotations/instances_train2017.json",
        "train2017",
        "annotations/instances_val2017.json",
        "val2017",
    ),
}
_FIELDS = ("train_ann", "train_images", "val_ann", "val_images")
_SPLITS = ("train", "val")


@dataclass(frozen=True)
class DataPaths:
    """The four paths a detection run reads; those of a split that was not asked for may be None.

    Attributes:
        train_ann: training COCO instances JSON.
        train_images: folder the training ``file_name`` entries are relative to.
        val_ann: validation COCO instances JSON.
        val_images: folder the validation ``file_name`` entries are relative to.
    """

    train_ann: Optional[Path]
    train_images: Optional[Path]
    val_ann: Optional[Path]
    val_images: Optional[Path]


def _exists(field: str, path: Path) -> bool:
    return path.is_file() if field.endswith("_ann") else path.is_dir()


def resolve_data_paths(
    data_root: Optional[PathLike] = None,
    *,
    train_ann: Optional[PathLike] = None,
    train_images: Optional[PathLike] = None,
    val_ann: Optional[PathLike] = None,
    val_images: Optional[PathLike] = None,
    splits: Sequence[str] = _SPLITS,
) -> DataPaths:
    """Resolve the annotation files and image folders of the training and/or validation split.

    Args:
        data_root: root folder in one of the layouts of :data:`LAYOUTS`; may be ``None`` when the explicit
            paths of every split in ``splits`` are given.
        train_ann: explicit training annotation file (overrides the layout's).
        train_images: explicit training image folder.
        val_ann: explicit validation annotation file.
        val_images: explicit validation image folder.
        splits: the splits that must be found, ``("train", "val")`` for training (the default), ``("val",)``
            to evaluate on a root that has no training split.

    Returns:
        A :class:`DataPaths` whose paths of the requested splits exist (annotation files are files, image
        folders are folders); a split not requested has None paths, unless they were given explicitly.

    Raises:
        FileNotFoundError: an explicitly given path does not exist (the message names the option).
        ValueError: ``splits`` is empty or names a split other than train/val; ``data_root`` is ``None`` and
            an explicit path of a requested split is missing; or ``data_root`` matches no layout for the
            requested splits (the message names the root and lists, per layout, the paths not found).
    """
    if isinstance(splits, str) or not splits or any(split not in _SPLITS for split in splits):
        raise ValueError(f"splits must be a non-empty sequence drawn from {_SPLITS}, got {splits!r}")
    needed = [field for field in _FIELDS if field.split("_")[0] in splits]
    explicit = {
        "train_ann": train_ann,
        "train_images": train_images,
        "val_ann": val_ann,
        "val_images": val_images,
    }
    given = {field: Path(value).expanduser() for field, value in explicit.items() if value is not None}
    for field, path in given.items():
        if not _exists(field, path):
            kind = "file" if field.endswith("_ann") else "folder"
            raise FileNotFoundError(f"{field} (--{field.replace('_', '-')}): {kind} not found: {path}")

    unset: Dict[str, Optional[Path]] = dict.fromkeys(_FIELDS)
    if data_root is None:
        missing = [field for field in needed if field not in given]
        if missing:
            raise ValueError(
                f"no data root given and {missing} not set; pass a data root (--data-root) or all of "
                f"{['--' + f.replace('_', '-') for f in needed]}"
            )
        return DataPaths(**{**unset, **given})

    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise ValueError(f"data root {root} is not a folder")
    report: List[str] = []
    for name, relative in LAYOUTS.items():
        layout = {field: rel for field, rel in zip(_FIELDS, relative) if field in needed}
        candidate = {field: given.get(field, root / rel) for field, rel in layout.items()}
        absent = [str(path) for field, path in candidate.items() if not _exists(field, path)]
        if not absent:
            return DataPaths(**{**unset, **given, **candidate})
        described = ", ".join(f"{field}={rel}" for field, rel in layout.items())
        report.append(f"  {name} ({described}): missing {absent}")
    flags = "/".join("--" + field.replace("_", "-") for field in needed)
    raise ValueError(
        f"data root {root} matches no known layout for the {'/'.join(splits)} split(s); looked for:\n"
        + "\n".join(report) + f"\nPass the paths explicitly with {flags} to override."
    )
