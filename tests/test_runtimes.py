"""optimize_for_inference's runtimes: the "auto" choice from the measured table, ONNX Runtime / OpenVINO called as
the torch model is, the parity check at first use and the fall-back to torch (with a warning naming why)."""
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from benchmarks.models import randomize_norm_statistics
from resnet_fpn import optimize_for_inference
from resnet_fpn.deploy import (FASTEST, InferenceWrapper, RuntimeModel, available_runtimes, check_runtime,
                               choose_runtime, compare_outputs, runtime_available)
from resnet_fpn.deploy import runtimes as runtimes_module
from resnet_fpn.machine import Machine

EXTERNAL = [r for r in ("onnxruntime", "openvino") if runtime_available(r)]
AVX512_BF16 = Machine("cpu", "Test EPYC", "AVX-512 + bf16", True)
AVX2 = Machine("cpu", "Test CPU", "AVX2", False)


class TinyBackbone(nn.Module):
    """Two levels of conv + BN + ReLU returning a dict, like build_backbone's (exports in a second)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())

    def forward(self, x):
        a = self.a(x)
        return OrderedDict([("0", a), ("1", self.b(a))])


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return randomize_norm_statistics(TinyBackbone().eval())


@pytest.fixture
def x():
    return torch.randn(1, 3, 32, 48, generator=torch.Generator().manual_seed(1))


def test_runtime_names_are_checked():
    assert check_runtime("openvino") == "openvino"
    with pytest.raises(ValueError, match=r"runtime must be one of \('auto', 'torch', 'onnxruntime', 'openvino'\), "
                                         r"got 'ORT'"):
        check_runtime("ORT")
    with pytest.raises(TypeError, match=r"runtime must be a str.*got int 1"):
        check_runtime(1)
    with pytest.raises(ValueError, match="needs a concrete runtime, not 'auto'"):
        runtime_available("auto")
    assert available_runtimes()[0] == "torch" and set(available_runtimes()) <= {"torch", *EXTERNAL}


def test_the_command_lines_offer_every_runtime():
    from resnet_fpn.cli import evaluate as cli_evaluate
    from resnet_fpn.deploy import RUNTIMES

    assert cli_evaluate.RUNTIMES == RUNTIMES


def test_auto_follows_the_measured_table(monkeypatch):
    # On the measured class, the first installed runtime of its row; the reason names the class and the order.
    monkeypatch.setattr(runtimes_module, "runtime_available", lambda r: r in ("torch", "onnxruntime"))
    name, reason = choose_runtime("auto", kind="backbone", dtype=None, device="cpu", machine=AVX512_BF16)
    assert FASTEST["AVX-512 + bf16"][("backbone", "fp32")][:2] == ("openvino", "onnxruntime")
    assert name == "onnxruntime" and "AVX-512 + bf16" in reason and "openvino not installed" in reason
    monkeypatch.setattr(runtimes_module, "runtime_available", lambda r: r == "torch")
    assert choose_runtime("auto", kind="backbone", dtype=None, device="cpu", machine=AVX512_BF16)[0] == "torch"
    # No table for the class: torch, said so.
    name, reason = choose_runtime("auto", kind="backbone", dtype=None, device="cpu", machine=AVX2)
    assert name == "torch" and "no measured table" in reason and "'AVX2'" in reason


@pytest.mark.parametrize("options, why", [
    ({"compile": True}, "compile=True is torch's"),
    ({"device": "cuda"}, "on cuda"),
    ({"dtype": torch.float16}, "float16"),
])
def test_auto_keeps_torch_where_the_runtimes_do_not_apply(options, why):
    kwargs = {"kind": "backbone", "dtype": None, "device": "cpu", "machine": AVX512_BF16, **options}
    name, reason = choose_runtime("auto", **kwargs)
    assert name == "torch" and why in reason


def test_named_runtime_that_cannot_run_is_an_error(monkeypatch):
    with pytest.raises(ValueError, match=r"runtime='onnxruntime' cannot run this model: onnxruntime offers no bf16"):
        choose_runtime("onnxruntime", kind="backbone", dtype=torch.bfloat16, device="cpu")
    with pytest.raises(ValueError, match=r"runtime='openvino' cannot run this model: the model is on cuda"):
        choose_runtime("openvino", kind="backbone", dtype=None, device="cuda")
    monkeypatch.setattr(runtimes_module, "runtime_available", lambda r: r == "torch")
    with pytest.raises(ValueError, match=r"openvino is not installed: pip install 'resnet_fpn\[openvino\]'"):
        choose_runtime("openvino", kind="backbone", dtype=None, device="cpu")


def test_default_on_an_unmeasured_class_is_the_torch_copy(monkeypatch, tiny, x, caplog):
    monkeypatch.setattr(runtimes_module, "this_machine", lambda device: AVX2)
    with caplog.at_level("INFO", logger="resnet_fpn.deploy"):
        fast = optimize_for_inference(tiny)
    assert isinstance(fast, InferenceWrapper) and fast.runtime == "torch" and "no measured table" in fast.choice
    assert "optimize_for_inference: torch (auto: no measured table" in caplog.text  # the choice is logged


@pytest.mark.parametrize("runtime", EXTERNAL)
def test_external_runtime_is_called_as_the_model_and_checked_at_first_use(runtime, tiny, x):
    fast = optimize_for_inference(tiny, runtime=runtime)
    assert isinstance(fast, RuntimeModel) and fast.runtime == runtime and fast.parity is None
    with torch.inference_mode():
        reference, out = tiny(x), fast(x)
        # Another batch and size: the file has dynamic axes.
        x2 = torch.randn(2, 3, 40, 24, generator=torch.Generator().manual_seed(2))
        reference2, out2 = tiny(x2), fast(x2)
    assert fast.runtime == runtime and fast.parity and all(d.ok for d in fast.parity)
    for ref, got in ((reference, out), (reference2, out2)):
        assert list(got) == list(ref) and all(got[k].shape == ref[k].shape for k in ref)
        assert all(torch.allclose(got[k], ref[k], rtol=0, atol=1e-4 * float(ref[k].abs().max())) for k in ref)


@pytest.mark.parametrize("runtime", EXTERNAL)
def test_a_runtime_failing_parity_falls_back_to_torch(runtime, tiny, x, monkeypatch):
    fast = optimize_for_inference(tiny, runtime=runtime)
    honest = fast.session.run
    monkeypatch.setattr(fast.session, "run", lambda a: [o * 1.01 for o in honest(a)])  # a 1% error
    with torch.inference_mode(), pytest.warns(UserWarning, match=rf"{runtime} .* failed its parity check against "
                                                                  r"torch \(tolerance 0\.0001\): 0: max rel 0\.01"):
        out = fast(x)
    assert fast.runtime == "torch" and "fell back to torch" in fast.choice
    with torch.inference_mode():
        assert all(torch.equal(out[k], v) for k, v in fast.fallback(x).items())
        assert all(torch.equal(out[k], v) for k, v in fast(x).items())  # later calls: torch, no new warning


@pytest.mark.parametrize("runtime", EXTERNAL)
def test_a_runtime_raising_falls_back_to_torch(runtime, tiny, x, monkeypatch):
    fast = optimize_for_inference(tiny, runtime=runtime)

    def broken(a):
        raise RuntimeError("no kernel for this shape")

    monkeypatch.setattr(fast.session, "run", broken)
    with torch.inference_mode(), pytest.warns(UserWarning, match=r"raised RuntimeError: no kernel for this shape"):
        out = fast(x)
    assert fast.runtime == "torch" and list(out) == ["0", "1"]


@pytest.mark.parametrize("runtime", EXTERNAL)
def test_a_model_that_cannot_be_exported_runs_in_torch(runtime, x):
    class ListOut(nn.Module):  # export takes dicts or tensors only
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, images):
            return [self.conv(images)]

    with pytest.warns(UserWarning, match=rf"{runtime} could not load this model \(TypeError: cannot export a "
                                         r"backbone returning list"):
        fast = optimize_for_inference(ListOut().eval(), runtime=runtime)
    assert isinstance(fast, InferenceWrapper) and "fell back to torch" in fast.choice


@pytest.mark.parametrize("runtime", EXTERNAL)
def test_a_module_returning_a_tensor_still_returns_a_tensor(runtime, x):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    with torch.no_grad():
        randomize_norm_statistics(model)
    fast = optimize_for_inference(model, runtime=runtime)
    with torch.inference_mode():
        out, ref = fast(x), model(x)
    assert isinstance(out, torch.Tensor) and out.shape == ref.shape and fast.runtime == runtime


def test_compare_outputs_checks_its_arguments():
    ref = {"0": np.ones((1, 2), np.float32)}
    assert compare_outputs("backbone", ref, {"0": ref["0"] * 1.5}, 1e-3)[0].ok is False
    with pytest.raises(ValueError, match=r"kind must be 'backbone' or 'detector', got 'neck'"):
        compare_outputs("neck", ref, ref, 1e-3)
    with pytest.raises(ValueError, match=r"outputs \['0'\] missing from the run compared \(it has \['1'\]\)"):
        compare_outputs("backbone", ref, {"1": ref["0"]}, 1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("runtime", EXTERNAL)
def test_detector_in_a_runtime_keeps_the_outputs_contract(runtime):
    from resnet_fpn import build_detector

    torch.manual_seed(0)
    detector = build_detector("faster_rcnn", backbone="resnet18-fpn", num_classes=91, norm="frozen_bn",
                              min_size=256, max_size=320, score_thresh=0.0).eval()
    randomize_norm_statistics(detector)
    fast = optimize_for_inference(detector, runtime=runtime)
    assert isinstance(fast, RuntimeModel) and fast.transform.min_size == detector.transform.min_size
    images = [torch.rand(3, 240, 320, generator=torch.Generator().manual_seed(1)),
              torch.rand(3, 200, 260, generator=torch.Generator().manual_seed(2))]
    with torch.inference_mode():
        ref, out = detector(images), fast(images)
    assert fast.runtime == runtime and all(d.ok for d in fast.parity)
    for r, o in zip(ref, out):
        assert set(o) == set(r) and o["labels"].dtype == torch.int64
        diffs = compare_outputs("detector", {k: v.numpy() for k, v in r.items()},
                                {k: v.numpy() for k, v in o.items()}, 1e-3)
        assert all(d.ok for d in diffs), [d.note for d in diffs]
