"""Shared fixtures: the real COCO-format data beside the repository, and a quiet, fast torch."""
import os
from pathlib import Path

import pytest
import torch

# Two CPU cores on CI: more threads only contend.
torch.set_num_threads(min(2, torch.get_num_threads()))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (coco128, fruits_nuts, balloon, coco_val2014_100).

    Skipped where absent on a developer's machine; under CI (``CI=true``) a missing folder fails the test, so
    the suite cannot go green by skipping what it was meant to check.
    """
    return require_shared(SHARED_DATA)


def require_shared(path: Path) -> Path:
    """`path` (a file or folder of ../shared/data) if it exists; else skip, or fail under ``CI=true``."""
    if not path.exists():
        message = f"real data not found at {path}"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"{message}; CI must provide it (tests that need it would otherwise be skipped)")
        pytest.skip(message)
    return path
