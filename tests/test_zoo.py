"""The model zoo table and its CLI."""
import subprocess
import sys

from resnet_fpn.models import VARIANTS
from resnet_fpn.models.zoo import format_zoo_table, model_zoo_rows

from conftest import REPO


def test_resnet50_macs_match_torchvision_table():
    (row,) = model_zoo_rows(names=["resnet50"])
    # torchvision's documentation lists ResNet-50 at 4.09 GFLOPS (multiply-adds) at 224x224.
    assert round(row.gmacs, 2) == 4.09
    assert row.params == 25_557_032 and tuple(row.channels) == (256, 512, 1024, 2048)


def test_table_has_a_row_per_variant_and_cli_prints_it():
    rows = model_zoo_rows(names=["resnet18", "se_resnet50"])
    table = format_zoo_table(rows)
    assert "| resnet18 | 11,689,512 | 1.81 | 64/128/256/512 | torchvision |" in table
    assert "timm:seresnet50" in table
    out = subprocess.run([sys.executable, str(REPO / "tools" / "model_zoo.py")], capture_output=True, text=True,
                         check=True).stdout
    assert out.count("\n| ") == len(VARIANTS)  # one row per variant after the header (the first line)
