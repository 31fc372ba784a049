"""The fine-tuning jobs (minidiff/train/finetune.py): the pink training data, the colour judge, and a
two-step lora run on the shipped U-Net that trains the adapters alone and writes a loadable adapter."""
import numpy as np
import pytest

from minidiff import zoo
from minidiff.datasets import shapes
from minidiff.datasets.captions import COLOURS, caption_for
from minidiff.train.config import make_config
from minidiff.train.finetune import LORA_FILE, colour_share, object_colours, run_lora


def test_pink_appears_only_when_asked_for():
    base = shapes.sample(64, seed=5)
    pink = shapes.sample(64, seed=5, extra_colours=("pink",), extra_fraction=0.5)
    assert not any("pink" in c for c in base["captions"])
    chosen = pink["labels"]["colour"] == len(COLOURS)
    assert 10 < chosen.sum() < 54
    assert all(("pink" in c) == bool(k) for c, k in zip(pink["captions"], chosen))
    # every scene that stayed in the base colours is the very image the base data has
    np.testing.assert_array_equal(pink["images"][~chosen], base["images"][~chosen])
    with pytest.raises(ValueError, match="not one of"):
        caption_for({"num_objects": 1, "shape": "circle", "colour": "pink"}, 0)


def test_the_colour_judge_reads_true_one_object_renders():
    pink = shapes.sample(48, seed=2, two_object_fraction=0.0, extra_colours=("pink",), extra_fraction=0.5)
    truth = pink["labels"]["colour"]
    assert np.mean(object_colours(pink["images"]) == truth) >= 0.95
    only_pink = pink["images"][truth == len(COLOURS)]
    assert colour_share(only_pink, "pink") >= 0.95


@pytest.mark.skipif(not (zoo.PRETRAINED_DIR / "unet.npz").is_file(), reason="needs the shipped models")
def test_lora_job_trains_the_adapters_alone_and_writes_them(tmp_path):
    from minidiff.zoo import load_adapter
    from minidiff.models.unet import UNet
    cfg = make_config("lora", "quick", {"steps": 2, "batch_size": 2, "dataset_size": 8, "log_every": 1})
    result = run_lora(cfg, out=tmp_path, progress=False)
    unet_before, _ = zoo.load_trained(cfg.unet)
    for (name, p), (_, q) in zip(result.unet.named_parameters(), unet_before.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)         # the U-Net never changed
    assert any(np.abs(p.data).max() > 0 for n, p in result.model.named_parameters() if n.endswith("lora_B"))
    path = tmp_path / LORA_FILE
    assert path.stat().st_size < 0.05 * (zoo.PRETRAINED_DIR / "unet.npz").stat().st_size * 2   # float32 vs float16
    fresh, _ = zoo.load_trained(cfg.unet)
    adapters = load_adapter(path, fresh)
    assert adapters.num_parameters() == result.model.num_parameters()
    with pytest.raises(ValueError, match="another model"):
        load_adapter(path, UNet(make_config("text2image", "quick").model))


def test_placeholder_prompts_put_the_placeholder_id_at_a_real_position():
    from minidiff.models.tokenizer import BPETokenizer
    from minidiff.train.finetune import PLACEHOLDER_ID, encode_with_placeholder, placeholder_captions
    tokenizer = BPETokenizer.train(shapes.caption_corpus(200, seed=0), 300)
    [text] = placeholder_captions(["a small pink circle on the left"])
    assert text == "a small <pink> circle on the left"
    ids, mask = encode_with_placeholder(tokenizer, [text, "a red circle"], 16)
    plain, plain_mask = tokenizer.encode("a small red circle on the left", 16)
    position = int(np.flatnonzero(ids[0] == PLACEHOLDER_ID)[0])
    assert mask[0, position]                                            # read as a real token
    red = tokenizer.encode_text("a small red")[2:]                       # " red" in context
    assert list(ids[0, position + 1:mask[0].sum()]) == list(plain[position + len(red):plain_mask.sum()])
    np.testing.assert_array_equal(ids[1], tokenizer.encode("a red circle", 16)[0])


def test_placeholder_gradient_through_the_frozen_text_encoder_matches_finite_differences():
    from minidiff.models.text_encoder import TextEncoder, TextEncoderConfig
    from minidiff.models.tokenizer import BPETokenizer
    from minidiff.nn.gradcheck import check_module
    from minidiff.nn.module import Module
    from minidiff.train.finetune import PlaceholderToken, encode_with_placeholder
    tokenizer = BPETokenizer.train(shapes.caption_corpus(200, seed=0), 300)
    encoder = TextEncoder(TextEncoderConfig.tiny(vocab_size=300), seed=0).to(dtype=np.float64)
    token = PlaceholderToken(encoder, tokenizer).attach()
    ids, mask = encode_with_placeholder(tokenizer, ["a <pink> circle", "a blue square"], 8)

    class States(Module):                     # the encoder's states as a function of v alone
        def _children(self):
            yield "token", token

        def forward(self):
            return encoder.forward(ids, mask)[0]

        def backward(self, d_states):
            return encoder.backward(d_states)

    report = check_module(States(), [])
    assert [r.name for r in report.rows] == ["token.embedding"]
    assert report.passed(1e-6), str(report)
    token.detach()
    assert "forward" not in vars(encoder.token_embedding)


