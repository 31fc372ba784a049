"""Data sets: captioned shapes (determinism, captions <-> labels, pixels where the caption says),
toy 2-D sets, IDX files, folders of images."""
import gzip
import struct

import numpy as np
import pytest

from minidiff.datasets import folder, idx, shapes, toy2d


@pytest.fixture(scope="module")
def scenes():
    """500 scenes, half of them with two objects."""
    return shapes.sample(500, seed=11, two_object_fraction=0.5)


# ------------------------------------------------------------------------------------ shapes
def test_shapes_same_seed_gives_identical_images_and_captions():
    first, again, other = shapes.sample(64, seed=3), shapes.sample(64, seed=3), shapes.sample(64, seed=4)
    np.testing.assert_array_equal(first["images"], again["images"])
    assert first["captions"] == again["captions"]
    for key in shapes.LABEL_KEYS:
        np.testing.assert_array_equal(first["labels"][key], again["labels"][key])
    assert not np.array_equal(first["images"], other["images"])
    assert first["captions"] != other["captions"]


@pytest.mark.parametrize("size", [32, 64])
def test_shapes_images_are_float32_nchw_in_minus_one_to_one(size):
    batch = shapes.sample(16, seed=0, size=size)
    images = batch["images"]
    assert images.dtype == np.float32 and images.shape == (16, 3, size, size)
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert len(batch["captions"]) == 16
    assert all(v.dtype == np.int64 and v.shape == (16,) for v in batch["labels"].values())


def test_shapes_64_is_the_32_scene_scaled_up():
    small, large = shapes.sample(32, seed=5)["images"], shapes.sample(32, seed=5, size=64)["images"]
    downsampled = large.reshape(32, 3, 32, 2, 32, 2).mean(axis=(3, 5))
    assert np.abs(downsampled - small).mean() < 0.01


def test_every_caption_parses_back_to_its_labels(scenes):
    named = {"size": 0, "position": 0}
    for i, caption in enumerate(scenes["captions"]):
        truth = shapes.attributes_from_labels(scenes["labels"], i)
        parsed = shapes.parse_caption(caption)
        assert shapes.matches_prompt(parsed, truth), (caption, parsed, truth)
        # shape and colour are always named; only size and position may be left out
        assert parsed["shape"] == truth["shape"] and parsed["colour"] == truth["colour"]
        assert parsed["shape2"] == truth["shape2"] and parsed["colour2"] == truth["colour2"]
        assert parsed["relation"] == truth["relation"]
        named["size"] += parsed["size"] is not None
        named["position"] += parsed["position"] is not None
    assert 0.5 * 500 < named["size"] < 0.9 * 500          # sizes omitted ~30% of the time
    one_object = int((scenes["labels"]["num_objects"] == 1).sum())
    assert 0.8 * one_object < named["position"] < one_object


def test_captions_vary_in_wording(scenes):
    captions = scenes["captions"]
    assert len(set(captions)) > 300
    for phrase in ("there is", "a picture of", "in the middle", "big", "little", "left of"):
        assert any(phrase in c for c in captions), phrase


@pytest.mark.parametrize("text, expected", [
    ("a red circle on the left", dict(num_objects=1, shape="circle", colour="red", position="left")),
    ("a small blue square at the top",
     dict(num_objects=1, shape="square", colour="blue", size="small", position="top")),
    ("  A Big ORANGE triangle in the middle. ",
     dict(num_objects=1, shape="triangle", colour="orange", size="large", position="center")),
    ("a yellow square", dict(num_objects=1, shape="square", colour="yellow")),
    ("a green circle above a large red square",
     dict(num_objects=2, shape="circle", colour="green", relation="above", shape2="square",
          colour2="red", size2="large")),
    ("there is a blue square left of an orange triangle",
     dict(num_objects=2, shape="square", colour="blue", relation="to the left of",
          shape2="triangle", colour2="orange")),
])
def test_parse_caption_reads_the_grammar(text, expected):
    assert shapes.parse_caption(text) == dict.fromkeys(shapes.LABEL_KEYS) | expected


@pytest.mark.parametrize("text", ["a pink circle", "a red dog on the left", "a red circle above",
                                  "red circle on the left", "a red circle on the left and a blue square", ""])
def test_parse_caption_rejects_text_outside_the_grammar(text):
    with pytest.raises(ValueError, match="not in the shapes grammar") as info:
        shapes.parse_caption(text)
    assert repr(text) in str(info.value)


