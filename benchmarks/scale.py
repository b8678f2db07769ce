"""python -m benchmarks.scale: the data path and the evaluator at COCO's sizes, beside the peers, in one run.

    python -m benchmarks.scale                                   # 10k / 50k / 118k images; eval at 1k and 5k
    python -m benchmarks.scale --sizes 10000 --eval-images 500 --calls 400 --out /tmp/scale.md   # a smoke run

Data path, per size (a synthetic file of COCO train2017's structure, ``resnet_fpn.data.generate``), each
contender in a fresh process: build time and RSS increase of the index (ours: ``CocoDetection(with_masks=True,
verify_files=False)``; pycocotools' ``COCO(file)`` alone; torchvision's detection reference:
``torchvision.datasets.CocoDetection`` + ``ConvertCocoPolysToMask`` of references/detection/coco_utils.py),
then ``--calls`` random ``__getitem__`` calls (image read + masks decoded) spread over ``--workers`` loader
workers: each worker's RSS and USS (private memory: what copy-on-write has copied) before its first item, after
it and after its last (the growth in all, and the growth after the first item, a one-off per worker), the main process's RSS, and the first-batch latency of a data loader with aspect-ratio grouping
(aspect ratios, groups, worker start, first batch of 2).

Evaluator, per size and iou type (a ground truth of that many images; 100 detections per image: its ground-truth
boxes jittered by up to 10%, with their labels, then random boxes, coordinates on a 1/4 px grid so that float32
and float64 conversions agree; segm: a smooth 28x28 blob per detection pasted into its box at image size, made
between the timed calls), each contender in a fresh process: update (one image per call) + compute, time of
those calls and peak RSS increase (VmHWM):
ours (``COCOEvaluator``, both backends) and torchmetrics' ``MeanAveragePrecision`` (backends pycocotools, its
default, and faster_coco_eval), and whether the 12 stats agree to 1e-9.

Linux only (/proc). Writes the "## Scale (COCO-sized files)" section at the end of --out (replacing it).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
SECTION = "## Scale (COCO-sized files)"
DATA_IMPLS = ("ours", "pycocotools", "torchvision_ref")
EVAL_IMPLS = ("ours:pycocotools", "ours:faster_coco_eval", "torchmetrics:pycocotools", "torchmetrics:faster_coco_eval")


# ------------------------------------------------------------------ memory from /proc
def proc_memory(pid: str = "self") -> Dict[str, float]:
    """RSS, PSS and USS (private clean + dirty) in MB from ``/proc/<pid>/smaps_rollup``."""
    values: Dict[str, float] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0].rstrip(":") in ("Rss", "Pss", "Private_Clean", "Private_Dirty"):
                values[parts[0].rstrip(":")] = int(parts[1]) / 1024
    return {"rss": values["Rss"], "pss": values["Pss"], "uss": values["Private_Clean"] + values["Private_Dirty"]}


def _peak_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


# ------------------------------------------------------------------ the peers' data path
class ReferenceCocoDetection:
    """torchvision's detection reference data set (references/detection/coco_utils.py): pycocotools' index and
    ``ConvertCocoPolysToMask`` (crowd left out, boxes clamped, polygons -> masks), image as a float tensor."""

    def __init__(self, images_dir: str, ann_file: str) -> None:
        import torchvision

        with contextlib.redirect_stdout(io.StringIO()):
            self.dataset = torchvision.datasets.CocoDetection(images_dir, ann_file)
        self.coco = self.dataset.coco

    def __len__(self) -> int:
        return len(self.dataset)

    def aspect_ratios(self) -> List[float]:  # reference: _compute_aspect_ratios_coco_dataset
        return [self.coco.imgs[i]["width"] / self.coco.imgs[i]["height"] for i in self.dataset.ids]

    def __getitem__(self, index: int) -> Any:
        import torch
        from pycocotools import mask as coco_mask
        from torchvision.transforms import functional as F

        image, anno = self.dataset[index]
        w, h = image.size
        anno = [obj for obj in anno if obj["iscrowd"] == 0]
        boxes = torch.as_tensor([obj["bbox"] for obj in anno], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2].clamp_(min=0, max=w)
        boxes[:, 1::2].clamp_(min=0, max=h)
        classes = torch.tensor([obj["category_id"] for obj in anno], dtype=torch.int64)
        masks = []
        for obj in anno:
            rles = coco_mask.frPyObjects(obj["segmentation"], h, w)
            mask = torch.as_tensor(coco_mask.decode(rles), dtype=torch.uint8)
            masks.append(mask.any(dim=2) if mask.ndim == 3 else mask)
        masks_t = torch.stack(masks).to(torch.uint8) if masks else torch.zeros((0, h, w), dtype=torch.uint8)
        keep = (boxes[:, 3] > boxes[:, 1]) & (boxes[:, 2] > boxes[:, 0])
        target = {"boxes": boxes[keep], "labels": classes[keep], "masks": masks_t[keep],
                  "image_id": self.dataset.ids[index]}
        return F.convert_image_dtype(F.pil_to_tensor(image), torch.float32), target


class _Probe:
    """Wraps a data set: each item is computed in the worker and dropped; the worker's memory comes back, as it
    was before the worker's first item, right after that item, and now."""

    def __init__(self, dataset: Any) -> None:
        self.dataset, self.before, self.after_first = dataset, None, None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        if self.before is None:
            self.before = proc_memory()
        self.dataset[index]
        now = proc_memory()
        if self.after_first is None:
            self.after_first = now
        return os.getpid(), self.before, self.after_first, now


