"""The lesson helpers: how a lesson picks its mode, in a script and in a notebook kernel."""
import sys
import types

import pytest

from minidiff import utils


@pytest.fixture
def kernel(monkeypatch):
    """A __main__ without __file__, as in a Jupyter kernel or VS Code's interactive window."""
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))


def test_a_script_runs_full_unless_a_flag_or_the_environment_says_otherwise(monkeypatch):
    monkeypatch.delenv("MINIDIFF_LESSON", raising=False)
    assert utils.parse_lesson_args("t", ["--device", "cpu"]).mode == "full"
    assert utils.parse_lesson_args("t", ["--quick", "--device", "cpu"]).quick
    monkeypatch.setenv("MINIDIFF_LESSON", "smoke")
    args = utils.parse_lesson_args("t", ["--device", "cpu"])
    assert args.smoke and not args.quick and not args.full
    assert utils.parse_lesson_args("t", ["--full", "--device", "cpu"]).full      # a flag wins


def test_a_kernel_runs_quick_and_ignores_its_own_arguments(kernel, monkeypatch):
    monkeypatch.delenv("MINIDIFF_LESSON", raising=False)
    monkeypatch.setattr(sys, "argv", ["ipykernel_launcher.py", "-f", "/tmp/kernel.json"])
    monkeypatch.setenv("MINIDIFF_DEVICE", "cpu")
    assert utils.in_notebook()
    assert utils.parse_lesson_args("t").mode == "quick"


def test_a_script_rejects_unknown_arguments_and_a_bad_mode(monkeypatch):
    monkeypatch.delenv("MINIDIFF_LESSON", raising=False)
    with pytest.raises(SystemExit):
        utils.parse_lesson_args("t", ["--fast"])
    with pytest.raises(SystemExit):
        utils.parse_lesson_args("t", ["--quick", "--smoke"])
    monkeypatch.setenv("MINIDIFF_LESSON", "medium")
    with pytest.raises(SystemExit):
        utils.parse_lesson_args("t", ["--device", "cpu"])


def test_outputs_go_under_minidiff_outputs_when_set(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIDIFF_OUTPUTS", str(tmp_path))
    assert utils.output_dir("01_x") == tmp_path / "01_x" and (tmp_path / "01_x").is_dir()
    assert utils.output_dir("01_x", str(tmp_path / "mine")) == tmp_path / "mine"
