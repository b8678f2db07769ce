"""benchmarks/gpu_check.py (`make gpu-check`): its pieces fast, and the whole script in its CPU dry run (slow) so
that it cannot rot between the sessions that have a GPU."""
import pytest
import torch

from benchmarks import gpu_check
from benchmarks.gpu_check import GpuCheckSettings, GpuRow, format_gpu_section, synthetic_batch
from benchmarks.report import PREAMBLE, replace_block, replace_section, split_sections


def test_synthetic_batch_is_coco_like():
    images, targets = synthetic_batch(3, (64, 96), num_classes=5, masks=True, device="cpu")
    assert len(images) == len(targets) == 3 and all(i.shape == (3, 64, 96) for i in images)
    for t in targets:
        boxes = t["boxes"]
        assert 1 <= len(boxes) <= 8 and t["labels"].min() >= 1 and t["labels"].max() <= 4
        assert bool(((boxes[:, 2] - boxes[:, 0]) >= 8).all() and (boxes[:, 2] <= 96).all() and (boxes[:, 3] <= 64).all())
        assert t["masks"].shape == (len(boxes), 64, 96) and t["masks"].dtype == torch.uint8 and t["masks"].any()
    assert "masks" not in synthetic_batch(1, (64, 96), num_classes=5, masks=False, device="cpu")[1][0]


def test_settings_are_checked():
    assert GpuCheckSettings.for_run(dry_run=True).device == "cpu"
    with pytest.raises(ValueError, match=r"batch must be an int >= 1, got 0"):
        GpuCheckSettings.for_run(dry_run=True, batch=0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"no CUDA device: the GPU check needs one \(use --dry-run"):
            GpuCheckSettings.for_run(dry_run=False)


def test_section_goes_in_its_own_block_and_survives_a_benchmark_run():
    settings = GpuCheckSettings.for_run(dry_run=True)
    row = GpuRow("mask_rcnn", "train bf16 channels_last, batch 8", {"torchvision": 33.0, "ours": 41.25},
                 {"torchvision": 31.04, "ours": 30.5})
    assert row.speedup == 1.25
    section = format_gpu_section([row], settings, command="python -m benchmarks.gpu_check")
    assert section.startswith("## GPU check\n")
    assert "| mask_rcnn | train bf16 channels_last, batch 8 | 33.0 | 41.2 | 1.25x | 31.0 | 30.5 |" in section
    doc = replace_section("", "## Machine class: AVX2\n\nold\n")
    doc = replace_block(doc, section)
    doc = replace_block(doc + "\n## Scale\n\nscale text\n", section.replace("41.2", "42.0"))
    # The GPU block replaced in place; the machine-class section does not swallow it; a benchmark run keeps both.
    doc = replace_section(doc, "## Machine class: AVX2\n\nnew\n")
    assert doc.startswith(PREAMBLE.rstrip()) and doc.count("## GPU check") == 1 and "scale text" in doc
    assert "| 42.0 |" in doc and "41.2" not in doc
    assert dict(split_sections(doc)[1])["AVX2"].strip() == "## Machine class: AVX2\n\nnew"
    with pytest.raises(ValueError, match=r"block must start with a '## ' heading"):
        replace_block(doc, "GPU check\n")


def test_a_dry_run_never_writes_the_docs():
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main(["--dry-run", "--out", str(gpu_check.DOCS_REPORT)])
    assert exit_info.value.code == 2


@pytest.mark.slow
def test_dry_run_end_to_end(tmp_path, capsys):
    out = tmp_path / "bench.md"
    assert gpu_check.main(["--dry-run", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("## GPU check\n") and "(dry run)" in text
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith(("| faster_rcnn", "| mask_rcnn"))]
    assert len(rows) == 4  # per model: training, and fp32 inference (the dry run's only precision)
    for cells in rows:
        theirs, ours, ratio = float(cells[2]), float(cells[3]), float(cells[4].strip().rstrip("x"))
        assert theirs > 0 and ours > 0
        # the ratio of the unrounded rates: within what rounding each rate to 0.1 allows
        assert (ours - 0.05) / (theirs + 0.05) - 0.005 <= ratio <= (ours + 0.05) / (theirs - 0.05) + 0.005
        assert cells[5].strip() == cells[6].strip() == ""  # no GPU peak memory on the CPU