def _first(batch: Sequence[Any]) -> Any:
    return batch[0]


def child_data(impl: str, ann: str, images: str, workers: int, calls: int) -> Dict[str, Any]:
    import gc

    import numpy as np
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    from resnet_fpn.data import CocoDetection, GroupedBatchSampler, aspect_ratio_groups, collate_fn

    torch.set_num_threads(1)
    gc.collect()
    before = proc_memory()["rss"]
    _reset_peak()
    start = time.perf_counter()
    if impl == "ours":
        dataset: Any = CocoDetection(images, ann, with_masks=True, verify_files=False)
    elif impl == "pycocotools":
        from pycocotools.coco import COCO

        with contextlib.redirect_stdout(io.StringIO()):
            dataset = COCO(ann)
    else:
        dataset = ReferenceCocoDetection(images, ann)
    out: Dict[str, Any] = {"build_s": time.perf_counter() - start}
    gc.collect()
    out["build_rss_mb"] = proc_memory()["rss"] - before
    out["build_peak_mb"] = _peak_mb() - before
    if impl == "pycocotools":
        return out
    rng = np.random.default_rng(0)
    indices = rng.integers(0, len(dataset), calls).tolist()
    loader = DataLoader(_Probe(dataset), batch_size=None, sampler=indices, num_workers=workers,
                        multiprocessing_context="fork")
    last: Dict[int, Any] = {}
    for pid, before_mem, first_mem, now in loader:
        last[pid] = (before_mem, first_mem, now)
    out["workers"] = [{"rss_before": b["rss"], "rss_after": a["rss"], "uss_before": b["uss"], "uss_after": a["uss"],
                       "uss_growth": a["uss"] - b["uss"], "rss_growth": a["rss"] - b["rss"],
                       "rss_first_item": f["rss"] - b["rss"], "uss_first_item": f["uss"] - b["uss"],
                       "rss_growth_after_first": a["rss"] - f["rss"], "uss_growth_after_first": a["uss"] - f["uss"]}
                      for b, f, a in last.values()]
    out["main_rss_after_epoch_mb"] = proc_memory()["rss"] - before
    start = time.perf_counter()
    ratios = dataset.aspect_ratios()
    sampler = GroupedBatchSampler(RandomSampler(range(len(dataset)), generator=torch.Generator().manual_seed(0)),
                                  aspect_ratio_groups(ratios), 2)
    grouped = DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate_fn,
                         multiprocessing_context="fork")
    next(iter(grouped))
    out["first_batch_s"] = time.perf_counter() - start
    return out


