r"""Lesson 12: control and fine-tuning -- LoRA, textual inversion, ControlNet, classifier guidance.

The shipped text-to-image model knows six colours. To teach it a seventh, pink, we could retrain the
U-Net, but every weight would move and the old colours could be forgotten. LoRA (Hu et al., 2021)
freezes every weight W of the model and learns a *low-rank change* beside the attention projections:

    y = x W^T + (alpha / r) (x A^T) B^T          A: (r, in),  B: (out, r),  r = 4

B starts at zero, so at step 0 the adapted model is the base model, bit for bit; A starts random, so
the first gradient reaches B. The backward, with u = x A^T and s = alpha / r, is four lines:

    dB = s dy^T u        dU = s dy B        dA = dU^T x        dx = dy W + dU A

Only A and B train (r (in + out) numbers per layer instead of in * out), and once trained they fold
into the weights for free inference: W' = W + s B A.

Textual inversion (Gal et al., 2022) learns the same concept with even less: ONE new token
embedding v for a placeholder word "<pink>", with the text encoder and the U-Net frozen. The
loss's gradient flows back through the U-Net's cross-attention into the context, back through the
frozen text encoder's transformer, and lands on the one embedding row the placeholder reads:

    x_0[b, l] = v  where the prompt says "<pink>";   dv = sum over those positions of dx_0[b, l]

LoRA changes how the U-Net listens (36,736 numbers); textual inversion only finds a better word
for it to hear (128 numbers): it can only reach what the frozen model can already draw.

ControlNet (Zhang et al., 2023) adds a new input instead of a new word: a trainable copy of the
U-Net's encoder reads the noisy latent plus an outline (through a small conv "hint encoder"), and
its feature maps join the locked U-Net's skip connections through zero-initialised 1x1 convs:

    skip_i <- skip_i + s * zero_conv_i(copy_i(z_t, t, c, outline)),   mid <- mid + s * zero_conv(mid')

At step 0 every zero conv outputs 0, so the combined model is the base model exactly.

Classifier guidance (Dhariwal & Nichol, 2021), the older cousin of lesson 10's classifier-free
guidance, steers with a classifier p(y | x_t, t) trained on noisy latents:

    eps_hat = eps(x_t) - s sqrt(1 - abar_t) grad_x log p(y | x_t)

its input gradient from the classifier's own backward (d log p_y / d logits = onehot(y) - p).

Cells: (1) the adapter's gradients against finite differences in float64; (2) adapters on every q,
k, v and out projection of the shipped U-Net: its size beside the U-Net's, and the step-0 output
equal to the base's; (3) merging equals adapting; (4) why the VAE's decoder had to learn pink first,
then the shipped pink adapter (data/pretrained/lora_pink.npz): the share of "a pink ..." prompts
giving a pink object, with and without it, judged by pixel colour (the attribute classifier has no
pink class) and by the classifier for shape and place; (5) textual inversion: the gradient through
the frozen text encoder into v, checked, then the shipped <pink> token; (6) ControlNet: step-0
equality on the shipped U-Net, its size, the outlines it reads, then the shipped ControlNet on
held-out 64x64 outlines, max-pooled to the 32x32 grid it was trained on (IoU of the object with the
outline's filled shape); (7) classifier guidance: the colour a noise-aware classifier asks for, by
guidance scale (when data/pretrained/noisy_classifier.npz is shipped); exercises.

Settings: --smoke (seconds), --quick (14 s on an idle 2-core CPU, 84 s measured on a busy one), no flag
(more steps).

Read beside: minidiff/models/lora.py (LoRALinear, add_lora, merge_lora), minidiff/zoo.py (save_adapter, load_adapter),
minidiff/train/finetune.py (the lora, textual_inversion, controlnet and noisy_classifier jobs, the colour
judge), minidiff/models/controlnet.py, minidiff/models/noisy_classifier.py, minidiff/diffusion/guidance.py,
minidiff/datasets/shapes.py (the opt-in pink), minidiff/nn/gradcheck.py, lessons 04 and 10.
"""
# %% setup: `import minidiff` from this clone, as a script or in a notebook kernel (which has no __file__)
import sys, pathlib  # noqa: E401
_lessons = pathlib.Path(globals().get("__file__", "lessons/_")).resolve().parent
sys.path.insert(0, str(next((p for p in (_lessons.parent, pathlib.Path.cwd(), pathlib.Path.cwd().parent)
                             if (p / "minidiff" / "__init__.py").is_file()), _lessons.parent)))
