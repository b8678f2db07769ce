"""The benchmarks/ harness: settings checks, alternating timing, agreement measures, machine classes, the report
and its per-machine-class sections, the evaluator backends through the public evaluation API."""
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks.__main__ import DOCS_REPORT, main
from benchmarks.agreement import compare_detections, max_relative_difference, max_relative_loss_difference
from benchmarks.machine import cpu_flags, cpu_model, machine_class, machine_info
from benchmarks.memory import measure_peak_memory
from benchmarks.report import PREAMBLE, SECTION_PREFIX, format_section, replace_section, split_sections, write_report
from benchmarks.results import EvaluatorRow, MemoryRow, RunResult, TimingRow
from benchmarks.settings import CASES, BenchmarkSettings
from benchmarks.timing import alternation_order, time_alternating

REPO = Path(__file__).resolve().parents[1]


def test_settings_are_checked():
    assert BenchmarkSettings().inference_size == (800, 1216) and BenchmarkSettings().train_size == 512
    quick = BenchmarkSettings(quick=True, repeats=5, slow_repeats=2)
    assert quick.inference_size == (128, 192) and quick.train_size == 128
    assert quick.repeats_for(slow=False) == 5 and quick.repeats_for(slow=True) == 2
    assert BenchmarkSettings(repeats=3, slow_repeats=None).repeats_for(slow=True) == 3
    with pytest.raises(ValueError, match=r"repeats must be a positive int, got 0"):
        BenchmarkSettings(repeats=0)
    with pytest.raises(ValueError, match=r"threads must be a positive int, got True"):
        BenchmarkSettings(threads=True)
    with pytest.raises(ValueError, match=r"slow_repeats must be a positive int, got 0"):
        BenchmarkSettings(slow_repeats=0)
    with pytest.raises(ValueError, match=r"cases must be a non-empty subset of .*'backbone'.*got \['gpu'\]"):
        BenchmarkSettings(cases=("gpu",))
    with pytest.raises(ValueError, match=r"cases must be a non-empty subset"):
        BenchmarkSettings(cases=())
    with pytest.raises(ValueError, match=r"got the string 'backbone'"):
        BenchmarkSettings(cases="backbone")


def test_alternation_order_reverses_every_repeat():
    assert alternation_order(["a", "b", "c"], 3) == [["a", "b", "c"], ["c", "b", "a"], ["a", "b", "c"]]
    assert alternation_order(["a"], 2) == [["a"], ["a"]]


def test_time_alternating_measures_in_alternating_order_with_the_timer_threads():
    calls, threads = [], []

    def candidate(name, seconds):
        def call():
            calls.append(name)
            threads.append(torch.get_num_threads())
            time.sleep(seconds)
        return call

    before = torch.get_num_threads()
    times = time_alternating({"slow": candidate("slow", 0.05), "fast": candidate("fast", 0.001)},
                             repeats=3, num_threads=1)
    # Each measurement is Timer.blocked_autorange(min_run_time=0): one untimed call sizing the block (the
    # warm-up), then one timed call. Repeats: slow fast / fast slow / slow fast.
    assert calls == ["slow"] * 2 + ["fast"] * 4 + ["slow"] * 4 + ["fast"] * 2
    assert set(threads) == {1} and torch.get_num_threads() == before
    assert [len(v) for v in times.values()] == [3, 3]
    assert min(times["slow"]) >= 0.05 and sorted(times["fast"])[1] < 0.05
    with pytest.raises(ValueError, match=r"repeats must be a positive int, got 0"):
        time_alternating({"a": lambda: None}, repeats=0, num_threads=1)
    with pytest.raises(ValueError, match=r"candidates must name at least one callable"):
        time_alternating({}, repeats=1, num_threads=1)


def test_max_relative_difference_is_per_level():
    ref = {"0": torch.tensor([1.0, -4.0]), "1": torch.tensor([100.0, 0.0])}
    ours = {"0": torch.tensor([1.0, -3.0]), "1": torch.tensor([100.0, 1.0])}
    # level "0": 1 / 4; level "1": 1 / 100. A global scale (100) would report 0.01 and hide the first.
    assert max_relative_difference(ours, ref) == pytest.approx(0.25)
    assert max_relative_difference(ref, ref) == 0.0
    with pytest.raises(ValueError, match=r"outputs differ in keys: \['0'\] vs \['0', '1'\]"):
        max_relative_difference({"0": ref["0"]}, ref)
    with pytest.raises(ValueError, match=r"level '1': shape \(3,\) vs \(2,\)"):
        max_relative_difference({"0": ref["0"], "1": torch.zeros(3)}, ref)