# ------------------------------------------------------------------ the evaluator
def eval_ground_truth(work: Path, num_images: int) -> Path:
    """A ground-truth file of ``num_images`` images whose boxes and areas lie on a 1/4 px grid (float32-exact)."""
    from resnet_fpn.data.generate import make_coco_scale_file

    path = work / f"val_{num_images}.json"
    if path.is_file():
        return path
    raw = work / f"val_{num_images}.raw.json"
    make_coco_scale_file(raw, num_images=num_images, seed=5)
    data = json.loads(raw.read_text())
    for ann in data["annotations"]:
        ann["bbox"] = [round(v * 4) / 4 for v in ann["bbox"]]
        ann["area"] = round(ann["area"] * 4) / 4
    path.write_text(json.dumps(data))
    raw.unlink()
    return path


def _predictions(gt: Any, iou_type: str, seed: int = 0) -> List[Dict[str, Any]]:
    """100 detections per image, without masks (`_paste_masks` adds them one image at a time, untimed).

    The first ones (up to 100) are the image's ground-truth boxes jittered by up to 10% of their size, with
    their labels, so that AP is far from 0 and "identical stats" compares real numbers; the rest are random
    boxes of random classes. Coordinates lie on a 1/4 px grid, so float32 and float64 agree.
    """
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    cats = np.asarray(gt.category_ids)
    preds = []
    for image_id in gt.image_ids:
        h, w = gt.image_sizes[image_id]
        anns = gt.annotations_by_image[image_id][:100]
        xywh = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        jitter = rng.uniform(-0.1, 0.1, xywh.shape) * xywh[:, [2, 3, 2, 3]]
        near = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1) + jitter
        k = 100 - len(anns)
        xy = rng.uniform(0, [w * 0.9, h * 0.9], (k, 2))
        wh = rng.uniform(8, [w * 0.5, h * 0.5], (k, 2))
        boxes = np.concatenate([near, np.concatenate([xy, xy + wh], 1)])
        boxes = np.floor(np.clip(boxes, 0, [w, h, w, h]) * 4) / 4
        labels = np.concatenate([np.array([a["category_id"] for a in anns], dtype=np.int64), rng.choice(cats, k)])
        preds.append({"boxes": torch.tensor(boxes, dtype=torch.float32),
                      "scores": torch.tensor(rng.random(100), dtype=torch.float32),
                      "labels": torch.tensor(labels, dtype=torch.int64)})
    return preds


def _paste_masks(pred: Dict[str, Any], size: Any, seed: int) -> Any:
    """(100, H, W) bool masks for `pred`: 28x28 probabilities pasted into each box at image size, thresholded.

    The probabilities are what a mask head gives an object: a smooth blob (a logistic of an ellipse with a
    random centre offset and radii) with mild noise, not per-pixel noise (which would make every mask
    thousands of runs long and overstate the cost of encoding and of parsing the RLEs).
    """
    import numpy as np
    import torch
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    rng = np.random.default_rng(seed)
    grid = np.linspace(-1.0, 1.0, 28)
    centre = rng.uniform(-0.15, 0.15, (100, 2, 1, 1))
    radii = rng.uniform(0.6, 0.95, (100, 2, 1, 1))
    u = (grid[None, None, :] - centre[:, 0]) / radii[:, 0]
    v = (grid[None, :, None] - centre[:, 1]) / radii[:, 1]
    logits = 6.0 * (1.0 - u ** 2 - v ** 2) + rng.normal(0.0, 0.5, (100, 28, 28))
    probs = torch.tensor(1.0 / (1.0 + np.exp(-logits)), dtype=torch.float32)[:, None]
    return paste_masks_in_image(probs, pred["boxes"], tuple(size))[:, 0] > 0.5


def _pasted_mask_cache(gt: Any, gt_path: str, preds: List[Dict[str, Any]]) -> List[List[Dict[str, Any]]]:
    """The `_paste_masks` masks of every image as RLEs, computed once per ground-truth file and kept beside it.

    Pasting 100 masks at image size takes ~0.1 s per image (8 minutes at 5k images) in every contender's process;
    it is untimed, but it made a segm row cost minutes of set-up. The RLEs are pycocotools' (lossless): the
    contenders get the same bool masks, decoded between the timed calls. The cache is keyed by the file and the
    number of images only: delete it after changing `_predictions` or `_paste_masks`.
    """
    import pickle

    import numpy as np
    from pycocotools import mask as mask_util

    path = Path(f"{gt_path}.pasted_masks.pkl")
    if path.is_file():
        with path.open("rb") as f:
            cached = pickle.load(f)
        if len(cached) == len(preds):
            return cached
    rles = []
    for i, (image_id, pred) in enumerate(zip(gt.image_ids, preds)):
        masks = _paste_masks(pred, gt.image_sizes[image_id], i).numpy().view(np.uint8)
        # (N, H, W) C-contiguous is (W, H, N) Fortran-contiguous: encoded as transposed masks, without a copy,
        # and decoded straight into the C layout (see _decoded_masks).
        rles.append(mask_util.encode(masks.transpose(2, 1, 0)))
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        pickle.dump(rles, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)
    return rles


