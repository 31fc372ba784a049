"""Every lesson runs end to end in smoke mode (seconds), as a script and cell by cell the way a
notebook kernel runs it, so lessons never rot."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted((ROOT / "lessons").glob("[0-9][0-9]_*.py"))

# What a Jupyter kernel does with a lesson opened as a notebook: a fresh namespace, no __file__,
# the kernel's own argv, the notebook's folder as the working directory, one cell after another.
KERNEL = r"""
import sys
path = sys.argv[1]
sys.argv = ["ipykernel_launcher.py", "-f", "/tmp/kernel-0000.json"]
source = open(path, encoding="utf-8").read()
cells, current = [], []
for line in source.splitlines(keepends=True):
    if line.startswith("# %%") and current:
        cells.append("".join(current))
        current = []
    current.append(line)
cells.append("".join(current))
namespace = {"__name__": "__main__"}
for number, cell in enumerate(cells):
    exec(compile(cell, f"{path} [cell {number}]", "exec"), namespace)
print(f"ran {len(cells)} cells")
"""


def _env(tmp_path, **extra):
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONUNBUFFERED="1", **extra)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")      # tiny matrices: threads only add contention
    return env


@pytest.mark.parametrize("lesson", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_runs_in_smoke_mode(lesson, tmp_path):
    result = subprocess.run(
        [sys.executable, str(lesson), "--smoke", "--device", "cpu", "--out", str(tmp_path)],
        cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{lesson.name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert list(tmp_path.glob("*.png")), f"{lesson.name} saved no figure"


@pytest.mark.parametrize("lesson", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_runs_cell_by_cell_like_a_notebook_kernel(lesson, tmp_path):
    """MINIDIFF_LESSON picks the mode where no flag can be passed; figures go under MINIDIFF_OUTPUTS."""
    result = subprocess.run(
        [sys.executable, "-c", KERNEL, str(lesson)], cwd=ROOT / "lessons",
        env=_env(tmp_path, MINIDIFF_LESSON="smoke", MINIDIFF_DEVICE="cpu", MINIDIFF_OUTPUTS=str(tmp_path)),
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{lesson.name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert "ran " in result.stdout and list((tmp_path / lesson.stem).glob("*.png")), \
        f"{lesson.name} saved no figure under {tmp_path / lesson.stem}"
