"""trainer.ema: Lightning's EMAWeightAveraging as configured by resnet_fpn.training (formula, checkpoint, final metrics)."""
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from resnet_fpn.training import config_from_dict, train
from resnet_fpn.training.config import EMAConfig
from resnet_fpn.training.run import ema_callback

from test_training import assert_metrics_of_last_checkpoint, tiny_config


class _Tiny(L.LightningModule):
    """A linear layer and a BatchNorm (its running statistics are buffers the EMA averages too)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        self.seen = []  # every float tensor of the state after each optimizer step

    def training_step(self, batch, batch_idx):
        return self.net(batch[0]).pow(2).mean()

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.seen.append({k: v.detach().clone() for k, v in self.state_dict().items() if v.is_floating_point()})

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def test_ema_after_k_steps_equals_the_formula_and_is_the_final_model():
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(20, 3) * 3 + 1)
    module, decay, steps = _Tiny(), 0.6, 5
    trainer = L.Trainer(max_steps=steps, callbacks=[ema_callback(EMAConfig(decay=decay))], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu", devices=1)
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=4))
    assert len(module.seen) == steps
    # The first update copies the weights; then ema_k = decay * ema_{k-1} + (1 - decay) * w_k.
    expected = dict(module.seen[0])
    for weights in module.seen[1:]:
        expected = {k: decay * expected[k] + (1 - decay) * weights[k] for k in expected}
    final = {k: v for k, v in module.state_dict().items() if v.is_floating_point()}
    assert set(final) == set(expected) and "net.1.running_mean" in final
    for key in expected:
        torch.testing.assert_close(final[key], expected[key], msg=key)
    # ...and differs from the raw weights of the last step (the test can fail).
    assert not torch.allclose(final["net.0.weight"], module.seen[-1]["net.0.weight"])


@pytest.mark.slow
def test_ema_run_validates_saves_and_reports_the_averaged_weights(tmp_path):
    config = tiny_config(tmp_path)
    config["model"]["fpn_channels"] = 32
    config["trainer"].update(max_steps=3, val_every_n_steps=None, checkpoint_every_n_steps=3, ema={"decay": 0.5})
    config["num_pictures"] = 0
    result = train(config_from_dict(config))
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    # state_dict (what detector_from_checkpoint and resnet-fpn evaluate load) is the EMA; the raw weights are kept
    # for resuming, with the averaging state.
    assert set(ckpt["state_dict"]) == set(ckpt["current_model_state"]) and int(ckpt["averaging_state"]["n_averaged"]) == 3
    key = next(k for k in ckpt["state_dict"] if k.endswith("box_predictor.cls_score.weight"))
    assert not torch.equal(ckpt["state_dict"][key], ckpt["current_model_state"][key])
    # The final metrics are the EMA's: a fresh evaluation of last.ckpt's state_dict gives them.
    assert_metrics_of_last_checkpoint(result["metrics"], tmp_path / "run", tmp_path / "cache")


@pytest.mark.slow
def test_resume_keeps_the_ema_state(tmp_path):
    """Resumed from a checkpoint written during training (step 2), then trained to step 3, where the checkpoint is
    written when training ends (3 is not a multiple of checkpoint_every_n_steps): after EMAWeightAveraging copied
    the average into the model, so the raw weights must have been kept for it."""
    config = tiny_config(tmp_path)
    config["model"]["fpn_channels"] = 32
    config["trainer"].update(max_steps=2, val_every_n_steps=None, checkpoint_every_n_steps=2, ema={"decay": 0.5})
    config["num_pictures"] = 0
    train(config_from_dict(config))
    at_two = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    config["trainer"]["max_steps"] = 3
    train(config_from_dict(config), resume=True)
    at_three = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert int(at_three["averaging_state"]["n_averaged"]) == 3  # continued, not restarted
    key = next(k for k in at_three["state_dict"] if k.endswith("box_predictor.cls_score.weight"))
    assert not torch.equal(at_three["state_dict"][key], at_three["current_model_state"][key])  # raw weights kept
    for key, ema in at_three["state_dict"].items():
        if ema.is_floating_point():
            expected = 0.5 * at_two["state_dict"][key] + 0.5 * at_three["current_model_state"][key]
            torch.testing.assert_close(ema, expected, msg=key)