def _decoded_masks(rles: List[Dict[str, Any]]) -> Any:
    """(N, H, W) contiguous bool tensor of the RLEs, the layout `_paste_masks` returns."""
    import torch
    from pycocotools import mask as mask_util

    masks = mask_util.decode(rles).transpose(2, 1, 0)  # (W, H, N) Fortran order = (N, H, W) C order
    assert masks.flags.c_contiguous
    return torch.from_numpy(masks).view(torch.bool)  # 0/1 bytes: a view, no copy


def _torchmetrics_targets(gt: Any, iou_type: str) -> List[Dict[str, Any]]:
    import numpy as np
    import torch
    from pycocotools import mask as mask_util

    targets = []
    for image_id in gt.image_ids:
        anns = gt.annotations_by_image[image_id]
        h, w = gt.image_sizes[image_id]
        xywh = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        target = {"boxes": torch.tensor(np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1), dtype=torch.float32),
                  "labels": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
                  "iscrowd": torch.tensor([a["iscrowd"] for a in anns], dtype=torch.int64),
                  "area": torch.tensor([a["area"] for a in anns], dtype=torch.float32)}
        if iou_type == "segm":
            rles = []
            for a in anns:
                seg = a["segmentation"]
                rle = (mask_util.merge(mask_util.frPyObjects(seg, h, w)) if isinstance(seg, list)
                       else mask_util.frPyObjects(seg, h, w))
                rles.append(rle)
            masks = mask_util.decode(rles) if rles else np.zeros((h, w, 0), np.uint8)
            target["masks"] = torch.from_numpy(np.ascontiguousarray(masks.transpose(2, 0, 1))).bool()
        targets.append(target)
    return targets


def child_eval(impl: str, gt_path: str, iou_type: str) -> Dict[str, Any]:
    import gc
    import warnings

    import torch

    from resnet_fpn.coco_format import CocoAnnotations
    from resnet_fpn.evaluation import STAT_NAMES, COCOEvaluator

    torch.set_num_threads(1)
    library, backend = impl.split(":")
    gt = CocoAnnotations.from_file(gt_path)
    preds = _predictions(gt, iou_type)
    pasted = _pasted_mask_cache(gt, gt_path, preds) if iou_type == "segm" else None
    targets = _torchmetrics_targets(gt, iou_type) if library == "torchmetrics" else None
    gc.collect()
    before = proc_memory()["rss"]
    _reset_peak()
    timed = 0.0  # the update and compute calls only: the masks are made between them, untimed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if library == "ours":
            evaluator = COCOEvaluator(gt_path, iou_types=(iou_type,), backend=backend)
            for i, (image_id, pred) in enumerate(zip(gt.image_ids, preds)):
                if iou_type == "segm":
                    pred = {**pred, "masks": _decoded_masks(pasted[i])}  # type: ignore[index]
                tick = time.perf_counter()
                evaluator.update([pred], [image_id])
                timed += time.perf_counter() - tick
            tick = time.perf_counter()
            metrics = evaluator.compute()
            timed += time.perf_counter() - tick
            stats = [metrics[iou_type][name] for name in STAT_NAMES]
        else:
            from torchmetrics.detection import MeanAveragePrecision

            metric = MeanAveragePrecision(iou_type=iou_type, backend=backend)
            for i, (image_id, pred, target) in enumerate(zip(gt.image_ids, preds, targets)):  # type: ignore[arg-type]
                if iou_type == "segm":
                    masks = _decoded_masks(pasted[i])  # type: ignore[index]
                    pred = {**{k: v for k, v in pred.items() if k != "boxes"}, "masks": masks}
                tick = time.perf_counter()
                metric.update([pred], [target])
                timed += time.perf_counter() - tick
            tick = time.perf_counter()
            result = metric.compute()
            timed += time.perf_counter() - tick
            keys = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_1", "mar_10", "mar_100",
                    "mar_small", "mar_medium", "mar_large")
            stats = [float(result[k]) for k in keys]
    return {"seconds": timed, "peak_mb": _peak_mb() - before, "stats": stats}


