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
    section = format_gpu_section([GpuRow("mask_rcnn", "train bf16 channels_last, batch 8", 41.25, 30.5)], settings,
                                 command="python -m benchmarks.gpu_check")
    assert section.startswith("## GPU check\n") and "| mask_rcnn | train bf16 channels_last, batch 8 | 41.2 | 30.5 |" in section
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
    rows = [line for line in text.splitlines() if line.startswith("| faster_rcnn") or line.startswith("| mask_rcnn")]
    assert len(rows) == 4 and all(float(r.split("|")[3]) > 0 for r in rows)