import minidiff  # noqa: F401,E402  (before NumPy: it sets how OpenBLAS's threads wait, minidiff/__init__.py)

import dataclasses
import time

import numpy as np

from minidiff import zoo
from minidiff.models.lora import LoRALinear, add_lora, merge_lora
from minidiff.nn.gradcheck import check_module
from minidiff.nn.layers import Linear
from minidiff.pipeline import load_pipeline
from minidiff.train.finetune import LORA_FILE, PINK_PROMPTS, pink_report
from minidiff.utils import image_grid, output_dir, parse_lesson_args

NAME = "12_control_and_finetuning"


@dataclasses.dataclass
class Settings:
    steps: int                    # DDIM steps when sampling the pink prompts
    prompts: int                  # how many of PINK_PROMPTS are sampled


FULL = Settings(steps=50, prompts=len(PINK_PROMPTS))
QUICK = Settings(steps=20, prompts=len(PINK_PROMPTS))
SMOKE = Settings(steps=2, prompts=2)
CLASSIFIER_SCALES = (0.0, 10.0)

args = parse_lesson_args("Lesson 12: fine-tuning a finished model with LoRA.")
settings = SMOKE if args.smoke else QUICK if args.quick else FULL
out = output_dir(NAME, args.out)
lesson_start = time.perf_counter()

# %% 1. the adapter's backward is the derivative of its forward (float64, random upstream gradient)
rng = np.random.default_rng(0)
layer = LoRALinear(Linear(12, 10, rng=rng).to(dtype=np.float64), rank=3, alpha=6.0, rng=rng)
layer.lora_B.data = rng.standard_normal(layer.lora_B.shape)          # B = 0 would hide dA
report = check_module(layer, [rng.standard_normal((2, 5, 12))])
print(report)
assert report.passed(1e-6), "LoRALinear's dx, dA, dB disagree with finite differences"
assert {r.name for r in report.rows} == {"x0", "lora_A", "lora_B"}   # the base weight is not a parameter

# %% 2. adapters on the shipped U-Net: small, and exactly the base model at step 0
pipe = load_pipeline()
unet = pipe.unet
z = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
t = np.array([100, 700])
context, context_mask = pipe.encode_prompts(["a red circle on the left", "a blue square at the top"])
base_out = unet(z, t, context, context_mask)
adapters = add_lora(unet, rank=4, alpha=4.0)
share = adapters.num_parameters() / unet.num_parameters()
print(f"{len(adapters.layers)} adapted projections; adapter {adapters.num_parameters():,} parameters beside "
      f"the U-Net's {unet.num_parameters():,}: {100 * share:.2f}%")
assert share < 0.05
step0_out = unet(z, t, context, context_mask)
print(f"step 0: max |adapted - base| = {np.abs(step0_out - base_out).max():.1e} (B = 0)")
assert np.array_equal(step0_out, base_out)

# %% 3. merging: W' = W + s B A computes what the adapted model computes
for lora in adapters.layers.values():
    lora.lora_B.data = 0.05 * rng.standard_normal(lora.lora_B.shape).astype(np.float32)
adapted_out = unet(z, t, context, context_mask)
originals = {name: lora.base.weight.data.copy() for name, lora in adapters.layers.items()}
merge_lora(adapters)
merged_out = unet(z, t, context, context_mask)
difference = np.abs(merged_out - adapted_out).max()
print(f"merged vs adapted: max |difference| = {difference:.1e} (float32 rounding); the adapter moved the output "
      f"by {np.abs(adapted_out - base_out).max():.2f}")
