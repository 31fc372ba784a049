"""The exercises of lessons 01-03 run (MINIDIFF_EXERCISE=N, smoke mode), and a correct answer filled into each
fill-in function passes the lesson's own check, so the checks cannot go stale."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LESSONS = ROOT / "lessons"

# (lesson, exercise, the stub line to replace, a correct answer, what the run must print)
SOLUTIONS = [
    ("01_forward_process", "2", "    return None                 # replace with your one line",
     "    return np.cumprod(1 - betas)", "exercise 2: max |yours - NoiseSchedule(betas).alphas_cumprod|"),
    ("02_reverse_process", "1", "    return None                 # replace with your formula",
     "    abar, abar_prev = schedule.alphas_cumprod[t], schedule.alphas_cumprod[t - 1]\n"
     "    return (np.sqrt(abar_prev) * schedule.betas[t] * x0\n"
     "            + np.sqrt(schedule.alphas[t]) * (1 - abar_prev) * xt) / (1 - abar)",
     "exercise 1: correct at every t"),
    ("03_ddpm_2d", "2", "    return None                 # replace with your two lines",
     "    x0_hat = (x_t - (1 - abar_t) ** 0.5 * eps) / abar_t ** 0.5\n"
     "    return abar_prev ** 0.5 * x0_hat + (1 - abar_prev) ** 0.5 * eps", "exercise 2: your step matches"),
]
LESSON_NAMES = ("01_forward_process", "02_reverse_process", "03_ddpm_2d")


def _run(script, exercise, tmp_path):
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONUNBUFFERED="1", MINIDIFF_EXERCISE=exercise)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    result = subprocess.run([sys.executable, str(script), "--smoke", "--device", "cpu", "--out", str(tmp_path)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, \
        f"{script.name} exercise {exercise}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.mark.parametrize("lesson", LESSON_NAMES)
def test_every_exercise_runs_as_shipped(lesson, tmp_path):
    printed = _run(LESSONS / f"{lesson}.py", "1,2,3", tmp_path)
    for number in "123":
        assert f"exercise {number}:" in printed, f"{lesson}: exercise {number} printed nothing"


@pytest.mark.parametrize("lesson,exercise,stub,answer,expected", SOLUTIONS, ids=[s[0] for s in SOLUTIONS])
def test_a_correct_answer_passes_the_check(lesson, exercise, stub, answer, expected, tmp_path):
    source = (LESSONS / f"{lesson}.py").read_text(encoding="utf-8")
    assert source.count(stub) == 1, f"{lesson}: the stub line changed; update this test"
    script = tmp_path / f"{lesson}.py"                     # outside lessons/: minidiff is found from the cwd
    script.write_text(source.replace(stub, answer), encoding="utf-8")
    assert expected in _run(script, exercise, tmp_path)


@pytest.mark.parametrize("lesson,exercise,stub,answer,expected", SOLUTIONS[1:2], ids=["02_reverse_process"])
def test_a_wrong_answer_fails_the_check(lesson, exercise, stub, answer, expected, tmp_path):
    source = (LESSONS / f"{lesson}.py").read_text(encoding="utf-8")
    script = tmp_path / f"{lesson}.py"
    script.write_text(source.replace(stub, answer.replace("np.sqrt(schedule.alphas[t])", "schedule.alphas[t]")),
                      encoding="utf-8")
    env = dict(os.environ, MPLBACKEND="Agg", MINIDIFF_EXERCISE=exercise, OPENBLAS_NUM_THREADS="1")
    result = subprocess.run([sys.executable, str(script), "--smoke", "--device", "cpu", "--out", str(tmp_path)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "not yet" in result.stderr