# ------------------------------------------------------------------ the parent
def _run_child(args: List[str]) -> Dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.scale", "--child", *args], cwd=REPO,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _machine() -> str:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0))
    return f"{cpu}, {cores} cores available, Python {platform.python_version()}"


def run(sizes: Sequence[int], eval_sizes: Sequence[int], eval_types: Sequence[str], workers: int, calls: int,
        work: Path, log: Any, segm_sizes: Sequence[int] = ()) -> Dict[str, Any]:
    from resnet_fpn.data.generate import make_coco_scale_file

    work.mkdir(parents=True, exist_ok=True)
    data_rows: List[Dict[str, Any]] = []
    for n in sizes:
        ann = work / f"coco_{n}.json"
        if not ann.is_file():
            log(f"generating {ann}")
            make_coco_scale_file(ann, num_images=n, images_dir=work / "images")
        size_mb = ann.stat().st_size / 2**20
        for impl in DATA_IMPLS:
            log(f"data {n} {impl}")
            row = _run_child(["data", impl, str(ann), str(work / "images"), str(workers), str(calls)])
            data_rows.append({"images": n, "file_mb": size_mb, "impl": impl, **row})
            log(f"  {json.dumps(row)}")
    eval_rows: List[Dict[str, Any]] = []
    for n in eval_sizes:
        gt_path = eval_ground_truth(work, n)
        for iou_type in eval_types:
            if iou_type == "segm" and n not in segm_sizes:
                continue
            order = list(EVAL_IMPLS)
            random.Random(n).shuffle(order)
            for impl in order:
                log(f"eval {n} {iou_type} {impl}")
                row = _run_child(["eval", impl, str(gt_path), iou_type])
                eval_rows.append({"images": n, "iou_type": iou_type, "impl": impl, **row})
                log(f"  {row['seconds']:.2f} s, peak {row['peak_mb']:.0f} MB")
    return {"data": data_rows, "eval": eval_rows}