assert difference < 1e-4 * max(1.0, np.abs(adapted_out).max())
for name, lora in adapters.layers.items():                           # put the shipped weights back
    lora.base.weight.data = originals[name]
assert np.array_equal(unet(z, t, context, context_mask), base_out)

# %% 4. the trained pink adapter: does "a pink circle on the left" give a pink object?
# One more piece had to learn pink first: the autoencoder. The first VAE (32x32, now vae32.npz) was trained
# on six colours; its encoder gives a pink scene a latent of its own (about 8% away from the same scene in
# red, the model card), but its decoder drew that latent red, so no U-Net could ever show pink. Its decoder
# was fine-tuned on pink and base scenes with the encoder frozen (minidiff/train/vae_decoder.py): every
# latent kept its meaning, so the U-Net needed no retraining (Stable Diffusion's improved VAEs were made the
# same way). The shipped 64x64 VAE copies that latent space (lesson 07, section 3b) and was taught on scenes
# of which 15% hold a pink object, so it draws pink latents pink at 64x64: the check below is on it.
from minidiff.train.vae_decoder import reconstruction_report  # noqa: E402
from minidiff.evaluate.adapters import new_colour_judgement  # noqa: E402
from minidiff.evaluate.checkpoint import load_classifier  # noqa: E402

recon = reconstruction_report(pipe.vae, n=16 if args.smoke else 64)
print(f"the VAE draws held-out reconstructions in their own colour: pink {recon['pink']:.2f}, "
      f"base colours {recon['base']:.2f}")
assert recon["pink"] >= 0.9 and recon["base"] >= 0.9
# the judge of the images' size (64x64: classifier64.npz), as `evaluate` picks it
judge = load_classifier(zoo.judge_path(pipe.vae.config.image_size))
path = zoo.PRETRAINED_DIR / LORA_FILE
prompts = PINK_PROMPTS[:settings.prompts]
if path.is_file():
    base = pink_report(pipe, prompts, steps=settings.steps)
    lora = pipe.load_lora(path)
    adapted = pink_report(pipe, prompts, steps=settings.steps)
    pipe.unload_lora()
    judged = new_colour_judgement(adapted["images"], prompts, judge)
    print(f"pink share over {len(prompts)} prompts: base model {base['pink_share']:.2f}, "
          f"with {LORA_FILE} {adapted['pink_share']:.2f} (pink, with the asked shape and place: {judged['all']:.2f}); "
          f"adapter {path.stat().st_size / 1e3:.0f} kB beside the U-Net's "
          f"{(zoo.PRETRAINED_DIR / zoo.FILES['text2image']).stat().st_size / 1e6:.1f} MB")
    print("  base colours:   ", base["colours"])
    print("  adapted colours:", adapted["colours"])
    image_grid(np.concatenate([base["images"], adapted["images"]]), nrow=len(prompts), scale=4).save(
        out / "pink_before_after.png")
    print(f"top row the base model, bottom row with the adapter: {out / 'pink_before_after.png'}")
    if not args.smoke:
        assert base["pink_share"] <= 0.1 and judged["all"] >= 0.9
else:
    print(f"{path} is not shipped: train one with `python -m minidiff train lora --out DIR` "
          f"and load it with Pipeline.load_lora(DIR/{LORA_FILE})")

# %% 5. textual inversion: the gradient reaches one embedding row through the frozen text encoder
from minidiff.train.finetune import PlaceholderToken, encode_with_placeholder  # noqa: E402
from minidiff.nn.module import Module  # noqa: E402

encoder64 = type(pipe.text_encoder)(pipe.text_encoder.config)
encoder64.load_state_dict(pipe.text_encoder.state_dict())
encoder64.to(dtype=np.float64)
token = PlaceholderToken(encoder64, pipe.tokenizer, init_word="red").attach()
ids, mask = encode_with_placeholder(pipe.tokenizer, ["a <pink> circle on the left"], pipe.max_length)


