"""Evaluation: the Fréchet distance, prompt accuracy and the attribute classifier."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minidiff import evaluate as E
from minidiff import train
from minidiff.datasets import captions
from minidiff.models import classifier as C
from minidiff.datasets import shapes
from minidiff.nn.gradcheck import check_module
from minidiff.nn.module import Module


# -- Fréchet distance ------------------------------------------------------------------------------
def test_frechet_distance_of_identical_sets_is_zero():
    features = np.random.default_rng(0).standard_normal((300, 6)) @ np.diag([3.0, 1.0, 0.5, 0.1, 2.0, 1.0])
    assert E.frechet_distance_from_features(features, features) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_of_shifted_set_is_the_squared_shift():
    # same covariance (the second set is the first, moved), so FD = |mu_1 - mu_2|^2 exactly
    features = np.random.default_rng(1).standard_normal((500, 4))
    shift = np.array([0.5, -1.0, 2.0, 0.0])
    assert E.frechet_distance_from_features(features, features + shift) == pytest.approx(5.25, rel=1e-9)


def test_frechet_distance_of_diagonal_gaussians_matches_closed_form():
    # diagonal covariances: FD = |dmu|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    expected = 5.0 + (1 + 1 + 0)
    assert E.frechet_distance_from_statistics(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected)


def _spd_2x2(draw):
    m = np.array(draw(st.lists(st.floats(-2, 2), min_size=4, max_size=4))).reshape(2, 2)
    return m @ m.T + 0.05 * np.eye(2)


@st.composite
def gaussian_pairs(draw):
    return (np.array(draw(st.lists(st.floats(-3, 3), min_size=2, max_size=2))), _spd_2x2(draw),
            np.array(draw(st.lists(st.floats(-3, 3), min_size=2, max_size=2))), _spd_2x2(draw))


@settings(max_examples=25, deadline=None)
@given(gaussian_pairs())
def test_frechet_distance_matches_the_2x2_closed_form(pair):
    # for 2x2 matrices with a PSD square root: tr(sqrt(S1 S2)) = sqrt(tr(S1 S2) + 2 sqrt(det S1 det S2))
    mu1, s1, mu2, s2 = pair
    trace_sqrt = np.sqrt(np.trace(s1 @ s2) + 2 * np.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt
    assert E.frechet_distance_from_statistics(mu1, s1, mu2, s2) == pytest.approx(max(expected, 0), abs=1e-7)


def test_frechet_distance_matches_scipy():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((200, 5)), rng.standard_normal((150, 5)) * 1.5 + 0.3
    mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy_linalg.sqrtm(s1 @ s2).real)
    assert E.frechet_distance_from_features(a, b) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_in_classifier_features_grows_with_a_difference():
    classifier = E.AttributeClassifier(E.ClassifierConfig.tiny(), seed=0)
    images = shapes.sample(48, seed=3, size=16)["images"]
    same = E.frechet_distance(images, images, classifier)
    darker = E.frechet_distance(images, np.clip(images - 0.5, -1, 1), classifier)
    assert same == pytest.approx(0.0, abs=1e-8)
    assert darker > 1e-4


def test_frechet_distance_rejects_too_few_features():
    with pytest.raises(ValueError, match="N >= 2"):
        E.frechet_distance_from_features(np.zeros((1, 3)), np.zeros((5, 3)))


# -- prompt accuracy ------------------------------------------------------------------------------
class FakeClassifier(Module):
    """Predicts the labels of ``scenes[i]`` for an image whose first pixel holds i."""

    def __init__(self, scenes):
        self.targets = E.class_targets(shapes.labels_from_attributes(scenes))

    def forward(self, x):
        rows = np.asarray(x[:, 0, 0, 0]).round().astype(int)
        logits = {}
        for name, classes, _ in E.HEADS:
            wanted = np.maximum(self.targets[name][rows], 0)
            logits[name] = np.eye(classes, dtype=np.float32)[wanted] * 10
        return logits


def _scene(**attributes):
    return shapes.validate_attributes(attributes)


def test_prompt_accuracy_needs_every_stated_attribute_right():
    cases = [  # (prompt, what the classifier sees)
        ("a red circle on the left", _scene(num_objects=1, shape="circle", colour="red", size="large", position="left")),
        ("a small red circle on the left", _scene(num_objects=1, shape="circle", colour="red", size="large",
                                                  position="left")),
        ("a blue square above a green triangle", _scene(num_objects=2, shape="square", colour="blue", size="small",
                                                        shape2="triangle", colour2="green", size2="small",
                                                        relation="above")),
        ("a blue square above a green triangle", _scene(num_objects=1, shape="square", colour="blue", size="small",
                                                        position="top")),
        ("a yellow triangle", _scene(num_objects=1, shape="triangle", colour="yellow", size="small", position="top")),
    ]
    prompts, scenes = zip(*cases)
    images = np.zeros((len(cases), 3, 4, 4), np.float32)
    images[:, 0, 0, 0] = np.arange(len(cases))
    accuracy, per_attribute = E.prompt_accuracy(images, prompts, FakeClassifier(scenes))
    assert accuracy == pytest.approx(3 / 5)                       # the wrong size and the missing object fail
    assert per_attribute["size"] == 0.0                           # stated once ("small"), predicted large
    assert per_attribute["num_objects"] == pytest.approx(4 / 5)
    assert per_attribute["relation"] == pytest.approx(1 / 2)
    assert per_attribute["colour"] == 1.0
    assert "position" in per_attribute and per_attribute["position"] == 1.0   # stated twice, both right


def test_prompt_accuracy_rejects_a_count_mismatch():
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        E.prompt_accuracy(np.zeros((2, 3, 4, 4), np.float32), ["a red circle"], FakeClassifier([]))


def test_prompt_accuracy_rejects_prompts_outside_the_grammar():
    scenes = [_scene(num_objects=1, shape="circle", colour="red", size="small", position="left")]
    with pytest.raises(ValueError, match="not in the shapes grammar"):
        E.prompt_accuracy(np.zeros((1, 3, 4, 4), np.float32), ["a cat"], FakeClassifier(scenes))


def test_fixed_prompts_parse_and_cover_the_vocabulary():
    parsed = [shapes.parse_caption(p) for p in E.FIXED_PROMPTS]
    assert 30 <= len(E.FIXED_PROMPTS) <= 60
    for key, vocabulary in (("colour", shapes.COLOURS), ("shape", shapes.SHAPES), ("position", shapes.POSITIONS),
                            ("relation", shapes.RELATIONS)):
        assert {p[key] for p in parsed if p[key]} == set(vocabulary), key
    assert {(p["colour"], p["shape"]) for p in parsed} >= {(c, s) for c in shapes.COLOURS for s in shapes.SHAPES}


# -- the classifier -------------------------------------------------------------------------------
class Tupled(Module):
    """The classifier with a tuple of logits (HEAD_NAMES order), the form check_module expects."""

    def __init__(self, classifier):
        self.classifier = classifier

    def forward(self, x):
        logits = self.classifier.forward(x)
        return tuple(logits[name] for name in E.HEAD_NAMES)

    def backward(self, d_logits):
        return self.classifier.backward(dict(zip(E.HEAD_NAMES, d_logits)))


def test_classifier_backward_matches_finite_differences():
    classifier = E.AttributeClassifier(E.ClassifierConfig.tiny(), seed=0)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 8, 8))
    report = check_module(Tupled(classifier), [x], max_coords=12)
    assert report.max_error < 1e-6, report


def test_arrange_batch_puts_one_object_scenes_first():
    batch = shapes.sample(40, seed=4, size=16)
    images, targets, num_single = E.arrange_batch(batch["images"], batch["labels"])
    assert num_single == int((batch["labels"]["num_objects"] == 1).sum())
    assert (targets["num_objects"][:num_single] == 0).all() and (targets["num_objects"][num_single:] == 1).all()
    assert (targets["position"][:num_single] >= 0).all() and (targets["relation"][num_single:] >= 0).all()
    first_single = int(np.flatnonzero(batch["labels"]["num_objects"] == 1)[0])
    np.testing.assert_array_equal(images[0], batch["images"][first_single])


def test_arrange_batch_refuses_a_missing_label():
    batch = shapes.sample(8, seed=5, size=16)
    labels = {k: v.copy() for k, v in batch["labels"].items()}
    labels["colour"][0] = -1
    with pytest.raises(ValueError, match="'colour' is absent"):
        E.arrange_batch(batch["images"], labels)


def test_classifier_loss_ignores_absent_labels():
    # one-object scenes only: the object-2 and relation heads get no gradient at all
    classifier = E.AttributeClassifier(E.ClassifierConfig.tiny(), seed=0)
    batch = shapes.sample(16, seed=6, size=16, two_object_fraction=0.0)
    images, targets, num_single = E.arrange_batch(batch["images"], batch["labels"])
    loss = E.classifier_loss(classifier, images, targets, num_single)
    assert np.isfinite(loss)
    heads = dict(zip(E.HEAD_NAMES, classifier.heads))
    assert not heads["relation"].weight.grad.any() and not heads["colour2"].weight.grad.any()
    assert heads["position"].weight.grad.any()


def test_adamw_steps_on_a_batch_lower_the_classifier_loss():
    from minidiff.optim import AdamW
    batch = shapes.sample(32, seed=8, size=16)
    images, targets, num_single = E.arrange_batch(batch["images"], batch["labels"])
    classifier = E.AttributeClassifier(E.ClassifierConfig.tiny(), seed=0)
    optimizer = AdamW(classifier, lr=1e-2)
    losses = []
    for _ in range(8):
        classifier.zero_grad()
        losses.append(float(E.classifier_loss(classifier, images, targets, num_single)))
        optimizer.step()
    assert losses[0] == pytest.approx(sum(np.log(c) for _, c, _ in E.HEADS), abs=0.5)   # chance at the start
    assert losses[-1] < losses[0] - 1.0, losses


def test_train_classifier_returns_an_eval_mode_model():
    classifier = train.train_classifier(steps=2, batch_size=8, device="cpu", config=E.ClassifierConfig.tiny(),
                                    dataset_size=32)
    assert isinstance(classifier, E.AttributeClassifier) and not classifier.training
    scores = E.classifier_accuracy(classifier, n=16)
    assert set(scores) == set(E.HEAD_NAMES) and all(0 <= v <= 1 for v in scores.values())


def test_match_size_pools_larger_and_repeats_smaller_images():
    images = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    pooled = E.match_size(images, 2)
    assert pooled.shape == (2, 3, 2, 2)
    assert pooled[0, 0, 0, 0] == pytest.approx(np.mean([0, 1, 4, 5]))
    grown = E.match_size(images, 8)
    assert grown.shape == (2, 3, 8, 8) and (grown[:, :, 2:4, 6:8] == images[:, :, 1:2, 3:4]).all()
    with pytest.raises(ValueError, match="classifier takes 3x3"):
        E.match_size(images, 3)


def test_classifier_heads_count_the_grammar_vocabulary():
    """The model's class counts are literal numbers (models/ knows no data): they must be the
    grammar's vocabulary sizes."""
    sizes = {"num_objects": 2, "shape": len(captions.SHAPES), "colour": len(captions.COLOURS),
             "size": len(captions.SIZES), "position": len(captions.POSITIONS), "shape2": len(captions.SHAPES),
             "colour2": len(captions.COLOURS), "size2": len(captions.SIZES), "relation": len(captions.RELATIONS)}
    assert {name: classes for name, classes, _ in C.HEADS} == sizes
    assert tuple(name for name, _, _ in C.HEADS) == tuple(k for k in captions.LABEL_KEYS)


