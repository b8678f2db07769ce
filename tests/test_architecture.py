"""The package's layers import one way (docs/architecture.md draws them): checked from the source, not by hope.

Every ``import`` of every module of resnet_fpn (top-level and inside functions) is read with ``ast``; a unit may
import only the units listed for it below. The list is the map of docs/architecture.md, bottom to top.
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "resnet_fpn"

# unit -> the units it may import (besides itself). A unit is a top-level module or sub-package.
ALLOWED = {
    "files": set(),
    "coco_format": set(),
    "preprocessing": set(),
    "machine": set(),
    "detectron2_names": set(),
    # hub reads the variant table (models/variants.py, plain data) to know which timm architectures are ours.
    "hub": {"preprocessing", "files", "models"},
    "weights": {"preprocessing", "hub", "detectron2_names"},
    "models": {"weights"},
    "backbone": {"models", "weights", "hub"},
    "detectors": {"backbone", "models", "weights", "preprocessing", "hub"},
    "data": {"coco_format", "files"},
    "evaluation": {"coco_format", "files", "data"},
    "visualize": {"coco_format"},
    "checkpoint": {"backbone", "detectors", "weights", "coco_format", "files", "preprocessing"},
    "predictor": {"checkpoint", "coco_format", "data", "deploy"},
    "deploy": {"detectors", "backbone", "models", "weights", "files", "machine"},
    "evaluate": {"checkpoint", "data", "deploy", "evaluation", "tta"},
    # tta wraps any torchvision detector (its transform, torchvision.ops): nothing of the package.
    "tta": set(),
    "training": {"machine", "backbone", "detectors", "checkpoint", "coco_format", "data", "evaluation", "files", "visualize",
                 "tta"},
    "cli": {"machine", "preprocessing", "hub", "backbone", "models", "detectors", "checkpoint", "coco_format", "data", "evaluation", "evaluate",
            "deploy", "files", "predictor", "training", "visualize", "tta"},
}


def _unit(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imported_units(path: Path):
    """(line, unit) for every resnet_fpn unit `path` imports, relative or absolute."""
    module_parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if module_parts[-1] == "__init__":
        module_parts = module_parts[:-1]
    package_parts = module_parts if path.name == "__init__.py" else module_parts[:-1]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - node.level + 1]
                target = base + (node.module.split(".") if node.module else [])
                names = [target] if node.module else [base + [alias.name] for alias in node.names]
            else:
                names = [node.module.split(".")]
        elif isinstance(node, ast.Import):
            names = [alias.name.split(".") for alias in node.names]
        else:
            continue
        for parts in names:
            if parts[0] == "resnet_fpn" and len(parts) > 1:
                yield node.lineno, parts[1]


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py")


def test_every_unit_is_in_the_map():
    assert {_unit(p) for p in MODULES} == set(ALLOWED)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    unit = _unit(path)
    wrong = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}"
             for line, target in _imported_units(path) if target != unit and target not in ALLOWED[unit]]
    assert not wrong, f"{unit} may import only {sorted(ALLOWED[unit])}: " + "; ".join(wrong)


def test_the_checker_sees_relative_and_function_level_imports(tmp_path, monkeypatch):
    # A module placed as resnet_fpn/models/x.py importing the backbone two ways must be caught twice.
    fake = tmp_path / "resnet_fpn" / "models" / "x.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("def f():\n    from ..backbone import build_backbone\nimport resnet_fpn.detectors\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", tmp_path / "resnet_fpn")
    assert sorted(_imported_units(fake)) == [(2, "backbone"), (3, "detectors")]