class StatesOfV(Module):
    """The frozen encoder's states as a function of v alone."""
    def _children(self):
        yield "v", token

    def forward(self):
        return encoder64.forward(ids, mask)[0]

    def backward(self, d_states):
        return encoder64.backward(d_states)


report = check_module(StatesOfV(), [], max_coords=16)
print(report)
assert report.passed(1e-6) and [r.name for r in report.rows] == ["v.embedding"]
print(f"textual inversion trains {token.num_parameters()} numbers; LoRA {adapters.num_parameters():,}")
token.detach()

# %% 5b. the trained token: "a <pink> circle" through the frozen text encoder and U-Net
from minidiff.train.finetune import (PLACEHOLDER, TOKEN_FILE, load_token, placeholder_captions,  # noqa: E402
                                     placeholder_images)

token_path = zoo.PRETRAINED_DIR / TOKEN_FILE
if token_path.is_file():
    learned = load_token(token_path, pipe.text_encoder, pipe.tokenizer)
    token_prompts = placeholder_captions(list(prompts))
    token_images = placeholder_images(pipe, token_prompts, steps=settings.steps)
    learned.detach()
    judged_token = new_colour_judgement(token_images, token_prompts, judge, word=PLACEHOLDER)
    print(f"with the learned {PLACEHOLDER} ({learned.num_parameters()} numbers): pink {judged_token['colour']:.2f}, "
          f"pink with the asked shape and place {judged_token['all']:.2f} over {len(token_prompts)} prompts")
    image_grid(token_images, nrow=len(token_prompts), scale=4).save(out / "pink_token.png")
    if not args.smoke:
        assert judged_token["all"] >= 0.9
else:
    print(f"{token_path} is not shipped: train one with `python -m minidiff train textual_inversion --out DIR`")

# %% 6. ControlNet: a trainable copy of the encoder, exactly the base model at step 0
from minidiff.datasets import shapes  # noqa: E402
from minidiff.models.controlnet import ControlledUNet, ControlNet, edge_map  # noqa: E402

controlnet = ControlNet(unet)
controlled = ControlledUNet(unet, controlnet)
scenes = shapes.sample(2, seed=4, size=pipe.vae.config.image_size, two_object_fraction=0.5)
outlines = edge_map(scenes["images"])
control_out = controlled(z, t, context, context_mask, outlines)
print(f"ControlNet: {controlnet.num_parameters():,} parameters beside the U-Net's {unet.num_parameters():,}; "
      f"step 0: max |controlled - base| = {np.abs(control_out - base_out).max():.1e}")
assert np.array_equal(control_out, base_out)
image_grid(np.concatenate([scenes["images"], np.repeat(2 * outlines - 1, 3, axis=1)]), nrow=2, scale=4).save(
    out / "outlines.png")
print(f"the outlines it reads (Sobel |G| > 0.25 max): {out / 'outlines.png'}")

# %% 6b. the trained ControlNet: held-out outlines, a colour asked for by the prompt
from minidiff.evaluate.adapters import control_judgement, control_scenes  # noqa: E402
from minidiff.pipeline import CONTROLNET_FILE  # noqa: E402
from minidiff.diffusion import samplers  # noqa: E402
from minidiff import backend  # noqa: E402