def _shipped_judge():
    return E.load_classifier()


def test_categories_of_true_renders_are_all_right_and_a_flipped_layout_fails_only_its_relation():
    """True renders of the category prompts score 100% in every category (the judge's ceiling);
    renders with the relation flipped fail every relation category but keep colour-shape binding."""
    judge = _shipped_judge()
    prompts = list(captions.CATEGORY_PROMPTS)
    truth = np.stack([shapes.render(shapes.parse_caption(p), 32, rng=(0, i)) for i, p in enumerate(prompts)])
    table = E.accuracy_by_category(truth, prompts, judge)
    assert list(table) == ["single/colour", "single/shape", "single/size", "single/position",
                           "relation/above", "relation/below", "relation/to the left of",
                           "relation/to the right of", "binding", "overall"]
    assert all(acc >= 0.97 for acc, _ in table.values()), table
    assert all(n == 10 for name, (_, n) in table.items() if name.startswith("relation/"))
    flipped = np.stack([shapes.render(captions.hard_negatives(shapes.parse_caption(p)).get(
        "flip_relation", shapes.parse_caption(p)), 32, rng=(0, i)) for i, p in enumerate(prompts)])
    table = E.accuracy_by_category(flipped, prompts, judge)
    assert all(table[f"relation/{r}"][0] <= 0.05 for r in captions.RELATIONS), table
    assert table["binding"][0] >= 0.95 and table["single/colour"][0] >= 0.97, table
    assert "relation/above" in E.format_categories({"mine": table})


