"""Run a trained detector on pictures: one drawn picture per image, plus a COCO results JSON.

    resnet-fpn infer --checkpoint runs/fruits/checkpoints/best.ckpt \
        --images ../shared/data/fruits_nuts/images --out out/fruits \
        --ann ../shared/data/fruits_nuts/annotations/instances_val.json --score-threshold 0.05
    resnet-fpn eval --gt ../shared/data/fruits_nuts/annotations/instances_val.json \
        --results out/fruits/results.json

--images takes files, folders (their images, not recursive) and glob patterns ("photos/**/*.jpg"), several
allowed. With --ann, only the images the annotation file lists are run (matched by file name) and the results
carry its image ids, so `resnet-fpn eval` scores them; the checkpoint's category names must then be the file's
for the same ids (--map-categories name pairs them by name and writes the file's ids). Without --ann, image
ids are only positions: 1, 2, ... in the sorted order of the files found (unreadable ones included, so ids do
not shift when a file breaks), and a note says so; OUT/image_ids.json records which file got which id. Every
result carries its image's ``file_name`` and its ``category_name``, which `resnet-fpn eval` checks against the
ground truth, so results scored against another file's images or classes are refused. Unreadable images are
reported (one warning line each) and skipped. Exit status: 0 when at least one image was processed, 1 when
none could be, 2 for bad arguments (missing checkpoint, no images found, categories that do not match).
"""
from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Sequence, Tuple

from ..coco_format import Category, category_names_by_id, image_ids_by_file_name
from ..evaluation import CATEGORY_MATCHING, match_categories
from ..files import atomic_write_json
from .evaluate import RUNTIMES  # resnet_fpn.deploy.RUNTIMES without importing the models at parse time

if TYPE_CHECKING:
    from ..predictor import Predictor

