"""The resnet-fpn command: subcommands, the console script, one-line errors, the tools/ wrappers."""
import subprocess
import sys
from pathlib import Path

import pytest

from resnet_fpn.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]


def test_help_lists_every_subcommand(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert list(COMMANDS) == ["train", "eval", "infer", "export", "bench", "zoo", "check-data", "weights"]
    for name in COMMANDS:
        assert f"    {name} " in out or f"    {name}\n" in out  # a long name gets its help on the next line


def test_console_script_is_declared_and_installed():
    text = (REPO / "pyproject.toml").read_text()
    assert 'resnet-fpn = "resnet_fpn.cli:console_main"' in text
    script = Path(sys.executable).parent / "resnet-fpn"
    proc = subprocess.run([str(script), "zoo", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--markdown" in proc.stdout


def test_an_input_error_is_one_line_and_exit_2(tmp_path, capsys):
    missing = tmp_path / "nope.ckpt"
    status = main(["export", "--checkpoint", str(missing), "--format", "torchscript", "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert status == 2 and err == f"resnet-fpn export: error: checkpoint not found: {missing}\n"


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        main(["export", "--debug", "--checkpoint", str(tmp_path / "x.ckpt"), "--format", "torchscript",
              "--out", str(tmp_path / "m")])


def test_usage_errors_exit_2(capsys):
    assert main(["eval", "--results", "r.json"]) == 2
    assert "--results needs --gt" in capsys.readouterr().err
    assert main(["bench"]) == 2
    assert "give --backbone" in capsys.readouterr().err


@pytest.mark.parametrize("tool, command", [("train_det", "train"), ("eval_det", "eval"), ("infer", "infer"),
                                           ("export", "export"), ("model_zoo", "zoo"), ("profile_step", "bench")])
def test_tools_are_wrappers_of_the_command(tool, command):
    source = (REPO / "tools" / f"{tool}.py").read_text()
    assert f'main(["{command}", *sys.argv[1:]])' in source and "sys.path" not in source


def test_no_sys_path_edits_anywhere():
    offenders = [str(p.relative_to(REPO)) for folder in ("resnet_fpn", "tools", "benchmarks", "tests")
                 for p in (REPO / folder).rglob("*.py")
                 if "sys.path.insert" in p.read_text() and p.name != "test_cli.py"]
    assert offenders == []
