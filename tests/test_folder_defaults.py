"""A checkpoint folder's sampling defaults (pipeline.json): the shipped digits set samples at its
measured guidance scale out of the box; a damaged file is one clear line."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from minidiff import zoo
from minidiff.checkpoint import CheckpointError
from minidiff.pipeline import Pipeline

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "data" / "pretrained" / "digits"


def test_a_folder_without_pipeline_json_uses_the_default(tmp_path):
    assert zoo.folder_defaults(tmp_path) == {"guidance_scale": zoo.DEFAULT_GUIDANCE}


@pytest.mark.parametrize("text", ["{", '{"guidance_scale": "high"}', '{"guidance_scale": -1}', "[1, 2]",
                                  '{"guidance_scale": 1e9}', '{"guidance_scale": true}'])
def test_a_damaged_pipeline_json_is_a_checkpoint_error(tmp_path, text):
    (tmp_path / zoo.PIPELINE_FILE).write_text(text)
    with pytest.raises(CheckpointError, match="pipeline.json"):
        zoo.folder_defaults(tmp_path)


def test_the_digits_set_loads_with_its_own_guidance():
    assert json.loads((DIGITS / zoo.PIPELINE_FILE).read_text())["guidance_scale"] == 2.0
    pipe = Pipeline.load(DIGITS, device="cpu")
    assert pipe.default_guidance == 2.0
    assert Pipeline.load(zoo.PRETRAINED_DIR, device="cpu").default_guidance == zoo.DEFAULT_GUIDANCE
    images = pipe.text_to_image("the digit seven", steps=2)
    assert images[0].size == (32, 32)


def test_cli_refuses_a_damaged_pipeline_json_in_one_line(tmp_path):
    folder = tmp_path / "set"
    shutil.copytree(DIGITS, folder)
    (folder / zoo.PIPELINE_FILE).write_text('{"guidance_scale": "x"}')
    result = subprocess.run([sys.executable, "-m", "minidiff", "generate", "the digit one", "--checkpoints",
                             str(folder), "--steps", "2", "--out", str(tmp_path / "o.png"), "--device", "cpu"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2, result.stderr
    assert "pipeline.json" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o.png").exists()