__all__ = ["add_arguments", "run", "find_images", "image_ids_from_annotations"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The infer subcommand's flags."""
    p.add_argument("--checkpoint", required=True, type=Path, help="a checkpoint of resnet-fpn train")
    p.add_argument("--images", required=True, nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--out", required=True, type=Path, help="folder for the pictures and the results JSON")
    p.add_argument("--score-threshold", type=float, default=0.5,
                   help="keep detections scoring at least this (default 0.5; use 0.05 or less for COCO AP)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default cpu)")
    p.add_argument("--runtime", choices=RUNTIMES + ("eager",), default="auto",
                   help="what runs the detector: auto (default: optimize_for_inference's fastest runtime "
                        "measured for this machine class, parity-checked on the first image, printed), torch, "
                        "onnxruntime, openvino, or eager (the checkpoint's detector as it is)")
    p.add_argument("--results-json", default="results.json",
                   help="results file name inside --out, or a path (default results.json)")
    p.add_argument("--ann", type=Path, help="COCO instances JSON whose image ids the results should carry")
    p.add_argument("--map-categories", choices=CATEGORY_MATCHING, default=None,
                   help="with --ann: id (default) requires the checkpoint's category ids to carry the file's "
                        "names; name writes the file's id of each category name (exact match)")
    p.add_argument("--grid", type=Path, help="also tile the first --grid-count pictures into this PNG")
    p.add_argument("--grid-count", type=int, default=8, help="pictures in --grid (default 8, 4 per row)")


def find_images(specs: Sequence[str]) -> List[Path]:
    """Expand --images: files as given, folders to their image files, anything else as a glob pattern.

    Args:
        specs: the --images values.

    Returns:
        Distinct paths, sorted within each spec, in the order of the specs.

    Raises:
        FileNotFoundError: a spec that matches nothing.
    """
    found: Dict[Path, None] = {}
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            matches = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            matches = [path]
        else:
            matches = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        if not matches:
            raise FileNotFoundError(f"--images {spec}: no such file, no image in that folder, no glob match")
        found.update(dict.fromkeys(matches))
    return list(found)


def image_ids_from_annotations(ann_file: Path, paths: Sequence[Path]) -> Dict[Path, int]:
    """Match image files to the ``images`` of a COCO JSON by file name.

    A file matches the entry whose ``file_name`` is its name, or, when several entries share that name (sub
    folders), whose ``file_name`` ends its path.

    Args:
        ann_file: the COCO instances JSON.
        paths: the image files.

    Returns:
        path -> image id, for the paths that match.

    Raises:
        FileNotFoundError: no such annotation file.
        ValueError: not a COCO JSON with an ``images`` list of ``id``/``file_name`` entries.
    """
    return {path: image_id for path, (image_id, _) in _match_annotations(ann_file, paths).items()}


def _match_annotations(ann_file: Path, paths: Sequence[Path]) -> Dict[Path, Tuple[int, str]]:
    """path -> (image id, the JSON's file_name) for the paths that match (see `image_ids_from_annotations`)."""
    entries = image_ids_by_file_name(ann_file).items()  # the one COCO reader: errors name file and entry
    by_name: Dict[str, List[tuple]] = {}
    for file_name, image_id in entries:
        by_name.setdefault(Path(file_name).name, []).append((file_name, image_id))
    matched: Dict[Path, Tuple[int, str]] = {}
    for path in paths:
        candidates = by_name.get(path.name, [])
        if len(candidates) > 1:
            candidates = [c for c in candidates if path.as_posix().endswith("/" + c[0].lstrip("/"))]
        if len(candidates) == 1:
            matched[path] = (candidates[0][1], candidates[0][0])
    return matched


def _categories_for(predictor: "Predictor", args: argparse.Namespace) -> "Predictor":
    """The predictor, its categories checked against --ann's (and renumbered with --map-categories name)."""
    from ..predictor import Predictor

    names = category_names_by_id(args.ann)
    if names is None:
        if args.map_categories == "name":
            raise ValueError(f"--map-categories name needs the 'categories' of {args.ann}, which has none")
        return predictor  # an image list without categories: nothing to compare
    mapping = match_categories(predictor.categories, names, by=args.map_categories or "id",
                               source=f"checkpoint {args.checkpoint}", gt_source=str(args.ann))
    if all(mapping[c.label] == c.id for c in predictor.categories):
        return predictor
    renumbered = [Category(label=c.label, id=mapping[c.label], name=c.name) for c in predictor.categories]
    return Predictor(predictor.detector, renumbered, device=predictor.device,
                     score_threshold=predictor.score_threshold)


def _picture_path(out: Path, path: Path, used: set) -> Path:
    """``OUT/<stem>.jpg``, numbered when two inputs share a stem (same name in two folders)."""
    name, n = f"{path.stem}.jpg", 1
    while name in used:
        n += 1
        name = f"{path.stem}_{n}.jpg"
    used.add(name)
    return out / name


def run(args: argparse.Namespace) -> int:
    """Predict, draw and write; see the module docstring.

    Args:
        args: parsed arguments (see `add_arguments`).

    Returns:
        The exit status: 0 if at least one image was processed, else 1.

    Raises:
        FileNotFoundError: missing checkpoint, annotation file, or images.
        ValueError: a bad checkpoint, annotation file or threshold; checkpoint categories that do not match
            the --ann file's (see ``resnet_fpn.evaluation.match_categories``).
    """
    import torch
    from tqdm import tqdm

    from ..predictor import Predictor, read_image
    from ..visualize import draw_predictions, picture_grid, save_image

    if args.map_categories is not None and args.ann is None:
        args.parser.error("--map-categories needs --ann (the file whose category ids the results should carry)")
    paths = find_images(args.images)
    predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device, score_threshold=args.score_threshold,
                                          runtime=args.runtime)
    if args.runtime != "eager":
        print(f"inference runtime: {predictor.detector.choice}", file=sys.stderr)
    if args.ann is not None:
        predictor = _categories_for(predictor, args)
    if args.ann is not None:
        matched = _match_annotations(args.ann, paths)
        left_out = [p for p in paths if p not in matched]
        if not matched:
            raise ValueError(f"none of the {len(paths)} image(s) is listed in {args.ann}")
        if left_out:
            print(f"{len(left_out)} image(s) not listed in {args.ann} are not run (e.g. {left_out[0]})",
                  file=sys.stderr)
        paths = [p for p in paths if p in matched]
        ids = {path: image_id for path, (image_id, _) in matched.items()}
        file_names = {path: file_name for path, (_, file_name) in matched.items()}
    else:
        ids = {path: index + 1 for index, path in enumerate(paths)}
        file_names = {path: path.name for path in paths}
        print(f"note: without --ann, image ids are only positions (1..{len(paths)} in sorted file order, see "
              "image_ids.json); to score these results, run with --ann <instances.json> (resnet-fpn eval "
              "refuses results whose file_name is not the ground truth's for that id)", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = Path(args.results_json)
    if not results_path.is_absolute():
        results_path = args.out / results_path

    results: List[dict] = []
    grid: List["torch.Tensor"] = []
    used_names: set = set()
    done, skipped, detections = 0, 0, 0
    for path in tqdm(paths, desc="infer", unit="img"):
        try:
            array = read_image(path)
        except (ValueError, FileNotFoundError) as exc:
            tqdm.write(f"warning: skipped {path}: {exc}", file=sys.stderr)
            skipped += 1
            continue
        prediction = predictor(array)
        image = torch.from_numpy(array).permute(2, 0, 1)
        picture = draw_predictions(image, prediction)
        save_image(picture, _picture_path(args.out, path, used_names))
        if args.grid is not None and len(grid) < args.grid_count:
            grid.append(picture)
        results.extend(prediction.to_coco_results(ids[path], file_name=file_names[path]))
        detections += len(prediction)
        done += 1

    atomic_write_json(results_path, results, indent=None)
    if grid:
        save_image(picture_grid(grid), args.grid)
        print(f"wrote {args.grid}")
    atomic_write_json(args.out / "image_ids.json", {str(p): ids[p] for p in paths}, indent=1)
    print(
        f"{done} image(s) processed, {skipped} skipped (unreadable); {detections} detection(s) with score >= "
        f"{args.score_threshold:g}; pictures in {args.out}, COCO results in {results_path}"
    )
    return 0 if done else 1
