"""ONNX / TorchScript export of backbones and detectors (resnet_fpn.deploy.export), with parity against eager
(resnet_fpn.deploy.parity)."""
import copy
import json
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from resnet_fpn.backbone import build_backbone
from resnet_fpn import Category
from resnet_fpn.checkpoint import save_detector_checkpoint
from resnet_fpn.deploy.export import (
    ExportedModel,
    check_format,
    export_model,
    export_onnx,
    export_torchscript,
    require_onnx,
)
from resnet_fpn.deploy.parity import (
    DEFAULT_TOLERANCES,
    IMAGENET_MEAN_STD,
    _detection_diffs,
    check_parity,
    input_normalization,
    parity_inputs,
)
from resnet_fpn.detectors import build_detector
from resnet_fpn.predictor import to_float_image
from conftest import require_shared

FPN_OUTPUTS = ["feat_0", "feat_1", "feat_2", "feat_3", "feat_pool"]
SIZES = ["320x480", "384x256"]


def _export_cli(argv):
    """``resnet-fpn export ARGV`` (what tools/export.py runs): the exit status."""
    from resnet_fpn.cli import main

    return main(["export", *argv])


def _imagenet_weights(path: Path, arch: str) -> Path:
    """torchvision's classifier state dict with random BN statistics and affine terms (as trained ones are)."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    torch.save(model.state_dict(), path)
    return path


def _parity_lines(stdout: str):
    return [line for line in stdout.splitlines() if line.startswith("[")]


@pytest.fixture(scope="module")
def photo(shared_data):
    return require_shared(shared_data / "fruits_nuts" / "images" / "14.jpg")


@pytest.fixture(scope="module")
def small_photo(photo, tmp_path_factory):
    """The photo at half size (400x300): a real picture, at a quarter of the CPU time."""
    from PIL import Image

    path = tmp_path_factory.mktemp("photo") / "fruits_400x300.png"
    with Image.open(photo) as image:
        image.convert("RGB").resize((400, 300), Image.BILINEAR).save(path)
    return path


@pytest.fixture(scope="module")
def resnet18_weights(tmp_path_factory):
    return _imagenet_weights(tmp_path_factory.mktemp("weights") / "resnet18.pth", "resnet18")


# ------------------------------------------------------------------------------------------------ errors
def test_unknown_format_is_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"unknown export format 'tflite'; choose one of onnx, torchscript"):
        check_format("tflite")
    with pytest.raises(ValueError, match=r"unknown export format 'tflite'"):
        export_model(torch.nn.Identity(), tmp_path / "m", format="tflite")
    assert _export_cli(["--backbone", "resnet18-fpn", "--format", "tflite", "--out", str(tmp_path / "m")]) == 2
    assert "unknown export format 'tflite'" in capsys.readouterr().err


def test_missing_onnx_packages_name_the_install_command(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    with pytest.raises(ImportError, match=r"onnxruntime package.*pip install 'resnet_fpn\[export\]'"):
        require_onnx()
    assert _export_cli(["--backbone", "resnet18-fpn", "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "pip install onnx onnxruntime" in capsys.readouterr().err


def test_missing_checkpoint_is_named(tmp_path, capsys):
    status = _export_cli(["--checkpoint", str(tmp_path / "gone.ckpt"), "--format", "torchscript",
                          "--out", str(tmp_path / "m.pt")])
    assert status == 2
    assert "checkpoint not found" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_an_output_path_that_cannot_be_written_is_one_line(tmp_path, capsys, fmt):
    # Was: a RuntimeError traceback from torch.jit.save (/proc), "[Errno 17] File exists: ..." (a file in the way).
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    cases = [(blocker / "m.out", f"cannot write {blocker / 'm.out'}: {blocker} is a file, not a folder\n"),
             (tmp_path, f"cannot write {tmp_path}: it is a folder; give a file name\n")]
    if Path("/proc/self").is_dir():  # Linux: a virtual file system where no file can be created
        cases.append((Path("/proc/m.out"), "cannot write /proc/m.out: cannot create a file in /proc ("))
    for out, message in cases:
        assert _export_cli(["--backbone", "resnet18-fpn", "--format", fmt, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"resnet-fpn export: error: {message}") and err.count("\n") == 1, err
    assert blocker.read_text() == "not a folder" and sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_bad_export_options(tmp_path):
    backbone = build_backbone("resnet18-fpn").eval()
    with pytest.raises(ValueError, match=r"opset must be an int >= 11"):
        export_onnx(backbone, tmp_path / "m.onnx", opset=9)
    with pytest.raises(ValueError, match=r"example_size must be \(height, width\)"):
        export_torchscript(backbone, tmp_path / "m.pt", example_size=(16, 16))
    exported = ExportedModel(path=tmp_path / "m.pt", format="torchscript", kind="backbone", input_name="images",
                             output_names=("feat_0",), output_keys=("0",), dynamic=True, exporter="none")
    with pytest.raises(ValueError, match="at least one input"):
        check_parity(backbone, exported, inputs=[])
    with pytest.raises(ValueError, match="tolerance must be > 0"):
        check_parity(backbone, exported, inputs=parity_inputs("backbone", sizes=[(64, 64)]), tolerance=0)


def test_backbone_images_are_normalised_as_the_detector_does():
    torch.manual_seed(0)
    detector = build_detector("fcos", backbone="resnet18-fpn", num_classes=3)
    # Statistics other than ImageNet's (a backbone trained on other data), set where the detector keeps them.
    detector.transform.image_mean, detector.transform.image_std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.5]
    assert input_normalization(detector) == ((0.5, 0.4, 0.3), (0.2, 0.25, 0.5))
    assert input_normalization(detector.backbone) == IMAGENET_MEAN_STD  # a bare backbone: ImageNet's
    image = torch.rand(3, 40, 48, generator=torch.Generator().manual_seed(0))
    (_, x), = parity_inputs("backbone", images=[image], normalization=input_normalization(detector))
    # The same tensor the detector's own transform feeds its backbone (before resizing and batching).
    assert torch.allclose(x[0], detector.transform.normalize(image), rtol=0, atol=1e-6)
    (_, raw), = parity_inputs("detector", images=[image], normalization=input_normalization(detector))
    assert torch.equal(raw, image)  # a whole detector normalises its input itself
    with pytest.raises(ValueError, match=r"normalization must be \(mean, std\) of 3 values each"):
        parity_inputs("backbone", images=[image], normalization=((0.5,), (0.2,)))


class _WarningBackbone(torch.nn.Module):
    """A conv that warns on every call, as a user's model might."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        warnings.warn("a warning of the model itself", UserWarning)
        return {"0": self.conv(x)}