@pytest.mark.skipif(not (zoo.PRETRAINED_DIR / "unet.npz").is_file(), reason="needs the shipped models")
def test_textual_inversion_job_moves_only_the_new_token(tmp_path):
    from minidiff.train.finetune import TOKEN_FILE, load_token, run_textual_inversion
    cfg = make_config("textual_inversion", "quick", {"steps": 2, "batch_size": 2, "dataset_size": 8,
                                                     "log_every": 1})
    result = run_textual_inversion(cfg, out=tmp_path, progress=False)
    shipped = zoo.load_text_encoder(cfg.text_encoder)
    for (name, p), (_, q) in zip(result.text_encoder.named_parameters(), shipped.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)
    start = shipped.token_embedding.weight.data[zoo.load_tokenizer(cfg.tokenizer).encode_text("red")].mean(0, keepdims=True)
    assert not np.allclose(result.model.embedding.data, start)          # v moved
    token = load_token(tmp_path / TOKEN_FILE, shipped, zoo.load_tokenizer(cfg.tokenizer))
    np.testing.assert_array_equal(token.embedding.data, result.model.embedding.data)


@pytest.mark.skipif(not (zoo.PRETRAINED_DIR / "unet.npz").is_file(), reason="needs the shipped models")
def test_controlnet_job_writes_a_controlnet_for_its_unet(tmp_path):
    from minidiff.models.unet import UNet
    from minidiff.zoo import load_controlnet
    from minidiff.train.finetune import CONTROLNET_FILE, run_controlnet
    cfg = make_config("controlnet", "quick", {"steps": 2, "batch_size": 2, "dataset_size": 8, "log_every": 1})
    result = run_controlnet(cfg, out=tmp_path, progress=False)
    assert any(np.abs(conv.weight.data).max() > 0 for conv in result.model.controlnet.zero_convs)   # it trained
    unet, _ = zoo.load_trained(cfg.unet)
    controlled = load_controlnet(tmp_path / CONTROLNET_FILE, unet)
    for (name, p), (_, q) in zip(controlled.controlnet.named_parameters(),
                                 result.model.controlnet.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)
    with pytest.raises(ValueError, match="another U-Net"):
        load_controlnet(tmp_path / CONTROLNET_FILE, UNet(make_config("text2image", "quick").model))

    # the pipeline follows a drawing: an RGB or greyscale PNG at the model's size, anything else one error
    # (a ControlNet trained here on the 64x64 VAE's images reads 64x64 outlines: hint_downsample 3)
    from PIL import Image
    from minidiff.models.controlnet import edge_map, fit_control
    from minidiff.pipeline import Pipeline
    pipe = Pipeline.load()
    size = pipe.vae.config.image_size
    outline = edge_map(shapes.sample(1, seed=3, size=size)["images"])
    Image.fromarray((outline[0, 0] * 255).astype(np.uint8)).save(tmp_path / "outline.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(ValueError, match="needs a ControlNet"):
        pipe.text_to_image("a red circle", steps=1, control=tmp_path / "outline.png")
    pipe.load_controlnet(tmp_path / CONTROLNET_FILE)
    assert pipe.controlled.controlnet.config.hint_downsample == int(np.log2(pipe.factor))
    [image] = pipe.text_to_image("a red circle", steps=2, control=tmp_path / "outline.png", control_scale=0.5)
    assert image.size == (size, size)
    if (zoo.PRETRAINED_DIR / CONTROLNET_FILE).is_file():
        # the shipped ControlNet was trained on 32x32 outlines: a 64x64 one is max-pooled to its grid
        pipe.load_controlnet(zoo.PRETRAINED_DIR / CONTROLNET_FILE)
        native = pipe.vae.config.latent_size << pipe.controlled.controlnet.config.hint_downsample
        pooled = fit_control(outline, native)[0, 0]
        assert pooled.shape == (native, native) and pooled.sum() >= outline.sum() / (size // native) ** 2
        Image.fromarray((pooled * 255).astype(np.uint8)).save(tmp_path / "native.png")
        [big] = pipe.text_to_image("a red circle", steps=2, control=tmp_path / "outline.png")
        [same] = pipe.text_to_image("a red circle", steps=2, control=tmp_path / "native.png")
        np.testing.assert_array_equal(np.asarray(big), np.asarray(same))
    Image.fromarray(np.zeros((size, size), np.uint8)).save(tmp_path / "blank.png")
    with pytest.raises(ValueError, match="the control image has no white pixel: nothing to follow"):
        pipe.text_to_image("a red circle", steps=1, control=tmp_path / "blank.png")
    with pytest.raises(ValueError, match=f"is 16x16; the model's images are {size}x{size}"):
        pipe.text_to_image("a red circle", steps=1, control=tmp_path / "small.png")
