"""A folder of your own images: captions (file, names), modes, sizes, the errors, and load_data for every job."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from minidiff.datasets import folder
from minidiff.train.data import load_data, load_heldout


def save(path, array, mode=None):
    Image.fromarray(array, mode).save(path)
    return path


@pytest.fixture
def images(tmp_path):
    """Four images of different modes and shapes: RGB wide, grey tall, RGBA, 16-bit grey."""
    save(tmp_path / "red_circle_3.png", np.full((20, 40, 3), (255, 0, 0), np.uint8))
    save(tmp_path / "grey-square.png", np.full((30, 10), 128, np.uint8))
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[4:12, 4:12] = (0, 0, 255, 255)                     # opaque blue in the middle, clear around
    save(tmp_path / "blue_dot.png", rgba)
    save(tmp_path / "deep_grey.png", np.full((16, 16), 65535, np.uint16))
    return tmp_path


def test_file_names_become_captions():
    assert folder.caption_from_filename("red_circle_3.png") == "red circle"
    assert folder.caption_from_filename("a-big dog.JPG") == "a big dog"
    assert folder.caption_from_filename("0001.png") == ""


def test_every_mode_becomes_rgb_in_minus_one_to_one(images):
    x, texts = folder.load_captioned_folder(images, size=8)
    assert x.shape == (4, 3, 8, 8) and x.dtype == np.float32 and x.min() >= -1 and x.max() <= 1
    assert texts == ["blue dot", "deep grey", "grey square", "red circle"]            # name order
    blue, deep = x[0], x[1]
    np.testing.assert_allclose(blue[:, 0, 0], 1.0)                 # clear -> white
    assert blue[2, 4, 4] > 0.9 and blue[0, 4, 4] < -0.9             # opaque blue stays blue
    np.testing.assert_allclose(deep, 1.0)                            # 16-bit white is white
    grey = folder.load_folder(images, size=8, channels=1)
    assert grey.shape == (4, 1, 8, 8)


def test_captions_txt_wins_over_file_names_and_takes_tabs_or_commas(images):
    (images / "captions.txt").write_text("# mine\nred_circle_3.png\ta red ball\n\nblue_dot.png,a blue dot, small\n"
                                         "grey-square.png\tgrey\ndeep_grey.png\twhite\n")
    texts, source = folder.read_captions(images, folder.list_images(images))
    assert source == "captions.txt"
    assert texts == ["a blue dot, small", "white", "grey", "a red ball"]


def test_captions_csv_with_a_header(images):
    (images / "captions.csv").write_text('file,caption\nred_circle_3.png,"red, round"\nblue_dot.png,b\n'
                                         "grey-square.png,g\ndeep_grey.png,d\n")
    texts, _ = folder.read_captions(images, folder.list_images(images))
    assert texts == ["b", "d", "g", "red, round"]


@pytest.mark.parametrize("lines,message", [
    ("missing.png\tx\n", "names 'missing.png', which is not an image"),
    ("blue_dot.png\tx\nblue_dot.png\ty\n", "second caption"),
    ("blue_dot.png\t\n", "no caption for 'blue_dot.png'"),
    ("blue_dot.png\tx\n", "no caption for 3 image"),
])
def test_caption_file_errors_name_the_file_and_line(images, lines, message):
    (images / "captions.txt").write_text(lines)
    with pytest.raises(ValueError, match=message):
        folder.load_captioned_folder(images, size=8)


def test_empty_folder_unreadable_file_and_no_captions(tmp_path):
    with pytest.raises(ValueError, match="no images"):
        folder.load_captioned_folder(tmp_path)
    (tmp_path / "0001.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image .*0001.png"):
        folder.load_captioned_folder(tmp_path)
    save(tmp_path / "0001.png", np.zeros((8, 8, 3), np.uint8))
    assert folder.load_captioned_folder(tmp_path, size=4)[1] is None
    with pytest.raises(ValueError, match="has no captions .* add captions.txt"):
        folder.load_captioned_folder(tmp_path, need_captions=True)
    with pytest.raises(ValueError, match="has no captions"):
        load_data(f"folder:{tmp_path}", 8, 10, 0, need_captions=True)


def test_a_header_too_large_is_refused_before_decoding(tmp_path, monkeypatch):
    save(tmp_path / "big.png", np.zeros((40, 40, 3), np.uint8))
    monkeypatch.setattr(folder, "MAX_PIXELS", 1000)
    with pytest.raises(ValueError, match="40x40 pixels"):
        folder.load_folder(tmp_path)


def test_load_data_folder_positives_are_caption_equality(images):
    (images / "captions.txt").write_text("red_circle_3.png\tsame\nblue_dot.png\tsame\ngrey-square.png\tg\n"
                                         "deep_grey.png\td\n")
    data = load_data(f"folder:{images}", 16, 3, 0, channels=3, need_captions=True)
    assert data.images.shape == (3, 3, 16, 16) and data.captions == ["same", "d", "g"]
    assert data.shapes_labels is None and load_heldout(f"folder:{images}", 16, 4, 0) is None
    from minidiff.datasets.captions import label_matches
    match = label_matches(data.image_labels, data.said)
    np.testing.assert_array_equal(match, np.eye(3, dtype=bool))


def test_load_data_digits_is_train_split_and_heldout_is_apart():
    data = load_data("digits", 16, 40, 0, channels=3, need_captions=True)
    heldout = load_heldout("digits", 16, 40, 0, channels=3)
    assert data.images.shape == (40, 3, 16, 16) and heldout.images.shape == (40, 3, 16, 16)
    train_rows = {row.tobytes() for row in data.images}
    assert not any(row.tobytes() in train_rows for row in heldout.images)
    assert len(data.captions) == 40 and data.said.shape == (40, 3)


def test_bad_data_names_every_source():
    with pytest.raises(ValueError, match="'shapes', 'digits', 'folder:DIR' or 'idx:DIR'"):
        load_data("pictures", 16, 4, 0)


def test_cli_no_captions_for_clip_is_one_line_and_exit_2(tmp_path):
    save(tmp_path / "0001.png", np.zeros((8, 8, 3), np.uint8))
    done = subprocess.run([sys.executable, "-m", "minidiff", "train", "clip", "--data", f"folder:{tmp_path}",
                           "--steps", "1", "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert done.returncode == 2 and "has no captions" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