def test_hard_negatives_change_only_order():
    scene = shapes.parse_caption("a small red circle above a blue square")
    negatives = captions.hard_negatives(scene)
    say = lambda a: captions.caption_for(a, 0, 0.0, 0.0)          # noqa: E731
    assert {k: say(a) for k, a in negatives.items()} == {
        "flip_relation": "a small red circle below a blue square",
        "swap_objects": "a blue square above a small red circle",
        "swap_colours": "a small blue circle above a red square"}
    same_colour = shapes.parse_caption("a red circle left of a red square")
    assert set(captions.hard_negatives(same_colour)) == {"flip_relation", "swap_objects"}
    assert captions.hard_negatives(shapes.parse_caption("a red circle on the left")) == {}


def test_relation_probe_reports_every_relation_and_kind():
    from minidiff.models.clip import CLIPConfig, MiniCLIP
    tokenizer = train.train_tokenizer(384, corpus_size=2000)
    model = MiniCLIP(CLIPConfig.quick(), seed=0).eval()
    probe = E.relation_probe(model, tokenizer, num_scenes=64)
    assert list(probe) == list(captions.RELATIONS)
    for kinds in probe.values():
        assert set(kinds) <= {"flip_relation", "swap_objects", "swap_colours"} and "flip_relation" in kinds
        assert all(0.0 <= acc <= 1.0 and n >= 1 for acc, n in kinds.values())
    assert sum(n for kinds in probe.values() for _, n in [kinds["flip_relation"]]) == 64


