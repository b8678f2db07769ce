"""benchmarks.ablation: each arm's recipe is a valid training config that differs from the baseline only where the
arm says, and the table reports mean ± sample std over seeds."""
import statistics

import pytest

from benchmarks.ablation import ARMS, DATASETS, recipe, recipe_key, table
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


def test_diverged_runs_are_counted_never_scored_as_zero():
    """A run whose loss went NaN (the training guard's FloatingPointError) has no AP: the cell says how many runs
    diverged and where, and the mean is over the runs that finished."""
    base = {"dataset": "coco128", "arm": "baseline", "steps": 465, "step_s": 0.64, "seconds": 300.0, "segm": None}
    rows = [{**base, "seed": 1, "bbox": None, "diverged_at": 39}, {**base, "seed": 2, "bbox": None, "diverged_at": 19},
            {**base, "seed": 3, "bbox": 0.012, "diverged_at": None},
            {**base, "arm": "ema", "seed": 1, "bbox": None, "diverged_at": 30}]
    text = table(rows)
    assert "| coco128 | faster_rcnn R18-FPN | baseline | 465 (0.64) | 300 | 0.012 (diverged: 2 of 3 runs (NaN at steps 19-39)) | n/a | 3 |" in text
    assert "| ema | 465 (0.64) | 300 | diverged: 1 of 1 runs (NaN at step 30) | n/a | 1 |" in text


def test_the_cache_key_follows_the_recipe(tmp_path):
    config = recipe("coco128", "baseline", seed=1, steps=400, output_dir=tmp_path / "a")
    same = recipe("coco128", "baseline", seed=1, steps=400, output_dir=tmp_path / "b")
    assert recipe_key(config) == recipe_key(same)  # the output directory is not the recipe
    other = recipe("coco128", "baseline", seed=1, steps=400, output_dir=tmp_path / "a")
    other["optim"]["lr"] = 0.0005
    assert recipe_key(other) != recipe_key(config)
    assert recipe_key(recipe("coco128", "baseline", seed=1, steps=401, output_dir=tmp_path)) != recipe_key(config)


def test_a_run_stopped_by_the_training_guard_is_recorded_with_its_step(monkeypatch):
    import resnet_fpn.training as training
    from benchmarks.ablation import _run
    from resnet_fpn.training import NonFiniteLossError

    def diverges(config):
        raise NonFiniteLossError("training loss is not finite at step 39 (...)", step=39)

    monkeypatch.setattr(training, "config_from_dict", lambda config, where: config)
    monkeypatch.setattr(training, "train", diverges)
    got = _run({"seed": 1})
    assert got["diverged_at"] == 39 and got["metrics"] is None and got["seconds"] >= 0