def test_export_lets_other_warnings_through(tmp_path):
    # Only the exporters' own notices are silenced (by message); a model's warning still reaches the caller.
    model = _WarningBackbone().eval()
    with pytest.warns(UserWarning, match="a warning of the model itself"):
        export_onnx(model, tmp_path / "w.onnx", example_size=(32, 32))
    with pytest.warns(UserWarning, match="a warning of the model itself"):
        export_torchscript(model, tmp_path / "w.pt", example_size=(32, 32))


# ------------------------------------------------------------------------------------------------ backbone
def _check_backbone_onnx_cli(tmp_path, arch, weights, extra=()):
    out = tmp_path / f"{arch}.onnx"
    # ImageNet weights leave the FPN at its random init: seeded, so that _ort_vs_independent_eager rebuilds it.
    torch.manual_seed(0)
    status = _export_cli(["--backbone", f"{arch}-fpn", "--weights", str(weights), "--format", "onnx",
                          "--out", str(out), "--dynamic", *extra])
    return status, out


def _ort_vs_independent_eager(onnx_path, arch, weights, photo):
    """Run the file on a real photo against a backbone built anew from the same weights file."""
    import onnxruntime as ort

    torch.manual_seed(0)  # the same FPN init as the exported backbone (see _check_backbone_onnx_cli)
    eager = build_backbone(f"{arch}-fpn", weights=str(weights)).eval()
    (_, x), = parity_inputs("backbone", images=[to_float_image(photo)])
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(FPN_OUTPUTS, {"images": x.numpy()})
    with torch.no_grad():
        ref = eager(x)
    rel = {key: float(np.abs(g - ref[key].numpy()).max() / np.abs(ref[key].numpy()).max())
           for key, g in zip(ref, got)}
    return rel


def test_resnet18_fpn_onnx_parity_two_sizes(tmp_path, resnet18_weights, small_photo, capsys):
    status, out = _check_backbone_onnx_cli(tmp_path, "resnet18", resnet18_weights)
    stdout = capsys.readouterr().out
    assert status == 0, stdout
    lines = _parity_lines(stdout)
    # Every FPN level at both sizes, each within 1e-4 of eager.
    assert len(lines) == len(FPN_OUTPUTS) * len(SIZES)
    for size in SIZES:
        for name in FPN_OUTPUTS:
            assert any(line.startswith(f"[{size}] {name} ") and line.split("  ")[-1] == "ok" for line in lines)
    assert "parity PASSED" in stdout and "tolerance 0.0001" in stdout
    rel = _ort_vs_independent_eager(out, "resnet18", resnet18_weights, small_photo)
    assert max(rel.values()) <= 1e-4, rel


