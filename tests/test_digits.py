"""The shipped digits: the file, the fixed held-out split, image sizes and channels, captions."""
import numpy as np
import pytest

from minidiff.datasets import captions, digits


def test_the_shipped_file_holds_500_digits_of_each_class_as_uint8():
    images, labels = digits.load_uint8("all")
    assert images.dtype == np.uint8 and images.shape == (5000, 28, 28)
    assert np.bincount(labels).tolist() == [500] * 10
    assert digits.DIGITS_FILE.stat().st_size < 2 * 2 ** 20


def test_heldout_is_the_last_50_of_each_class_and_never_in_train():
    train, train_labels = digits.load_uint8("train")
    heldout, heldout_labels = digits.load_uint8("heldout")
    everything, all_labels = digits.load_uint8("all")
    assert np.bincount(heldout_labels).tolist() == [50] * 10 and np.bincount(train_labels).tolist() == [450] * 10
    for d in range(10):
        np.testing.assert_array_equal(heldout[heldout_labels == d], everything[all_labels == d][-50:])
    train_rows = {row.tobytes() for row in train}
    assert not any(row.tobytes() in train_rows for row in heldout)


@pytest.mark.parametrize("size,channels", [(32, 1), (32, 3), (16, 3), (28, 1)])
def test_images_are_float32_nchw_in_minus_one_to_one(size, channels):
    x, labels = digits.load("heldout", size=size, channels=channels)
    assert x.dtype == np.float32 and x.shape == (500, channels, size, size) and labels.dtype == np.int64
    assert x.min() >= -1 and x.max() <= 1
    assert np.all(x[..., 0, 0] == -1)                 # the corner is background
    if channels == 3:
        np.testing.assert_array_equal(x[:, 0], x[:, 2])


def test_padding_to_32_keeps_the_28x28_pixels_in_the_middle():
    images, _ = digits.load_uint8("heldout")
    x = digits.to_images(images[:4], size=32)
    np.testing.assert_allclose(x[:, 0, 2:30, 2:30], images[:4] / 127.5 - 1, atol=1e-6)
    assert np.all(x[:, :, :2] == -1) and np.all(x[:, :, :, 30:] == -1)


def test_area_resize_keeps_the_mean_and_a_constant_image():
    x = np.random.default_rng(0).random((2, 1, 28, 28)).astype(np.float32)
    small = digits.area_resize(x, 16)
    np.testing.assert_allclose(small.mean(axis=(2, 3)), x.mean(axis=(2, 3)), rtol=1e-5)
    np.testing.assert_allclose(digits.area_resize(np.ones((1, 1, 28, 28), np.float32), 7), 1, rtol=1e-6)
    np.testing.assert_allclose(digits.area_resize(x, 14), x.reshape(2, 1, 14, 2, 14, 2).mean(axis=(3, 5)), atol=1e-6)


def test_count_draws_every_class_about_equally():
    _, labels = digits.load("train", count=200)
    assert len(labels) == 200 and np.bincount(labels, minlength=10).min() >= 10


def test_bad_split_and_channels_are_one_line_errors():
    with pytest.raises(ValueError, match="split"):
        digits.load("test")
    with pytest.raises(ValueError, match="channels"):
        digits.load(channels=2)


def test_measured_width_and_slant_order_synthetic_strokes():
    thin, thick = np.zeros((1, 28, 28), np.uint8), np.zeros((1, 28, 28), np.uint8)
    thin[0, 4:24, 13:14], thick[0, 4:24, 11:16] = 255, 255
    slanted = np.zeros((1, 28, 28), np.uint8)
    for row in range(4, 24):                        # the top leans right
        slanted[0, row, 20 - row // 2: 22 - row // 2] = 255
    width = digits.measure(np.concatenate([thin, thick]))["width"]
    assert width[0] < digits.THIN_WIDTH < digits.THICK_WIDTH < width[1]
    assert digits.measure(slanted)["shear"][0] > digits.SLANTED > abs(digits.measure(thin)["shear"][0])


def test_every_caption_names_its_digit_and_fits_its_own_image():
    images, labels = digits.load_uint8("heldout")
    texts, said, have = digits.captions_and_said(images, labels, seed=3)
    for text, digit in zip(texts, labels):
        assert str(digit) in text.split() or digits.NAMES[digit] in text.split()
    matches = captions.label_matches(have, said)
    assert matches.diagonal().all()
    assert not matches[labels[:, None] != labels[None, :]].any()      # never another digit
    assert texts == digits.captions_and_said(images, labels, seed=3)[0]
    words = " ".join(texts).split()
    assert {"thin", "thick", "slanted", "upright"} <= set(words)
