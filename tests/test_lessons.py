"""Every lesson runs end to end in --smoke mode (seconds), so lessons never rot."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted((ROOT / "lessons").glob("[0-9][0-9]_*.py"))


@pytest.mark.parametrize("lesson", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_runs_in_smoke_mode(lesson, tmp_path):
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")      # tiny matrices: threads only add contention
    result = subprocess.run(
        [sys.executable, str(lesson), "--smoke", "--device", "cpu", "--out", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{lesson.name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert list(tmp_path.glob("*.png")), f"{lesson.name} saved no figure"