def _colour_centre(image, colour_index, threshold=0.2):
    """(x, y) centre of the extent, and count, of the pixels within ``threshold`` of a palette
    colour (the extent, not the centre of mass: a triangle's mass sits low in its box)."""
    rgb = (image.transpose(1, 2, 0) + 1) / 2
    close = np.linalg.norm(rgb - shapes.RGB[colour_index], axis=-1) < threshold
    ys, xs = np.nonzero(close)
    return (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2, close.sum()


def test_single_object_colour_sits_at_the_named_position(scenes):
    labels, size = scenes["labels"], 32
    for i in np.flatnonzero(labels["num_objects"] == 1):
        x, y, count = _colour_centre(scenes["images"][i], labels["colour"][i])
        assert count > 20
        position = shapes.POSITIONS[labels["position"][i]]
        offset_x, offset_y = x - size / 2, y - size / 2
        expected = {"left": offset_x < -5 and abs(offset_y) < 3, "right": offset_x > 5 and abs(offset_y) < 3,
                    "top": offset_y < -5 and abs(offset_x) < 3, "bottom": offset_y > 5 and abs(offset_x) < 3,
                    "center": abs(offset_x) < 2 and abs(offset_y) < 2}[position]
        assert expected, (scenes["captions"][i], x, y)


def test_two_objects_stand_in_their_named_relation(scenes):
    labels = scenes["labels"]
    two = np.flatnonzero((labels["num_objects"] == 2) & (labels["colour"] != labels["colour2"]))
    assert len(two) > 150
    for i in two:
        x1, y1, _ = _colour_centre(scenes["images"][i], labels["colour"][i])
        x2, y2, _ = _colour_centre(scenes["images"][i], labels["colour2"][i])
        relation = shapes.RELATIONS[labels["relation"][i]]
        dx, dy = x1 - x2, y1 - y2      # subject minus reference; y grows downwards
        along, across = {"above": (-dy, dx), "below": (dy, dx),
                         "to the left of": (-dx, dy), "to the right of": (dx, dy)}[relation]
        assert along > 8 and abs(across) < along / 2, (scenes["captions"][i], dx, dy)


def test_objects_stay_inside_the_image_and_apart(scenes):
    boxes, labels = scenes["boxes"], scenes["labels"]
    first = boxes[:, 0]
    assert first.min() >= 0 and first.max() <= 32
    two = labels["num_objects"] == 2
    a, b = boxes[two, 0], boxes[two, 1]
    assert b.min() >= 0 and b.max() <= 32
    # the boxes are separated along x or along y: no overlap
    apart_x = (a[:, 2] <= b[:, 0]) | (b[:, 2] <= a[:, 0])
    apart_y = (a[:, 3] <= b[:, 1]) | (b[:, 3] <= a[:, 1])
    assert np.all(apart_x | apart_y)
    assert np.all(np.isnan(boxes[~two, 1]))


def test_two_objects_differ_in_colour_or_shape(scenes):
    labels = scenes["labels"]
    two = labels["num_objects"] == 2
    differ = (labels["colour"] != labels["colour2"]) | (labels["shape"] != labels["shape2"])
    assert np.all(differ[two])


def test_large_objects_are_clearly_larger_than_small_ones(scenes):
    widths = scenes["boxes"][:, 0, 2] - scenes["boxes"][:, 0, 0]
    size = scenes["labels"]["size"]
    assert widths[size == 1].min() > 1.4 * widths[size == 0].max()


def test_render_draws_a_parsed_prompt_where_it_says():
    prompt = shapes.parse_caption("a large red circle on the right")
    image = shapes.render(prompt, size=32, rng=0)
    assert image.shape == (3, 32, 32) and image.dtype == np.float32
    x, y, count = _colour_centre(image, shapes.COLOURS.index("red"))
    assert x > 21 and abs(y - 16) < 3 and count > 100     # a 14 px disc covers ~150 pixels


def test_render_rejects_words_outside_the_vocabulary():
    with pytest.raises(ValueError, match="colour='pink'"):
        shapes.render({"num_objects": 1, "shape": "circle", "colour": "pink"})


def test_labels_round_trip_through_attribute_dicts(scenes):
    labels = scenes["labels"]
    rows = [shapes.attributes_from_labels(labels, i) for i in range(len(scenes["captions"]))]
    again = shapes.labels_from_attributes(rows)
    for key in shapes.LABEL_KEYS:
        np.testing.assert_array_equal(again[key], labels[key])


def test_batches_are_an_endless_deterministic_stream():
    stream, again = shapes.batches(8, seed=2), iter(shapes.ShapesDataset(seed=2, batch_size=8))
    first = [next(stream) for _ in range(3)]
    second = [next(again) for _ in range(3)]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a["images"], b["images"])
        assert a["captions"] == b["captions"]
    assert not np.array_equal(first[0]["images"], first[1]["images"])


def test_caption_corpus_equals_the_captions_of_sample():
    assert shapes.caption_corpus(100, seed=7) == shapes.sample(100, seed=7)["captions"]


@pytest.mark.parametrize("kwargs", [dict(n=-1), dict(n=4, size=8), dict(n=4, two_object_fraction=1.5)])
def test_shapes_bad_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError, match="shapes:"):
        shapes.sample(**kwargs)


# ------------------------------------------------------------------------------------- toy2d
@pytest.mark.parametrize("name", sorted(toy2d.TOY_DATASETS))
def test_toy2d_is_deterministic_float32_and_unit_scale(name):
    points = toy2d.sample_toy(name, 4000, seed=1)
    np.testing.assert_array_equal(points, toy2d.sample_toy(name, 4000, seed=1))
    assert not np.array_equal(points, toy2d.sample_toy(name, 4000, seed=2))
    assert points.dtype == np.float32 and points.shape == (4000, 2)
    assert np.all(np.abs(points.mean(axis=0)) < 0.2)
    assert np.all((0.8 < points.std(axis=0)) & (points.std(axis=0) < 1.2))