def test_detection_and_loss_differences():
    theirs = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [500.0, 500.0, 1000.0, 1000.0]]),
              "labels": torch.tensor([1, 2])}
    ours = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.5], [500.0, 500.0, 1000.0, 1001.0]]),
            "labels": torch.tensor([1, 3])}
    diff, text = compare_detections(ours, theirs)
    assert diff == pytest.approx(0.5)  # the label-2 detection has no partner: not paired with the label-3 one
    assert text == "2 vs 2 detections, 1 paired by label and box, 1 without a partner of their label, " \
                   "max relative box difference 5.0e-02"
    # Swapped ranks (tied scores) are no disagreement.
    swapped = {"boxes": theirs["boxes"].flip(0), "labels": theirs["labels"].flip(0)}
    assert compare_detections(swapped, theirs) == (0.0, "2 vs 2 detections, 2 paired by label and box, "
                                                        "max relative box difference 0.0e+00")
    assert max_relative_loss_difference({"a": 1.1, "b": 2.0}, {"a": 1.0, "b": 2.0}) == pytest.approx(0.1)
    with pytest.raises(ValueError, match=r"loss names differ: \['a'\] vs \['a', 'b'\]"):
        max_relative_loss_difference({"a": 1.0}, {"a": 1.0, "b": 2.0})


CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse avx avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
"""


def test_machine_class_from_cpu_flags():
    assert cpu_model(cpuinfo=CPUINFO) == "Intel(R) Xeon(R) Platinum 8480+"
    flags = cpu_flags(cpuinfo=CPUINFO)
    assert {"avx2", "avx512f", "amx_tile"} <= flags and "flags" not in flags
    assert machine_class(flags) == "AMX"
    assert machine_class(frozenset({"avx2", "avx512f", "avx512_bf16"})) == "AVX-512 + bf16"
    assert machine_class(frozenset({"avx2", "avx512f"})) == "AVX-512"
    assert machine_class(frozenset({"avx", "avx2"})) == "AVX2"
    assert machine_class(cpu_flags(cpuinfo="Features\t: fp asimd bf16 sve\n"), machine="aarch64") == "aarch64 CPU"
    assert machine_class(frozenset(), machine="x86_64") == "x86_64 CPU"


def test_machine_info_names_what_the_report_needs():
    info = machine_info(2, "python -m benchmarks --quick")
    for key in ("machine class", "cpu", "cpu flags", "native bf16 (oneDNN)", "threads", "python", "torch",
                "torchvision", "date", "command"):
        assert info[key], key
    assert info["threads"] == "2" and info["command"] == "python -m benchmarks --quick"
    assert info["torch"] == torch.__version__
    if Path("/proc/cpuinfo").is_file():
        assert info["machine class"] == machine_class(cpu_flags())
        assert info["cpu flags"].startswith("avx2 ") or "CPU" in info["machine class"]


def _result(machine_class_name: str, backbone_s: float = 0.9) -> RunResult:
    machine = {"machine class": machine_class_name, "cpu": "Test CPU", "threads": "2",
               "command": "python -m benchmarks"}
    return RunResult(
        machine=machine,
        sizes="full: inference 800x1216 batch 1",
        timings=[
            TimingRow("backbone fp32", "torchvision fp32 eager", "ours optimized fp32", [1.9, 1.8, 1.7],
                      [backbone_s, 1.0, 0.8], 4e-6, "max rel / level", "optimize_for_inference(model)"),
            TimingRow("train mask_rcnn", "torchvision fp32", "ours fp32", [90.0], [94.5], 0.0, "max rel loss diff"),
        ],
        memory=[MemoryRow("backbone", "optimized fp32", [400.0, 400.3, 399.9], [300.0, 300.1, 300.4])],
        evaluator=[EvaluatorRow("bbox", "pycocotools", [0.6, 0.7], 0.65, 0.0),
                   EvaluatorRow("bbox", "faster_coco_eval", [0.08, 0.09], 0.65, 1.1e-16)],
        skipped=["evaluator: coco_val2014_100 not found at /nowhere"],
    )


def test_report_shows_figures_and_ratios():
    section = format_section(_result("AVX2"))
    assert section.startswith(f"{SECTION_PREFIX}AVX2\n")
    assert "- cpu: Test CPU" in section and "- command: `python -m benchmarks`" in section
    assert "| case | torchvision | ours | torchvision s | ours s | speed-up | difference |" in section
    assert ("| backbone fp32 | torchvision fp32 eager | ours optimized fp32 | 1.8 | 0.9 | 2.00x | "
            "4.0e-06 (max rel / level) |") in section
    assert ("| train mask_rcnn | torchvision fp32 | ours fp32 | 90 | 94.5 | 0.95x | "
            "0.0e+00 (max rel loss diff) |") in section
    assert "- backbone fp32, ours optimized fp32: optimize_for_inference(model)" in section
    piped = format_section(RunResult({"machine class": "AVX2"}, "quick", timings=[
        TimingRow("detector fp32", "torchvision", "ours", [1.0], [1.0], 0.5, "max |box diff| px")]))
    assert "| 1.00x | 5.0e-01 (max \\|box diff\\| px) |" in piped  # a "|" in a cell is escaped
    # medians 400.0 / 300.1; resolution: the larger spread (ours: 0.4)
    assert "| backbone | optimized fp32 | 400.0 | 300.1 | 0.750 | 0.4 |" in section
    assert "| bbox | faster_coco_eval | 0.085 | 7.65x | 1.1e-16 |" in section
    assert "Skipped: evaluator: coco_val2014_100 not found at /nowhere" in section
    # Judgements are for the issues: no targets, no met / agrees / no-higher columns.
    for word in ("target", "met", "agrees", "no higher", "identical"):
        assert word not in section.lower().replace("metric", ""), word


def test_section_replacement_keeps_the_other_machine_classes(tmp_path):
    # The real report parses into one section per machine class (whatever classes have been measured).
    names = [name for name, _ in split_sections(DOCS_REPORT.read_text())[1]]
    assert names and len(set(names)) == len(names)
    assert set(names) <= {"AVX2", "AVX-512", "AVX-512 + bf16", "AMX"} | {n for n in names if n.startswith("GPU")}

    path = tmp_path / "benchmarks.md"
    original = replace_section("", format_section(_result("AVX2", backbone_s=0.7)))
    path.write_text(original)
    _, before = split_sections(original)
    assert [name for name, _ in before] == ["AVX2"]
    avx2 = dict(before)["AVX2"]

    assert write_report(path, _result("AMX", backbone_s=0.9)) == "AMX"
    preamble, sections = split_sections(path.read_text())
    assert preamble.rstrip() == PREAMBLE.rstrip()
    assert [name for name, _ in sections] == ["AVX2", "AMX"]
    assert dict(sections)["AVX2"].rstrip() == avx2.rstrip()  # the other class, as it was

    write_report(path, _result("AMX", backbone_s=0.5))  # a new AMX run replaces the AMX section only
    _, sections = split_sections(path.read_text())
    assert [name for name, _ in sections] == ["AVX2", "AMX"]
    assert dict(sections)["AVX2"].rstrip() == avx2.rstrip()
    assert "| 1.8 | 0.8 | 2.25x |" in dict(sections)["AMX"] and "| 1.8 | 0.9 |" not in dict(sections)["AMX"]

    write_report(path, _result("AVX2"))  # and an AVX2 run replaces AVX2's, in place, keeping AMX's
    _, after = split_sections(path.read_text())
    assert [name for name, _ in after] == ["AVX2", "AMX"]
    assert dict(after)["AMX"] == dict(sections)["AMX"] and "Test CPU" in dict(after)["AVX2"]
    assert dict(after)["AVX2"] != avx2  # the AVX2 run's own figures replaced the earlier ones

    new_file = replace_section("", format_section(_result("GPU")))
    assert new_file.startswith(PREAMBLE.rstrip() + "\n\n## Machine class: GPU\n")
    with pytest.raises(ValueError, match=r"section must start with '## Machine class: '"):
        replace_section(original, "## AVX2\n")
    with pytest.raises(ValueError, match=r"two sections for machine class 'AMX'"):
        split_sections("# x\n## Machine class: AMX\na\n## Machine class: AMX\nb\n")


def test_memory_needs_linux_proc(monkeypatch):
    with pytest.raises(ValueError, match=r"repeats must be a positive int, got 0"):
        measure_peak_memory(BenchmarkSettings(quick=True), repeats=0)
    with pytest.raises(ValueError, match=r"cases must be a subset of .*got \['evaluator'\]"):
        measure_peak_memory(BenchmarkSettings(quick=True), ["evaluator"])
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(RuntimeError, match=r"Linux's /proc/self/status .* \(darwin\)"):
        measure_peak_memory(BenchmarkSettings(quick=True), ["backbone"])


def test_command_line_keeps_quick_figures_out_of_the_docs(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--quick", "--out", str(DOCS_REPORT)])
    assert exc.value.code == 2 and "--quick figures are a smoke run" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--repeats", "0", "--out", "/tmp/x.md"])
    assert exc.value.code == 2 and "repeats must be a positive int, got 0" in capsys.readouterr().err
    assert set(CASES) >= {"backbone", "detector", "memory", "evaluator"}


def test_evaluator_backends_agree_through_the_public_api(shared_data):
    from benchmarks.evaluator import COCO_VAL2014_100, benchmark_backends

    coco = shared_data / "coco_val2014_100"
    rows = benchmark_backends(coco / COCO_VAL2014_100["gt"], coco / COCO_VAL2014_100["bbox"], iou_type="bbox",
                              repeats=1, num_threads=1)
    assert [r.backend for r in rows] == ["pycocotools", "faster_coco_eval"]
    assert rows[0].max_abs_diff == 0.0 and rows[1].max_abs_diff <= 1e-12
    assert rows[0].speedup == 1.0 and all(len(r.times) == 1 and r.median_s > 0 for r in rows)
    with pytest.raises(ValueError, match=r"iou_type must be one of \('bbox', 'segm'\), got 'keypoints'"):
        benchmark_backends(coco / COCO_VAL2014_100["gt"], coco / COCO_VAL2014_100["bbox"], iou_type="keypoints",
                           repeats=1, num_threads=1)
    with pytest.raises(ValueError, match=r"backends must be a non-empty subset of .*got \['cocoapi'\]"):
        benchmark_backends(coco / COCO_VAL2014_100["gt"], coco / COCO_VAL2014_100["bbox"], iou_type="bbox",
                           repeats=1, num_threads=1, backends=["cocoapi"])


def test_mac_count_matches_torchvisions_published_figure_and_backbone():
    # torchvision's ResNet50_Weights meta "_ops" is 4.089 (GMACs at 224x224); ours has the same convolutions.
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    import resnet_fpn
    from benchmarks.roofline import count_macs

    x = torch.rand(1, 3, 224, 224)
    assert count_macs(lambda: resnet_fpn.build_resnet("resnet50").eval()(x)) == 4_089_184_256
    y = torch.rand(1, 3, 64, 96)
    theirs = resnet_fpn_backbone(backbone_name="resnet50", weights=None).eval()
    ours = resnet_fpn.build_backbone("resnet50-fpn").eval()
    assert count_macs(lambda: ours(y)) == count_macs(lambda: theirs(y)) > 0


def test_ceiling_row_is_the_mac_count_at_the_measured_matmul_rate():
    from benchmarks.roofline import CEILING_LABEL, ceiling_row, matmul_candidate

    assert matmul_candidate(8)().shape == (8, 8)
    # 100 GMACs at 2048^3 MACs per 0.05 s (171.8 GMAC/s) -> 0.582 s; torchvision's median 1.2 s runs at
    # 0.582 / 1.2 = 49% of that rate.
    row = ceiling_row("backbone fp32", "torchvision fp32 eager", [1.3, 1.2, 1.1], 100 * 10 ** 9,
                      [0.06, 0.05, 0.04])
    assert row.ours == CEILING_LABEL and row.diff is None
    assert row.ours_s == pytest.approx(100e9 * 0.05 / 2048 ** 3)
    assert row.speedup == pytest.approx(1.2 / 0.58208, rel=1e-4)
    assert "100.0 GMACs" in row.note and "172 GMAC/s" in row.note and "49% of that rate" in row.note
    assert "(torch.mm 2048x2048 fp32" in row.note
    assert ceiling_row("backbone fp32", "tv", [1.0], 8 * 10 ** 9, [0.5], matmul_size=1000).ours_s == pytest.approx(4.0)
    with pytest.raises(ValueError, match="must be positive, got 0"):
        ceiling_row("backbone fp32", "tv", [1.0], 0, [0.1])
    with pytest.raises(ValueError, match="at least one measurement"):
        ceiling_row("backbone fp32", "tv", [], 10, [0.1])
    with pytest.raises(ValueError, match="positive int, got 0"):
        matmul_candidate(0)


@pytest.mark.slow
def test_detector_bf16_case_times_torchvisions_autocast_ours_and_the_bf16_peers():
    from benchmarks.inference import benchmark_detector
    from resnet_fpn.deploy.runtimes import runtime_available

    rows, skipped = benchmark_detector(BenchmarkSettings(quick=True, repeats=1), bf16=True)
    expected = ["torchvision bf16 autocast", "ours optimized bf16, torch", "ours default bf16 (torch)"]
    if runtime_available("openvino"):
        expected.append(next(r.ours for r in rows if r.ours.startswith("peer: openvino")))
    assert [r.ours for r in rows] == expected
    assert all(r.case == "detector bf16" and r.reference == "torchvision fasterrcnn_resnet50_fpn fp32" for r in rows)
    assert all(r.speedup > 0 and r.diff_kind == "max abs box diff, px" for r in rows)
    # every row is measured against the same float32 call
    assert len({tuple(r.reference_times) for r in rows}) == 1
    if runtime_available("onnxruntime"):
        assert skipped == ["onnxruntime: no bf16 CPU kernels offered (bf16 row skipped)"]