@pytest.mark.slow
def test_resnet50_fpn_onnx_parity_two_sizes(tmp_path, photo, capsys):
    weights = _imagenet_weights(tmp_path / "resnet50.pth", "resnet50")
    status, out = _check_backbone_onnx_cli(tmp_path, "resnet50", weights)
    stdout = capsys.readouterr().out
    assert status == 0, stdout
    assert len(_parity_lines(stdout)) == len(FPN_OUTPUTS) * len(SIZES)
    assert all(line.endswith("ok") for line in _parity_lines(stdout))
    rel = _ort_vs_independent_eager(out, "resnet50", weights, photo)
    assert max(rel.values()) <= 1e-4, rel


def test_optimized_onnx_folds_bn_and_keeps_parity(tmp_path, resnet18_weights, capsys):
    import onnx

    status, plain = _check_backbone_onnx_cli(tmp_path / "plain", "resnet18", resnet18_weights)
    assert status == 0
    status, folded = _check_backbone_onnx_cli(tmp_path / "folded", "resnet18", resnet18_weights, ["--optimize"])
    stdout = capsys.readouterr().out
    assert status == 0, stdout
    # Compared with the original (unfolded) eager backbone, within the same 1e-4.
    assert stdout.count("parity PASSED") == 2

    def op_counts(path):
        ops = [node.op_type for node in onnx.load(str(path)).graph.node]
        return len(ops), ops.count("Mul")

    # FrozenBatchNorm2d exports as a Mul and an Add after each of resnet18's 20 convs; folded, they are gone.
    (plain_nodes, plain_muls), (folded_nodes, folded_muls) = op_counts(plain), op_counts(folded)
    assert plain_muls == 20 and folded_muls == 0
    assert plain_nodes - folded_nodes == 2 * 20


def test_static_onnx_accepts_only_its_size(tmp_path):
    import onnxruntime as ort

    backbone = build_backbone("resnet18-fpn").eval()
    exported = export_onnx(backbone, tmp_path / "static.onnx", example_size=(256, 320), dynamic=False)
    report = check_parity(backbone, exported, inputs=parity_inputs("backbone", sizes=[(256, 320)]))
    assert report.ok and not exported.dynamic
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match=r"(?i)dimension|shape"):
        session.run(None, {"images": np.zeros((1, 3, 320, 256), dtype=np.float32)})


def test_parity_check_catches_a_different_model(tmp_path, capsys):
    backbone = build_backbone("resnet18-fpn").eval()
    exported = export_torchscript(backbone, tmp_path / "bb.pt")
    changed = copy.deepcopy(backbone)
    with torch.no_grad():
        changed.fpn.layer_blocks[0][0].weight.mul_(1.001)  # P2's output conv only
    report = check_parity(changed, exported, inputs=parity_inputs("backbone", sizes=[(256, 256)]))
    assert not report.ok
    failed = [d.name for d in report.cases[0].diffs if not d.ok]
    assert failed == ["feat_0"]
    assert "parity FAILED" in report.lines()[-1]
    # The CLI turns a failed check into exit status 1 (a tolerance below float32 rounding fails any ONNX file).
    status = _export_cli(["--backbone", "resnet18-fpn", "--format", "onnx", "--out", str(tmp_path / "b.onnx"),
                          "--dynamic", "--tolerance", "1e-12", "--check-sizes", "128x128"])
    assert status == 1 and "parity FAILED" in capsys.readouterr().out


def test_torchscript_backbone_same_as_eager_on_a_photo(tmp_path, resnet18_weights, small_photo, capsys):
    torch.manual_seed(0)  # the FPN stays at its init with ImageNet weights: the same init for `eager` below
    status = _export_cli(["--backbone", "resnet18-fpn", "--weights", str(resnet18_weights), "--format",
                          "torchscript", "--out", str(tmp_path / "bb.pt"), "--check-images",
                          str(small_photo)])
    stdout = capsys.readouterr().out
    assert status == 0, stdout
    assert "tolerance 1e-05" in stdout and len(_parity_lines(stdout)) == len(FPN_OUTPUTS)
    # The loaded module returns eager's dict, keys included, at a size other than the trace's.
    loaded = torch.jit.load(str(tmp_path / "bb.pt"))
    torch.manual_seed(0)
    eager = build_backbone("resnet18-fpn", weights=str(resnet18_weights)).eval()
    (_, x), = parity_inputs("backbone", images=[to_float_image(small_photo)[:, :200, :250]])
    with torch.no_grad():
        got, ref = loaded(x), eager(x)
    assert list(got) == list(ref) == ["0", "1", "2", "3", "pool"]
    for key in ref:
        assert torch.allclose(got[key], ref[key], rtol=0, atol=1e-5 * float(ref[key].abs().max()))


# ------------------------------------------------------------------------------------------------ detectors
@pytest.fixture(scope="module")
def faster_rcnn():
    torch.manual_seed(0)
    return build_detector("faster_rcnn", backbone="resnet18-fpn", num_classes=4, min_size=320, max_size=512).eval()