def test_a_caption_matches_the_picture_it_describes_whichever_object_it_names_first():
    scene = shapes.parse_caption("a yellow circle above a purple square")
    labels = captions.labels_from_attributes([scene])
    assert captions.caption_matches(labels, ["a purple square below a yellow circle",
                                             "a yellow circle above a purple square",
                                             "a purple square above a yellow circle"]).tolist() == [[True, True, False]]


# -- judging digits -------------------------------------------------------------------------------
class OracleDigitClassifier(Module):
    """A stand-in judge that 'predicts' a fixed digit per image (the logits peak at ``answers``)."""

    def __init__(self, answers, image_size=8):
        from minidiff.models.digit_classifier import DigitClassifierConfig
        self.config = DigitClassifierConfig(image_size=image_size, channels=(4,), stem_stride=1, num_groups=2,
                                            pool_grid=1)
        self.answers, self.seen = np.asarray(answers), 0
        from minidiff.nn.module import Parameter
        self.weight = Parameter(np.zeros(1, np.float32))

    def forward(self, x):
        rows = self.answers[self.seen:self.seen + len(x)]
        self.seen += len(x)
        return np.eye(10, dtype=np.float32)[rows]


def test_digit_accuracy_is_reported_by_digit_then_overall():
    asked = np.array([0, 0, 1, 1, 7])
    judge = OracleDigitClassifier([0, 3, 1, 1, 2])
    table = E.digit_accuracy(np.zeros((5, 3, 16, 16), np.float32), asked, judge)   # RGB at 16: grey, pooled to 8
    assert list(table) == ["0 zero", "1 one", "7 seven", "overall"]
    assert table["0 zero"] == (0.5, 2) and table["1 one"] == (1.0, 2) and table["7 seven"] == (0.0, 1)
    assert table["overall"] == (pytest.approx(0.6), 5)
    with pytest.raises(ValueError, match="5 images but 4 digits asked"):
        E.digit_accuracy(np.zeros((5, 1, 8, 8), np.float32), asked[:4], judge)


