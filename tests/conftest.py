"""Shared fixtures: the real COCO-format data beside the repository, and a quiet, fast torch."""
from pathlib import Path

import pytest
import torch

# Two CPU cores on CI: more threads only contend.
torch.set_num_threads(min(2, torch.get_num_threads()))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (coco128, fruits_nuts, balloon, coco_val2014_100); skipped where absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA
