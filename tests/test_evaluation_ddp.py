"""COCOEvaluator under torch.distributed: two gloo processes on CPU give the one-process metrics exactly.

DistributedSampler over 99 images with 2 replicas pads to 100 by repeating an image, so one image
reaches both ranks; compute() must count it once, on every rank.
"""
from __future__ import annotations

import json
import pickle
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pycocotools import mask as mask_util
from torch.utils.data import DistributedSampler

from resnet_fpn.evaluation import COCOEvaluator, evaluate_results
from conftest import require_shared

# pycocotools' mask.decode (used here to build dense masks) warns under numpy 2; not our code.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
WORLD = 2
N_IMAGES = 99  # odd on purpose: 2 replicas -> 50 + 50 with one padded repeat


@pytest.fixture(scope="module")
def val100(shared_data) -> dict:
    root = require_shared(shared_data / "coco_val2014_100")
    return {"gt": str(root / "instances_val2014_100.json"), "segm": str(root / "instances_val2014_fakesegm100_results.json")}


def _setup(paths):
    """Image ids, label mapping and a prediction maker, built the same way in every process."""
    gt = json.loads(Path(paths["gt"]).read_text())
    cat_ids = sorted(c["id"] for c in gt["categories"])
    label_of = {cid: i + 1 for i, cid in enumerate(cat_ids)}
    sizes = {img["id"]: (img["height"], img["width"]) for img in gt["images"]}
    image_ids = sorted(sizes)[:N_IMAGES]
    by_image = defaultdict(list)
    for r in json.loads(Path(paths["segm"]).read_text()):
        by_image[r["image_id"]].append(r)

    def prediction(image_id):
        rs = by_image.get(image_id, [])
        h, w = sizes[image_id]
        rles = [r["segmentation"] for r in rs]
        xyxy = mask_util.toBbox(rles).reshape(-1, 4).astype(np.float64) if rs else np.zeros((0, 4))
        xyxy[:, 2:] += xyxy[:, :2]
        dense = mask_util.decode(rles) if rs else np.zeros((h, w, 0), np.uint8)
        return {
            "boxes": torch.from_numpy(xyxy),
            "scores": torch.tensor([r["score"] for r in rs], dtype=torch.float64),
            "labels": torch.tensor([label_of[r["category_id"]] for r in rs], dtype=torch.int64),
            "masks": torch.from_numpy(dense.transpose(2, 0, 1).astype(np.float32)).unsqueeze(1),
        }

    to_cat = {v: k for k, v in label_of.items()}
    return image_ids, to_cat, prediction


def _evaluate(paths, image_ids, to_cat, prediction, batch=4):
    evaluator = COCOEvaluator(paths["gt"], iou_types=("bbox", "segm"), label_to_category_id=to_cat)
    for i in range(0, len(image_ids), batch):
        ids = image_ids[i:i + batch]
        evaluator.update([prediction(j) for j in ids], ids)
    return evaluator, evaluator.compute()


def _worker(rank, paths, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        image_ids, to_cat, prediction = _setup(paths)
        sampler = DistributedSampler(image_ids, num_replicas=WORLD, rank=rank, shuffle=True, seed=0)
        mine = [image_ids[i] for i in sampler]
        evaluator, metrics = _evaluate(paths, mine, to_cat, prediction)
        out = {"seen": mine, "metrics": metrics, "has_precision": sorted(evaluator.precision)}
        Path(out_dir, f"rank{rank}.pkl").write_bytes(pickle.dumps(out))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_match_one_process(val100, tmp_path):
    mp.spawn(_worker, args=(val100, str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [pickle.loads((tmp_path / f"rank{r}.pkl").read_bytes()) for r in range(WORLD)]

    image_ids, to_cat, prediction = _setup(val100)
    seen = [i for r in ranks for i in r["seen"]]
    # The sampler really padded: 100 updates, one image on both ranks, all 99 covered.
    assert len(seen) == 100 and len(set(seen)) == N_IMAGES == len(set(seen) & set(image_ids))

    _, single = _evaluate(val100, image_ids, to_cat, prediction)
    for r in ranks:
        assert r["metrics"] == single  # exact: same detections, same pycocotools run
    assert ranks[0]["has_precision"] == ["bbox", "segm"] and ranks[1]["has_precision"] == []

    # Not vacuous: the padded image's detections counted twice would lower the AP.
    (repeated,) = [i for i in set(seen) if seen.count(i) == 2]
    entries = [r for r in json.loads(Path(val100["segm"]).read_text()) if r["image_id"] in set(image_ids)]
    twice = entries + [r for r in entries if r["image_id"] == repeated]
    assert len(twice) > len(entries)
    once_ap = evaluate_results(val100["gt"], entries, iou_types=("segm",), backend="faster_coco_eval")["segm"]["AP"]
    twice_ap = evaluate_results(val100["gt"], twice, iou_types=("segm",), backend="faster_coco_eval")["segm"]["AP"]
    assert twice_ap < once_ap