def test_digit_frechet_is_zero_for_the_same_digits_and_its_floor_is_above_zero():
    from minidiff.models.digit_classifier import DigitClassifier, DigitClassifierConfig
    judge = DigitClassifier(DigitClassifierConfig(image_size=16, channels=(8, 16), stem_stride=1, num_groups=4,
                                                  feature_dim=8), seed=0)
    real, _ = E.heldout_digits(40, size=16)
    assert E.digit_frechet(real, real, judge) == pytest.approx(0.0, abs=1e-6)
    floor = E.digit_frechet_floor(judge, 40)
    assert floor > 0
    blank = np.full_like(real, -1.0)
    assert E.digit_frechet(real, blank, judge) > floor      # empty images are farther than other real digits
    with pytest.raises(ValueError, match="the held-out split has 500 digits"):
        E.heldout_digits(501)
    _, labels = E.heldout_digits(25)
    np.testing.assert_array_equal(labels, np.arange(25) % 10)     # as digit_prompts asks for them


def test_digit_prompts_ask_for_every_digit_equally_and_name_it():
    from minidiff.datasets import digits
    prompts, asked = E.digit_prompts(30)
    assert np.bincount(asked).tolist() == [3] * 10
    for prompt, digit in zip(prompts, asked):
        assert str(digit) in prompt.split() or digits.NAMES[digit] in prompt.split(), prompt


@pytest.fixture(scope="module")
def digits_checkpoints(tmp_path_factory):
    """A folder laid out like `train all --data digits --out DIR`: tiny untrained models (16x16 images)."""
    import dataclasses
    from minidiff.checkpoint import save_checkpoint
    from minidiff.models.text_encoder import TextEncoder, TextEncoderConfig
    from minidiff.models.tokenizer import BPETokenizer
    from minidiff.models.unet import UNet, UNetConfig
    from minidiff.models.vae import AutoencoderKL, VAEConfig
    folder = tmp_path_factory.mktemp("digits")
    tokenizer = BPETokenizer.train(["a handwritten 7", "the digit seven", "a thick 3", "the number 0"], vocab_size=270)
    tokenizer.save(folder / "tokenizer.json")
    text = TextEncoderConfig(vocab_size=tokenizer.vocab_size, max_length=16, width=16, num_layers=1, num_heads=2,
                             mlp_ratio=2)
    save_checkpoint(folder / "text_encoder.npz", model=TextEncoder(text),
                    config={"job": "text_encoder", "model": dataclasses.asdict(text)})
    vae = VAEConfig(base_channels=8, channel_mults=(1, 2), norm_groups=4, image_size=16)
    save_checkpoint(folder / "vae.npz", model=AutoencoderKL(vae), config={"job": "vae", "model": dataclasses.asdict(vae)},
                    extra={"scale_factor": np.asarray(1.0), "complete": np.asarray(1)})
    unet = UNetConfig(in_channels=4, out_channels=4, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                      attention_levels=(1,), num_heads=2, context_dim=16, norm_groups=2, time_embed_dim=16, image_size=8)
    save_checkpoint(folder / "unet.npz", model=UNet(unet), config={
        "job": "text2image", "model": dataclasses.asdict(unet), "train": {"data": "digits"},
        "diffusion": {"schedule": "scaled_linear", "num_steps": 100, "prediction_type": "epsilon"}})
    return folder


