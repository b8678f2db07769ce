"""tools/benchmark.py's measurement helpers: settings checks, alternation, agreement, the report."""
import pytest
import torch

from resnet_fpn.deploy.benchmark import (
    CASES, BenchmarkSettings, MemoryRow, Row, format_report, max_relative_difference, time_alternating,
)


def test_settings_are_checked():
    assert BenchmarkSettings().backbone_size == (800, 1216) and BenchmarkSettings().train_size == 512
    assert BenchmarkSettings(quick=True).backbone_size == (128, 192)
    with pytest.raises(ValueError, match=r"repeats must be a positive int, got 0"):
        BenchmarkSettings(repeats=0)
    with pytest.raises(ValueError, match=r"cases must be a non-empty subset of .*'backbone'.*got \['gpu'\]"):
        BenchmarkSettings(cases=("gpu",))


def test_alternation_reverses_the_order_each_repeat():
    calls = []
    times = time_alternating({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1)
    # warm-up a b, then a b / b a / a b
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}


def test_max_relative_difference_is_per_level():
    ref = {"0": torch.tensor([1.0, -4.0]), "1": torch.tensor([100.0, 0.0])}
    ours = {"0": torch.tensor([1.0, -3.0]), "1": torch.tensor([100.0, 1.0])}
    # level "0": 1 / 4; level "1": 1 / 100. A global scale would hide the first.
    assert max_relative_difference(ours, ref) == pytest.approx(0.25)
    with pytest.raises(ValueError, match=r"outputs differ in keys: \['0'\] vs \['0', '1'\]"):
        max_relative_difference({"0": ref["0"]}, ref)
    with pytest.raises(ValueError, match=r"level '1': shape \(3,\) vs \(2,\)"):
        max_relative_difference({"0": ref["0"], "1": torch.zeros(3)}, ref)


def test_report_marks_targets():
    fast = Row("backbone fp32", "torchvision fp32 eager", "ours optimized fp32", 1.8, 0.9, diff=4e-6,
               diff_kind="max rel / level", target=1.8, agrees=True)
    wrong = Row("detector fp32", "torchvision", "ours optimized", 3.0, 2.0, diff=0.5, diff_kind="px",
                target=1.35, agrees=False)
    assert fast.speedup == 2.0 and fast.met and wrong.speedup == 1.5 and not wrong.met
    memory = [MemoryRow("backbone", 400.0, 300.0, "optimized fp32"),
              # equal networks: 0.2 MiB above the reference, inside a 0.3 MiB run-to-run spread -> not higher
              MemoryRow("train_mask_rcnn", 594.2, 594.4, "fp32 train step", resolution_mib=0.3),
              MemoryRow("train_faster_rcnn", 583.5, 590.0, "fp32 train step", resolution_mib=0.3)]
    report = format_report({"rows": [fast, wrong], "memory": memory, "evaluator": [],
                            "skipped": ["evaluator: not found"]})
    assert "| backbone fp32 | torchvision fp32 eager | ours optimized fp32 | 1.800 | 0.900 | 2.00x |" in report
    assert "| 1.35x | **no** |" in report
    assert "| backbone | optimized fp32 | 400.0 | 300.0 | 0.750 | 0.0 | yes |" in report
    assert "| train_mask_rcnn | fp32 train step | 594.2 | 594.4 | 1.000 | 0.3 | yes |" in report
    assert "| train_faster_rcnn | fp32 train step | 583.5 | 590.0 | 1.011 | 0.3 | **no** |" in report
    assert "Skipped: evaluator: not found" in report
    assert len(CASES) == 7
