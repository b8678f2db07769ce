"""benchmarks.ablation: each arm's recipe is a valid training config that differs from the baseline only where the
arm says, and the table reports mean ± sample std over seeds."""
import statistics

import pytest

from benchmarks.ablation import ARMS, DATASETS, recipe, table
from resnet_fpn.training import config_from_dict


@pytest.mark.parametrize("dataset", list(DATASETS))
@pytest.mark.parametrize("arm", ARMS)
def test_every_arm_is_a_valid_config_differing_only_where_it_says(dataset, arm, tmp_path):
    config = recipe(dataset, arm, seed=3, steps=200, output_dir=tmp_path, tta=(arm == "baseline"))
    checked = config_from_dict(config, where="ablation")
    base = recipe(dataset, "baseline", seed=3, steps=200, output_dir=tmp_path)
    assert checked.trainer.max_steps == 200 and checked.trainer.seed == 3
    assert checked.model["model"] == DATASETS[dataset]["model"]
    names = [a["name"] for a in config["data"]["augment"]]
    if arm == "lsj":
        with_masks = DATASETS[dataset]["model"] == "mask_rcnn"
        assert names == ["HorizontalFlip", "LargeScaleJitter"] + (["CopyPaste"] if with_masks else [])
        assert checked.model["min_size"] == checked.model["max_size"] == DATASETS[dataset]["lsj"]
    else:
        assert names == ["HorizontalFlip"]
    if arm == "ema":
        # averaged over the second half of the run: start at 100, horizon steps/4 = 50 -> decay 0.98
        assert checked.trainer.ema.start_step == 100 and checked.trainer.ema.decay == pytest.approx(0.98)
    else:
        assert checked.trainer.ema is None
    assert (checked.evaluation.tta is not None) == (arm == "baseline")
    # Everything else equals the baseline's (the optimizer and schedule above all).
    assert config["optim"] == base["optim"]


def test_table_gives_mean_and_sample_spread_over_seeds():
    rows = [{"dataset": "fruits_nuts", "arm": "baseline", "seed": s, "steps": 245, "step_s": 0.49, "seconds": 150.0,
             "bbox": ap, "segm": None} for s, ap in ((1, 0.30), (2, 0.40), (3, 0.35))]
    text = table(rows)
    spread = statistics.stdev([0.30, 0.40, 0.35])
    assert f"| fruits_nuts | mask_rcnn R18-FPN | baseline | 245 (0.49) | 150 | 0.350 ± {spread:.3f} | n/a | 3 |" in text