def format_section(result: Dict[str, Any], *, command: str, plot: Optional[str]) -> str:
    lines = [SECTION, "", f"- machine: {_machine()}", f"- date: {time.strftime('%Y-%m-%d %H:%M')}",
             f"- command: `{command}`", "- every figure from one fresh process per contender, in one run; the machine is "
             "shared, so timings are noisy (compare within a row group)", ""]
    lines += ["### Data path (index build; 4 loader workers after random `__getitem__` calls; grouped first batch)", "",
              "| images | JSON MB | contender | build s | RSS after build MB | peak during build MB | main RSS after epoch MB "
              "| worker USS growth MB (max) | worker RSS growth MB (max) | worker RSS at first item MB (max) "
              "| worker RSS growth after first item MB (max) | first batch s |",
              "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def worst(workers: List[Dict[str, float]], key: str) -> str:
        values = [w[key] for w in workers if key in w]
        return f"{max(values):.1f}" if values else "-"

    for r in result["data"]:
        workers = r.get("workers", [])
        main = f"{r['main_rss_after_epoch_mb']:.0f}" if "main_rss_after_epoch_mb" in r else "-"
        first = f"{r['first_batch_s']:.2f}" if "first_batch_s" in r else "-"
        lines.append(f"| {r['images']} | {r['file_mb']:.0f} | {r['impl']} | {r['build_s']:.1f} | {r['build_rss_mb']:.0f} "
                     f"| {r['build_peak_mb']:.0f} | {main} | {worst(workers, 'uss_growth')} "
                     f"| {worst(workers, 'rss_growth')} | {worst(workers, 'rss_first_item')} "
                     f"| {worst(workers, 'rss_growth_after_first')} | {first} |")
    lines += ["", "Worker columns: growth = after the worker's last item minus before its first (what the worker added "
              "in all); 'at first item' = after its first item minus before it (a one-off per worker: code pages of "
              "the shared libraries touched for the first time, first allocations); 'growth after first item' = after "
              "its last item minus after its first (what the remaining items added)."]
    if result["eval"]:
        lines += ["", "### Evaluator (update one image at a time + compute; 100 detections per image)", "",
                  "| images | iou | contender | seconds | peak RSS increase MB | max stats difference vs ours:pycocotools |",
                  "|---:|---|---|---:|---:|---:|"]
    for r in result["eval"]:
        ref = next((x for x in result["eval"] if x["images"] == r["images"] and x["iou_type"] == r["iou_type"]
                    and x["impl"] == "ours:pycocotools"), None)
        diff = max(abs(a - b) for a, b in zip(r["stats"], ref["stats"])) if ref else float("nan")
        lines.append(f"| {r['images']} | {r['iou_type']} | {r['impl']} | {r['seconds']:.2f} | {r['peak_mb']:.0f} | {diff:.1e} |")
    if plot:
        lines += ["", f"![cost against size]({plot})"]
    return "\n".join(lines) + "\n"


def plot_costs(result: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for impl in ("ours", "pycocotools", "torchvision_ref"):
        rows = sorted((r for r in result["data"] if r["impl"] == impl), key=lambda r: r["images"])
        if not rows:
            continue
        for ax, key, unit in ((axes[0], "build_s", "s"), (axes[1], "build_rss_mb", "MB")):
            xs, ys = [r["images"] for r in rows], [r[key] for r in rows]
            line, = ax.plot(xs, ys, "o-", label=f"{impl}")
            # proportional to the number of images, through the largest point: where linear growth would lie
            ax.plot([0, xs[-1]], [0, ys[-1]], ":", color=line.get_color(), linewidth=1)
    for ax, title in zip(axes, ("index build time (s); dotted: proportional",
                                "RSS after build (MB); dotted: proportional")):
        ax.set_xlabel("images")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def write_section(path: Path, section: str) -> None:
    """Replace (or append) the scale section at the end of ``path``, leaving the rest as it is."""
    text = path.read_text() if path.is_file() else ""
    if SECTION in text:
        text = text[: text.index(SECTION)].rstrip("\n") + "\n\n"
    elif text and not text.endswith("\n\n"):
        text = text.rstrip("\n") + "\n\n"
    path.write_text(text + section)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        kind, rest = argv[1], argv[2:]
        if kind == "data":
            out = child_data(rest[0], rest[1], rest[2], int(rest[3]), int(rest[4]))
        else:
            out = child_eval(rest[0], rest[1], rest[2])
        print(json.dumps(out))
        return 0
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="*", default=[10_000, 50_000, 118_287],
                   help="data-path sizes (none: the evaluator only)")
    p.add_argument("--eval-images", type=int, nargs="*", default=[1_000, 5_000],
                   help="evaluator sizes (none: the data path only)")
    p.add_argument("--eval-types", nargs="+", choices=("bbox", "segm"), default=["bbox", "segm"])
    p.add_argument("--segm-images", type=int, nargs="*", default=[1_000],
                   help="the --eval-images sizes at which segm is measured too (pycocotools' segm is minutes at 5k)")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--calls", type=int, default=2_000)
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/resnet_fpn_scale"))
    p.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    p.add_argument("--plot", type=Path, default=None,
                   help="where the cost-against-size plot goes (default: scale_cost.png beside --out)")
    args = p.parse_args(argv)
    command = " ".join(["python -m benchmarks.scale", *(shlex.quote(a) for a in argv)])
    result = run(args.sizes, args.eval_images, args.eval_types, args.workers, args.calls, args.work_dir,
                 lambda line: print(line, file=sys.stderr, flush=True), segm_sizes=args.segm_images)
    (args.work_dir / "scale.json").write_text(json.dumps(result, indent=1))
    plot: Optional[Path] = (args.plot or args.out.parent / "scale_cost.png") if result["data"] else None
    if plot is not None:
        plot_costs(result, plot)
    plot_ref = None
    if plot is not None:
        plot_ref = os.path.relpath(plot.resolve(), args.out.resolve().parent)
    section = format_section(result, command=command, plot=plot_ref)
    print(section)
    write_section(args.out, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