def test_evaluate_of_a_digits_model_without_its_judge_names_the_train_command(digits_checkpoints):
    with pytest.raises(FileNotFoundError, match="train digit_classifier --out"):
        E.evaluate_checkpoint(digits_checkpoints / "unet.npz", num_images=4, steps=1, guidance_scales=(1.0,),
                              device="cpu", verbose=False)


def test_evaluate_of_a_digits_model_reports_accuracy_by_digit_and_fd_beside_the_floor(digits_checkpoints, tmp_path,
                                                                                      capsys):
    import dataclasses
    import shutil
    from minidiff.checkpoint import save_checkpoint
    from minidiff.models.digit_classifier import DigitClassifier, DigitClassifierConfig
    folder = tmp_path / "set"
    shutil.copytree(digits_checkpoints, folder)
    config = DigitClassifierConfig.tiny()
    save_checkpoint(folder / "digit_classifier.npz", model=DigitClassifier(config),
                    config={"job": "digit_classifier", "model": dataclasses.asdict(config)})
    results = E.evaluate_checkpoint(folder / "unet.npz", num_images=20, steps=1, guidance_scales=(1.0, 4.0),
                                    device="cpu")
    printed = capsys.readouterr().out
    assert results["data"] == "digits" and results["reference_fd"] > 0
    assert set(results["guidance"]) == {1.0, 4.0}
    by_digit = results["guidance"][4.0]["per_digit"]
    assert list(by_digit) == [f"{d} {name}" for d, name in enumerate(("zero", "one", "two", "three", "four", "five",
                                                                     "six", "seven", "eight", "nine"))] + ["overall"]
    assert all(count == 2 for _, count in list(by_digit.values())[:-1])
    assert "the floor" in printed and "9 nine" in printed and "held-out" in printed
    # a folder-trained model has no labels to judge by: one line
    from minidiff import zoo
    from minidiff.checkpoint import load_checkpoint
    save_checkpoint(folder / "folder_unet.npz", model=zoo.load_trained(folder / "unet.npz")[0], config={
        **load_checkpoint(folder / "unet.npz").config, "train": {"data": "folder:mine"}})
    with pytest.raises(ValueError, match="trained on --data folder:mine, whose images carry no labels"):
        E.evaluate_checkpoint(folder / "folder_unet.npz", num_images=4, steps=1, device="cpu", verbose=False)


def test_a_judge_reads_larger_images_at_its_own_size():
    """A convolutional judge takes any size without complaint; the judging functions pool a 64x64 image
    to the judge's 32x32 first (its twin at that size), so a 32x32 judge gives the same answer on both."""
    from minidiff.models.classifier import AttributeClassifier, ClassifierConfig
    judge = AttributeClassifier(ClassifierConfig.tiny(), seed=1)            # a 16x16 judge
    batch = shapes.sample(6, seed=3, size=32)
    pooled = E.match_size(batch["images"], 16)
    assert pooled.shape == (6, 3, 16, 16)
    np.testing.assert_allclose(E.classifier_features(judge, batch["images"]), E.classifier_features(judge, pooled))
    with pytest.raises(ValueError, match="the classifier takes 16x16"):
        E.classifier_features(judge, batch["images"][:, :, :24, :24])
