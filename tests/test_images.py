"""Input images and masks: sizes refused from the header before decoding, damaged files and other
modes one ValueError, an all-black mask refused; images that are not numbers never become PNGs."""
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from minidiff import images
from minidiff.utils import NotFiniteImageError, to_uint8


def png_header(width, height, mode=2):
    """A PNG that claims ``width`` x ``height`` (colour type ``mode``: 2 = RGB) and holds almost no data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, mode, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 10))
            + chunk(b"IEND", b""))


def saved(tmp_path, array, name="x.png", **kwargs):
    path = tmp_path / name
    Image.fromarray(array, **kwargs).save(path)
    return path


def rgb(height=16, width=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_an_rgb_file_loads_as_one_image_in_minus_one_to_one(tmp_path):
    pixels = images.load_image(saved(tmp_path, rgb(8, 12)))
    assert pixels.shape == (1, 3, 8, 12) and pixels.dtype == np.float32 and -1 <= pixels.min() <= pixels.max() <= 1


@pytest.mark.parametrize("width, height", [(30000, 30000), (300, 300), (65537, 1)])
def test_too_many_pixels_are_refused_from_the_header_before_decoding(tmp_path, width, height):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header(width, height))          # its pixel data is missing: decoding would fail
    with pytest.raises(ValueError, match="over the limit of 65,536|more pixels than even PIL"):
        images.load_image(path)
    with pytest.raises(ValueError, match="over the limit of 65,536|more pixels than even PIL"):
        images.load_mask(path, (height, width))


def test_the_largest_allowed_image_loads(tmp_path):
    side = images.MAX_SIDE
    assert images.load_image(saved(tmp_path, rgb(side, side))).shape == (1, 3, side, side)
    with pytest.raises(ValueError, match="over the limit"):
        images.load_image(rgb(side + 1, side))


@pytest.mark.parametrize("cut", [0.2, 0.6, 0.95])
def test_a_truncated_file_is_one_clear_error(tmp_path, cut):
    path = saved(tmp_path, rgb(64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(ValueError, match="cannot read image"):
        images.load_image(path)


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\xff" * 40])
def test_a_file_that_is_not_an_image_is_one_clear_error(tmp_path, content):
    path = tmp_path / "x.png"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="cannot read image"):
        images.load_image(path)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "1", "I", "F", "CMYK"])
def test_an_image_of_another_mode_is_refused_not_guessed_at(tmp_path, mode):
    path = tmp_path / "x.tiff"
    Image.fromarray(rgb()).convert(mode).save(path)
    with pytest.raises(ValueError, match=f"image must be RGB, got mode '{mode}'"):
        images.load_image(path)


def test_an_empty_array_is_refused():
    with pytest.raises(ValueError, match="is empty"):
        images.load_image(np.zeros((0, 4, 3), np.uint8))


def test_a_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="image file .*nope.png not found"):
        images.load_image(tmp_path / "nope.png")
    with pytest.raises(FileNotFoundError, match="mask file .*nope.png not found"):
        images.load_mask(tmp_path / "nope.png", (4, 4))


def test_a_mask_is_white_to_repaint_in_any_mode(tmp_path):
    mask = np.zeros((8, 8), np.uint8)
    mask[2:4, 2:6] = 255
    for mode in ("L", "RGB", "RGBA", "1", "P"):
        path = tmp_path / f"mask_{mode}.png"
        Image.fromarray(mask).convert(mode).save(path)
        np.testing.assert_array_equal(images.load_mask(path, (8, 8)), mask / 255.0)


@pytest.mark.parametrize("mask", [np.zeros((8, 8), np.uint8), np.zeros((8, 8), bool), np.full((8, 8), 0.2)])
def test_an_all_black_mask_is_refused_nothing_to_repaint(mask):
    with pytest.raises(ValueError, match="no white pixel: nothing to repaint"):
        images.load_mask(mask, (8, 8))


def test_an_all_black_mask_file_is_refused(tmp_path):
    with pytest.raises(ValueError, match="nothing to repaint"):
        images.load_mask(saved(tmp_path, np.zeros((8, 8), np.uint8)), (8, 8))


def test_a_mask_of_strings_is_refused():
    with pytest.raises(ValueError, match="mask must be a"):
        images.load_mask(np.full((4, 4), "x"), (4, 4))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_an_image_that_is_not_a_number_never_becomes_pixels(bad):
    x = np.zeros((2, 3, 4, 4), np.float32)
    x[1, 2, 3, 0] = bad
    with pytest.raises(NotFiniteImageError, match="1 NaN or infinite values out of 96"):
        to_uint8(x)
    assert issubclass(NotFiniteImageError, FloatingPointError)


def test_a_png_round_trips_through_load_image(tmp_path):
    array = rgb(4, 8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    (tmp_path / "x.png").write_bytes(buffer.getvalue())
    np.testing.assert_array_equal(to_uint8(images.load_image(tmp_path / "x.png"))[0], array)