control_path = zoo.PRETRAINED_DIR / CONTROLNET_FILE
if control_path.is_file():
    pipe.load_controlnet(control_path)
    held = control_scenes(settings.prompts, seed=3, size=pipe.vae.config.image_size)
    controls = edge_map(held["images"])            # 64x64 outlines; the shipped ControlNet was trained on 32x32
    native = pipe.vae.config.latent_size << pipe.controlled.controlnet.config.hint_downsample
    print(f"outlines drawn at {controls.shape[-1]}x{controls.shape[-1]}; the ControlNet reads {native}x{native} "
          "(a larger outline is max-pooled to its grid, every line kept: models/controlnet.py fit_control)")
    size = pipe.vae.config.latent_size

    def sample_with(control):
        model_fn = pipe.guided_model_fn(held["prompts"], [""] * len(held["prompts"]), 4.0, control=control)
        latents = samplers.sample(model_fn, pipe.schedule, (len(held["prompts"]), pipe.latent_channels, size, size),
                                  steps=settings.steps, rng=backend.rng(3), progress=False)
        return backend.to_numpy(pipe.decode(latents))

    followed, free = sample_with(controls), sample_with(None)
    with_control = control_judgement(followed, held["masks"], held["prompts"], judge)
    without = control_judgement(free, held["masks"], held["prompts"], judge)
    print(f"ControlNet on {len(held['prompts'])} held-out outlines: IoU with the outline's filled shape "
          f">= 0.7 in {with_control['iou_ok']:.2f} (median {with_control['median_iou']:.2f}), colour as asked "
          f"{with_control['colour']:.2f}; the same prompts without the outline: IoU >= 0.7 in {without['iou_ok']:.2f}")
    image_grid(np.concatenate([np.repeat(2 * controls - 1, 3, axis=1), followed, free]), nrow=len(held["prompts"]),
               scale=4).save(out / "controlnet_follows.png")
    print(f"rows: the outline, the image made with it, the same prompt and noise without it: "
          f"{out / 'controlnet_follows.png'}")
    if not args.smoke:
        assert with_control["iou_ok"] >= 0.9 and with_control["colour"] >= 0.9 and without["iou_ok"] < 0.5
else:
    print(f"{control_path} is not shipped: train one with `python -m minidiff train controlnet --out DIR`")

# %% 7. classifier guidance: a noisy classifier's gradient asks for a colour
from minidiff.diffusion.guidance import classifier_guided_model_fn  # noqa: E402
from minidiff.models.noisy_classifier import log_prob_gradient  # noqa: E402
from minidiff.train.finetune import NOISY_CLASSIFIER_FILE, load_noisy_classifier, object_colours  # noqa: E402
from minidiff.datasets.captions import COLOURS  # noqa: E402
classifier_path = zoo.PRETRAINED_DIR / NOISY_CLASSIFIER_FILE
if classifier_path.is_file():
    classifier = load_noisy_classifier(classifier_path)
    wanted = np.arange(settings.prompts) % len(COLOURS)             # each colour in turn

    def colour_accuracy(scale):
        """Unconditional samples (the empty prompt) steered by the classifier towards ``wanted``."""
        model_fn = pipe.guided_model_fn([""] * len(wanted), [""] * len(wanted), 1.0)
        guided = classifier_guided_model_fn(model_fn, lambda x, t: log_prob_gradient(classifier, x, t, wanted),
                                            pipe.schedule, scale)
        size = pipe.vae.config.latent_size
        latents = samplers.sample(guided, pipe.schedule, (len(wanted), pipe.latent_channels, size, size),
                                  steps=settings.steps, rng=backend.rng(0), progress=False)
        return float(np.mean(object_colours(backend.to_numpy(pipe.decode(latents))) == wanted))

    accuracies = {scale: colour_accuracy(scale) for scale in CLASSIFIER_SCALES}
    print("classifier guidance, colour accuracy by scale s: " +
          ", ".join(f"s={s:g}: {a:.2f}" for s, a in accuracies.items()))
    if not args.smoke:
        assert max(accuracies.values()) > accuracies[0.0]
else:
    print(f"{classifier_path} is not shipped: train one with `python -m minidiff train noisy_classifier`")

# %% exercises
# 1. Rank: train `python -m minidiff train lora --rank 1` and `--rank 16`. How does the pink share move,
#    and how does the adapter's size? (r (in + out) per layer.)
# 2. Where to adapt: add_lora(unet, targets=("to_k", "to_v")) adapts only what reads the prompt in
#    cross-attention (and self-attention). Is it enough for a new colour word?
# 3. Scale: pipe.load_lora(path, scale=s) for s in 0, 0.5, 1, 2. At which s does pink appear, and when do
#    the shapes break?
print(f"lesson 12 done in {time.perf_counter() - lesson_start:.0f} s; figures in {out}")