def test_toy2d_unknown_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown data set 'spiral'"):
        toy2d.sample_toy("spiral", 10)


# --------------------------------------------------------------------------------------- idx
def _idx_bytes(array, type_code=0x08):
    return struct.pack(">BBBB", 0, 0, type_code, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape) + array.astype(idx.IDX_TYPES[type_code]).tobytes()


def test_idx_reader_round_trips_plain_and_gzipped_files(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    (tmp_path / "plain-idx3-ubyte").write_bytes(_idx_bytes(images))
    (tmp_path / "packed-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(images)))
    for name in ("plain-idx3-ubyte", "packed-idx3-ubyte.gz"):
        read = idx.read_idx(tmp_path / name)
        assert read.dtype == np.uint8
        np.testing.assert_array_equal(read, images)
    signed = np.array([[-3, 70000], [5, -1]], np.int32)
    np.testing.assert_array_equal(idx.parse_idx(_idx_bytes(signed, 0x0C)), signed)


@pytest.mark.parametrize("data, message", [
    (b"\x00\x00", "too short"),
    (b"PK\x03\x04rest", "not an IDX file"),
    (b"\x00\x00\x07\x01\x00\x00\x00\x01x", "unknown IDX element type 0x07"),
    (b"\x00\x00\x08\x03\x00\x00\x00\x02", "promises 3 dimensions"),
    (_idx_bytes(np.zeros((4, 3), np.uint8))[:-2], "truncated or corrupt"),
    (gzip.compress(b"abc")[:-5], "gzip data is corrupt"),
])
def test_corrupt_idx_files_raise_errors_naming_the_file(tmp_path, data, message):
    path = tmp_path / "broken-idx1-ubyte"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=message) as info:
        idx.read_idx(path)
    assert "broken-idx1-ubyte" in str(info.value)


def test_load_idx_dataset_pairs_images_with_labels_and_pads_to_32(tmp_path):
    images = np.zeros((3, 28, 28), np.uint8)
    images[:, 0, 0] = 255
    labels = np.array([7, 2, 1], np.uint8)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(images)))
    (tmp_path / "t10k-labels.idx1-ubyte").write_bytes(_idx_bytes(labels))
    read_images, read_labels = idx.load_idx_dataset(tmp_path, split="test")
    np.testing.assert_array_equal(read_labels, labels)
    x = idx.to_float_images(read_images, pad_to=32)
    assert x.shape == (3, 1, 32, 32) and x.dtype == np.float32
    assert x[0, 0, 2, 2] == 1.0 and x.min() == -1.0          # 28x28 centred: 2 pixels of padding
    assert np.all(x[:, :, :2] == -1.0)


def test_missing_idx_files_say_nothing_is_downloaded(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        idx.load_idx_dataset(tmp_path)


# ------------------------------------------------------------------------------------ folder
def test_load_folder_gives_rgb_squares_in_minus_one_to_one(tmp_path):
    from PIL import Image
    Image.new("RGB", (40, 20), (255, 0, 0)).save(tmp_path / "a_red.png")
    Image.new("L", (16, 30), 0).save(tmp_path / "b_black.jpg")
    Image.new("RGBA", (20, 20), (0, 0, 255, 0)).save(tmp_path / "c_clear.png")   # transparent -> white
    (tmp_path / "notes.txt").write_text("not an image")
    x = folder.load_folder(tmp_path, size=16)
    assert x.shape == (3, 3, 16, 16) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, :, 8, 8], [1, -1, -1], atol=0.02)
    np.testing.assert_allclose(x[1], -1, atol=0.02)
    np.testing.assert_allclose(x[2], 1, atol=0.02)


def test_load_folder_errors_for_empty_folders_and_unreadable_files(tmp_path):
    with pytest.raises(ValueError, match="no images"):
        folder.load_folder(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        folder.load_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        folder.load_folder(tmp_path / "missing")


def test_canonical_form_swaps_below_and_right_of_and_keeps_the_scene():
    batch = shapes.sample(400, seed=11)
    canonical = shapes.canonical_labels(batch["labels"])
    two = canonical["num_objects"] == 2
    assert set(np.unique(canonical["relation"][two])) <= {shapes.RELATIONS.index("above"),
                                                            shapes.RELATIONS.index("to the left of")}
    for i, caption in enumerate(batch["captions"]):
        prompt = shapes.canonical_attributes(shapes.parse_caption(caption))
        assert shapes.matches_prompt(prompt, shapes.attributes_from_labels(canonical, i)), caption
    swapped = shapes.canonical_attributes(shapes.parse_caption("a red circle below a blue square"))
    assert (swapped["colour"], swapped["relation"], swapped["colour2"]) == ("blue", "above", "red")