def test_detection_pairing_tolerates_swapped_ties_only():
    ref = {"boxes": np.array([[0, 0, 10, 10], [20, 20, 40, 40], [5, 5, 9, 9]], np.float32),
           "scores": np.array([0.5, 0.3, 0.3], np.float32), "labels": np.array([1, 2, 1])}
    swapped = {k: v[[0, 2, 1]] for k, v in ref.items()}
    assert all(d.ok for d in _detection_diffs(ref, swapped, 1e-3))
    moved = {k: v.copy() for k, v in ref.items()}
    moved["boxes"][0] += 5.0  # the best detection moved: no partner for it
    diffs = {d.name: d for d in _detection_diffs(ref, moved, 1e-3)}
    assert not diffs["boxes"].ok and "above the cut-off" in diffs["boxes"].note
    relabelled = {k: v.copy() for k, v in ref.items()}
    relabelled["labels"][0] = 3
    assert not all(d.ok for d in _detection_diffs(ref, relabelled, 1e-3))
    # A detection missing at the cut-off (the lowest score, where top-k or the threshold decides) is tolerated.
    cut = {k: v[:2] for k, v in ref.items()}
    assert all(d.ok for d in _detection_diffs(ref, cut, 1e-3))


def test_torchscript_faster_rcnn_same_as_eager_on_a_photo(tmp_path, faster_rcnn, photo):
    exported = export_torchscript(faster_rcnn, tmp_path / "det.pt")
    assert exported.kind == "detector" and exported.output_names == ("boxes", "scores", "labels")
    report = check_parity(faster_rcnn, exported, inputs=parity_inputs("detector", images=[to_float_image(photo)]))
    print("\n".join(report.lines()))
    assert report.tolerance == DEFAULT_TOLERANCES[("torchscript", "detector")] == 1e-5
    assert report.ok and report.max_rel <= 1e-5
    boxes = report.cases[0].diffs[0]
    assert boxes.shape[0] > 0 and boxes.note.startswith(f"{boxes.shape[0]}/{boxes.shape[0]} eager detections paired")
    # Called like the eager detector: a list of images in, a list of dicts out.
    out = torch.jit.load(str(exported.path))([to_float_image(photo)])
    assert isinstance(out, list) and set(out[0]) == {"boxes", "labels", "scores"}


@pytest.mark.slow
def test_faster_rcnn_onnx_from_checkpoint_on_photos(tmp_path, faster_rcnn, shared_data, photo, capsys):
    ann = shared_data / "fruits_nuts" / "annotations" / "instances_val.json"
    cats = sorted(json.loads(ann.read_text())["categories"], key=lambda c: c["id"])
    options = dict(model="faster_rcnn", backbone="resnet18-fpn", num_classes=4, min_size=320, max_size=512)
    ckpt = save_detector_checkpoint(tmp_path / "frcnn.ckpt", faster_rcnn, model_options=options,
                                     categories=[Category(i + 1, c["id"], c["name"]) for i, c in enumerate(cats)])
    # A second photo of another size and aspect (coco128's 640x426) where present.
    second = shared_data / "coco128" / "images" / "000000000025.jpg"
    if not second.is_file():
        second = photo.parent / "0.jpg"
    status = _export_cli(["--checkpoint", str(ckpt), "--format", "onnx", "--out", str(tmp_path / "det.onnx"),
                          "--dynamic", "--check-images", str(photo), str(second)])
    stdout = capsys.readouterr().out
    print(stdout)
    assert status == 0, stdout
    lines = _parity_lines(stdout)
    box_lines = [line for line in lines if " boxes " in line]
    assert len(box_lines) == 2 and "tolerance 0.001" in stdout
    for line in box_lines:
        # "[image 0 600x800] boxes (100, 4): max abs 0.000916, rel 1.14e-06  ok; 100/100 eager detections paired"
        match = re.search(r"boxes \((\d+), 4\): max abs \S+, rel (\S+)  ok; (\d+)/(\d+) eager detections paired", line)
        assert match, line
        count, rel, paired, total = match.groups()
        assert int(count) > 0 and paired == total == count and float(rel) <= 1e-3


@pytest.mark.slow
def test_mask_rcnn_onnx_on_a_photo(tmp_path, photo):
    torch.manual_seed(0)
    detector = build_detector("mask_rcnn", backbone="resnet18-fpn", num_classes=4, min_size=320, max_size=512,
                              detections_per_img=20).eval()
    exported = export_onnx(detector, tmp_path / "mask.onnx", dynamic=True)
    assert exported.output_names == ("boxes", "scores", "labels", "masks")
    report = check_parity(detector, exported, inputs=parity_inputs("detector", images=[to_float_image(photo)]))
    print("\n".join(report.lines()))
    assert report.ok, report.lines()
