"""Checkpoints a run writes: renamed into place from beside the target, nothing left in the system temp folder."""
import tempfile
from pathlib import Path

import fsspec
import pytest
import torch

from resnet_fpn.training import config_from_dict
from resnet_fpn.training.checkpoint_io import AtomicCheckpointIO, remove_partial_checkpoints
from resnet_fpn.training.run import build_trainer


@pytest.fixture
def empty_system_tmp(tmp_path, monkeypatch) -> Path:
    """tempfile's folder pointed at an empty one, so a write through it shows."""
    folder = tmp_path / "system_tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle this")


def test_a_checkpoint_is_written_beside_its_target_not_through_the_system_temp_folder(tmp_path, empty_system_tmp,
                                                                                       monkeypatch):
    created = []
    mkstemp = tempfile.mkstemp

    def recording_mkstemp(*args, **kwargs):
        fd, name = mkstemp(*args, **kwargs)
        created.append(Path(name))
        return fd, name

    # Lightning's own CheckpointIO makes its temporary file with tempfile.mkstemp() in the system temp folder.
    monkeypatch.setattr(tempfile, "mkstemp", recording_mkstemp)
    path = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 7, "w": torch.arange(3.0)}, path)
    loaded = torch.load(path, weights_only=True)
    assert loaded["global_step"] == 7 and torch.equal(loaded["w"], torch.arange(3.0))
    assert len(created) == 1 and created[0].parent == path.parent and created[0].name.startswith(".last.ckpt.")
    assert list(empty_system_tmp.iterdir()) == []
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_a_failed_write_leaves_the_previous_checkpoint_whole(tmp_path, empty_system_tmp):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 2}, path)
    with pytest.raises(RuntimeError, match="cannot pickle this"):
        io.save_checkpoint({"global_step": 4, "bad": Unpicklable()}, path)
    assert torch.load(path, weights_only=True) == {"global_step": 2}
    assert [p.name for p in tmp_path.iterdir() if p.name != "system_tmp"] == ["last.ckpt"]


def test_remote_paths_and_storage_options_stay_lightnings():
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 3}, "memory://resnet_fpn_test/last.ckpt")
    with fsspec.open("memory://resnet_fpn_test/last.ckpt", "rb") as f:
        assert torch.load(f, weights_only=True) == {"global_step": 3}
    with pytest.raises(TypeError, match="storage_options"):
        io.save_checkpoint({"global_step": 3}, "last.ckpt", storage_options={"x": 1})


def test_partial_checkpoints_of_a_killed_run_are_removed_and_nothing_else(tmp_path):
    names = [".last.ckpt.k3j2_a.tmp", ".step000004.ckpt.zz91.tmp", "last.ckpt", "best.ckpt", "notes.tmp",
             ".hidden", ".last.ckpt"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    removed = remove_partial_checkpoints(tmp_path)
    assert sorted(p.name for p in removed) == [".last.ckpt.k3j2_a.tmp", ".step000004.ckpt.zz91.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[2:])
    assert remove_partial_checkpoints(tmp_path / "missing") == []


def test_the_trainer_of_a_run_writes_through_it(tmp_path):
    config = config_from_dict({
        "model": {"model": "faster_rcnn", "backbone": "resnet18-fpn"},
        "data": {"synthetic": {"num_train": 2, "num_val": 2, "image_size": [64, 64]}},
        "trainer": {"max_steps": 1, "accelerator": "cpu", "devices": 1},
        "output_dir": str(tmp_path / "run"),
    })
    trainer = build_trainer(config, output_dir=tmp_path / "run", history=None)
    assert type(trainer.strategy.checkpoint_io) is AtomicCheckpointIO
