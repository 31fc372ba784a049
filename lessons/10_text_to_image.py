r"""Lesson 10: text-to-image -- cross-attention, conditioning dropout and classifier-free guidance.

The shipped text-to-image model is three frozen pieces and one trained U-Net:

    prompt --BPE tokenizer--> ids (L = 24) --text encoder--> c: one 128-vector per token  (1, L, 128)
    z_T ~ N(0, I) (4 x 8 x 8) --U-Net eps_theta(z_t, t, c), 50 DDIM steps--> z_0 --VAE decoder--> 64 x 64 image

How words reach pixels: cross-attention. Inside every transformer block of the U-Net the
feature map is read as H*W "pixel tokens" h_p (one per latent cell), and each of them asks the
prompt a question:

    Q = h W_q          (HW, d)   queries from the latent pixels
    K = c W_k,  V = c W_v   (L, d)    keys and values from the text encoder's per-token states
    A = softmax(Q K^T / sqrt(d))     (HW, L)   row p: how much pixel p listens to each token
    out = A V                        (HW, d)   each pixel receives a mix of the token values

Padding tokens are masked out (their logits are -inf), so every row of A sums to 1 over the real
tokens. Column j of A, laid out as an 8 x 8 map, shows which pixels read token j.

What a token's state holds. The text encoder is causal (lesson 09): the state c_j of token j is
computed from tokens 0..j only. So c_j carries everything said up to j: the state of "red" knows
"a red", the state of "on" after "a red circle" knows "a red circle on". A function word that
follows the object is, for the U-Net, a second copy of the object; only the tokens before the
first content word ("<start>", "a") are the same for every prompt and say nothing. Attention maps
must be read with that in mind: "on" lighting up on the circle is the circle speaking through "on".

Conditioning dropout. While the U-Net trains, each caption is replaced by the empty prompt ""
with probability p (0.1 for the shipped model, minidiff/train/jobs.py run_text2image). One network
therefore learns two things: eps_theta(z_t, t, c), the noise given the caption, and
eps_theta(z_t, t, "") = eps_uncond, the noise of an image of any caption (the unconditional
model), at the cost of one shared set of weights. Cell 4 trains one such model from scratch.

Classifier-free guidance. The noise prediction is a scaled score, eps = -sqrt(1 - abar_t) grad log p(z_t),
and Bayes gives grad log p(z_t | c) = grad log p(z_t) + grad log p(c | z_t). So the difference
eps_cond - eps_uncond is -sqrt(1 - abar_t) grad log p(c | z_t): the gradient of an implicit
classifier that says how much z_t looks like the caption. Guidance scales that classifier term by s:

    eps = eps_uncond + s (eps_cond - eps_uncond)          samples from ~ p(z) p(c | z)^s

s = 0 ignores the prompt, s = 1 is the plain conditional model, s > 1 trades variety for
obedience. Both branches run as one batch of 2B through the U-Net (minidiff/diffusion/guidance.py).

Negative prompt. Put the embedding of a prompt n in place of "" in the unconditional branch:

    eps = eps_n + s (eps_cond - eps_n)
        = eps_uncond + s (eps_cond - eps_uncond) - (s - 1) (eps_n - eps_uncond)

i.e. p(z) p(c | z)^s p(n | z)^-(s-1): towards the prompt and, for s > 1, away from n.

Cells: (1) a prompt as tokens; (2) cross-attention maps while sampling; (3) why function words
light up on the object too: the causal encoder's token states, and the claim that holds (object
words concentrate on the object, the content-free tokens do not, padding gets nothing); (4) you
train a small text-conditional U-Net with conditioning dropout and guide it (in --quick a short run of 900
steps of 32: its loss curve and samples, and how much its caption lowers its denoising error, what guidance
amplifies, beside the shipped model's; guidance moves your model's colours towards the prompt's, measured
15% right at s = 0 -> 60% at s = 3 from the pixels; the other claims are asserted on the shipped model); (5) a guidance-scale
sweep on the shipped model; (6) its prompt accuracy per category (colour, shape, size, position,
each relation, binding) against the guidance scale; (7) a negative prompt; then exercises.

Settings: --smoke (seconds), --quick (a few minutes on a 2-core CPU), no flag (a longer training
run and more images per prompt; on a GPU with --device gpu). MINIDIFF_EXERCISE=3 runs exercise 3.

Read beside: minidiff/pipeline.py (Pipeline.guided_model_fn, sample_prompts, text_to_image),
minidiff/diffusion/guidance.py (guided_prediction, guided_model_fn), minidiff/models/blocks.py
(TransformerBlock, SpatialTransformer: the cross-attention), minidiff/models/unet.py
(UNet.cross_attentions), minidiff/nn/layers.py (MultiHeadAttention, store_attention),
minidiff/train/jobs.py (run_text2image: conditioning dropout), minidiff/evaluate/judge.py
(accuracy_by_category, format_categories, prompt_accuracy), minidiff/datasets/captions.py
(CATEGORY_PROMPTS).
"""
# %% setup: `import minidiff` from this clone, as a script or in a notebook kernel (which has no __file__)
import sys, pathlib  # noqa: E401
_lessons = pathlib.Path(globals().get("__file__", "lessons/_")).resolve().parent
sys.path.insert(0, str(next((p for p in (_lessons.parent, pathlib.Path.cwd(), pathlib.Path.cwd().parent)
                             if (p / "minidiff" / "__init__.py").is_file()), _lessons.parent)))
import minidiff  # noqa: F401,E402  (before NumPy: it sets how OpenBLAS's threads wait, minidiff/__init__.py)

import dataclasses
import os
import time

import numpy as np

from minidiff import backend, evaluate, zoo
from minidiff.checkpoint import load_checkpoint
from minidiff.datasets import captions, shapes
from minidiff.diffusion import guidance, samplers
from minidiff.diffusion.loss import prediction_target
from minidiff.models.unet import UNetConfig
from minidiff.nn.module import no_grad
from minidiff.pipeline import DEFAULT_DIR, load_pipeline
from minidiff.train import Text2ImageJob, run_text2image
from minidiff.utils import from_uint8, output_dir, parse_lesson_args, pyplot, save_figure, to_uint8

NAME = "10_text_to_image"


@dataclasses.dataclass
class Settings:
    steps: int                    # DDIM steps for the pictures (cells 2, 5, 7)
    accuracy_steps: int           # DDIM steps for the accuracy measurements (cells 4, 6)
    images_per_prompt: int        # cell 6: images of every CATEGORY_PROMPT at every scale
    category_prompts: int         # cell 6: how many of the 70 CATEGORY_PROMPTS, spread over the list (70 = all)
    accuracy_scales: tuple        # cell 6: the guidance scales measured
    attention_images: int         # cell 2: images whose attention is measured
    negative_images: int          # cell 7: images with and without the negative prompt
    train_steps: int              # cell 4: your U-Net's training steps
    train_batch: int
    train_images: int             # cell 4: shapes scenes rendered and encoded once
    learner_channels: int         # cell 4: your U-Net's base channels (levels of 1x and 2x that)
    learner_prompts: int          # cell 4: one-object prompts your model is judged on, 2 images each (of 30)
    attention_margin: float       # claim: object words' inside/uniform >= the content-free tokens' + this
    colour_gain: float | None     # claim (cell 4): guided colour accuracy >= unguided + this (None: not claimed)
    accuracy_gain: float          # claim (cell 6): overall accuracy at s = 4 >= s = 0 + this
    single_floor: float           # claim (cell 6): single-object colour and shape at s = 4 >= this
    negative_drop: float          # claim: the negated attribute's frequency falls by at least this
    blob_gain: float | None = None  # claim (cell 4): colour read from the pixels, guided >= unguided + this


FULL = Settings(steps=50, accuracy_steps=50, images_per_prompt=4, category_prompts=70,
                accuracy_scales=(0.0, 1.0, 2.0, 4.0, 7.0), attention_images=16, negative_images=64, train_steps=1500,
                train_batch=32, train_images=4000, learner_channels=32, learner_prompts=30,
                attention_margin=0.3, colour_gain=0.2, accuracy_gain=0.4, single_floor=0.8, negative_drop=0.25)
# quick: about two minutes of an idle 2-core CPU in all, more on a busy one. The shipped model's
# measurements use 20 DDIM steps for the pictures, 10 for the accuracy table (DDIM with this checkpoint obeys
# its prompts at 10) and half the category prompts; your U-Net is a short run at 16 base channels (900 steps of
# 32: about 55 s on an idle CPU; 250 steps of 16 learnt the pictures but left the caption unread, so guidance
# had nothing to show).
QUICK = Settings(steps=20, accuracy_steps=10, images_per_prompt=1, category_prompts=35,
                 accuracy_scales=(0.0, 1.0, 2.0, 4.0), attention_images=8, negative_images=32, train_steps=900,
                 train_batch=32, train_images=1500, learner_channels=16, learner_prompts=10, blob_gain=0.2,
                 attention_margin=0.3, colour_gain=None, accuracy_gain=0.4, single_floor=0.8, negative_drop=0.25)
SMOKE = Settings(steps=4, accuracy_steps=4, images_per_prompt=1, category_prompts=7, accuracy_scales=(0.0, 4.0),
                 attention_images=2, negative_images=4, train_steps=3, train_batch=4, train_images=16,
                 learner_channels=16, learner_prompts=3,
                 attention_margin=-np.inf, colour_gain=None, accuracy_gain=-np.inf, single_floor=0.0,
                 negative_drop=-1.0)
SCALES = (0.0, 1.0, 2.0, 4.0, 7.0)
GUIDANCE = 4.0                # the pipeline's default scale, used for the attention maps (cell 2)
NEGATIVE_GUIDANCE = 7.0       # cell 7: the push away from a negative prompt grows as (s - 1)
args = parse_lesson_args('Lesson 10: text-to-image -- cross-attention, conditioning dropout and classifier-free guidance.')
settings = SMOKE if args.smoke else QUICK if args.quick else FULL
# cell 4: your U-Net, smaller than the shipped one (cross-attention at 4 x 4 and in the middle block):
# channels 32 and 64 (about a million parameters) with --full; 16 and 32 (a quarter of the cost of
# a step) in quick mode and smoke
LEARNER_UNET = dataclasses.replace(UNetConfig.latent8(), base_channels=settings.learner_channels,
                                   attention_levels=(1,), num_heads=2, norm_groups=8)
LEARNER_DROPOUT = 0.2         # twice the shipped model's 0.1: a short run must see enough empty captions
LEARNER_SCALES = (0.0, 1.0, 3.0)

exercise = os.environ.get("MINIDIFF_EXERCISE", "")      # "3": also run exercise 3's experiment
out = output_dir(NAME, args.out)
plt = pyplot()
lesson_start = time.perf_counter()

pipe = load_pipeline()
# the judge of the images' size (64x64: classifier64.npz), as `evaluate` picks it
judge = evaluate.load_classifier(zoo.judge_path(pipe.vae.config.image_size))
unet_config = load_checkpoint(DEFAULT_DIR / "unet.npz").config
cond_dropout = unet_config.get("train", {}).get("cond_dropout")
print(f"pipeline from {DEFAULT_DIR}: U-Net {pipe.unet.num_parameters():,} parameters on "
      f"{pipe.latent_channels} x {pipe.unet.config.image_size} x {pipe.unet.config.image_size} latents, "
      f"trained with conditioning dropout p = {cond_dropout}; device {backend.device()}")


def to_host(images):
    """Images in [-1, 1] (host or device) -> float32 host array, clipped."""
    return np.clip(backend.to_numpy(images), -1.0, 1.0)


def spread(items, n):
    """``n`` of ``items`` at evenly spaced places in the list, the first and last included (all of them when
    n >= len(items)): a subset that keeps the list's mix of colours, shapes and relations."""
    places = np.unique(np.linspace(0, len(items) - 1, min(n, len(items))).round().astype(int))
    return [items[i] for i in places]


def show(ax, image, title=None):
    """One image in [-1, 1] (3, H, W), pixels drawn as blocks (nearest), no ticks."""
    ax.imshow(to_uint8(image)[0], interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


# %% 1. A prompt as tokens and as the context the U-Net reads
prompt = "a red circle on the left"
ids, mask = pipe.tokenizer.encode(prompt, pipe.max_length)
pieces = pipe.tokenizer.tokens(prompt)
names = ["<start>"] + pieces + ["<end>"]                 # one name per real (unmasked) position
print(f"prompt {prompt!r} -> {len(pieces)} word pieces {pieces}")
print(f"  ids  {ids.tolist()}\n  mask {mask.astype(int).tolist()}")
for position, (name, token_id) in enumerate(zip(names, ids)):
    print(f"  position {position:2d}: id {int(token_id):4d}  {name!r}")
context, context_mask = pipe.encode_prompts([prompt])
print(f"context c: {tuple(context.shape)} (batch, max_length, width); {int(mask.sum())} real tokens, "
      f"{pipe.max_length - int(mask.sum())} padding positions the attention mask hides")
assert int(mask.sum()) == len(pieces) + 2, "a prompt is <start> + its pieces + <end>"
assert ids[0] == pipe.tokenizer.start_id and ids[len(pieces) + 1] == pipe.tokenizer.end_id
assert pipe.tokenizer.decode(ids) == prompt, "decoding the ids gives the prompt back"


# %% 2. Cross-attention maps while sampling
layers = [layer for _, layer in pipe.unet.cross_attentions()]
for layer in layers:
    layer.store_attention = True         # keep softmax(QK^T / sqrt(d)) of the last call, even in eval mode
latent_size = pipe.unet.config.image_size
pixels = latent_size * latent_size       # the finest U-Net level: one query per latent cell (8 x 8 = 64)


def sample_with_attention(prompt, num_images, seed):
    """Sample ``num_images`` images of ``prompt`` (guidance GUIDANCE) and record, after every step, the
    conditional branch's cross-attention at the 8 x 8 level, averaged over heads and layers.

    Returns (images (B, 3, H, W), 64 x 64 for the shipped model; the first image's x0 prediction after every
    step (steps, 3, H, W); timesteps (steps,); attention (steps, B, 64, L))."""
    guided = pipe.guided_model_fn(prompt, "", GUIDANCE, num_images)
    maps = []

    def model_fn(z, t):
        eps = guided(z, t)
        # the U-Net ran the batch [unconditional | conditional]: keep the conditional half
        fine = [backend.to_numpy(layer.last_attention_probs)[-num_images:] for layer in layers
                if layer.last_attention_probs.shape[2] == pixels]            # (B, heads, 64, L) each
        maps.append(np.mean([p.mean(axis=1) for p in fine], axis=0))        # (B, 64, L)
        return eps

    shape = (num_images, pipe.latent_channels, latent_size, latent_size)
    latents, _, x0_preds = samplers.sample(model_fn, pipe.schedule, shape, steps=settings.steps,
                                           rng=backend.rng(seed), prediction_type=pipe.prediction_type,
                                           return_intermediates=True, progress=False)
    timesteps = samplers.sampler_timesteps(pipe.schedule, settings.steps, "ddim")
    xp = backend.get_array_module(latents)
    frames = to_host(pipe.decode(xp.concatenate([x0[:1] for x0 in x0_preds])))
    return to_host(pipe.decode(latents)), frames, timesteps, np.stack(maps)


def per_cell(mask):
    """(B, H, W) pixel mask (64 x 64 for the shipped model) -> (B, 64): the fraction of each latent cell's
    pixels (an 8 x 8 patch) inside it."""
    B, size, _ = mask.shape
    f = size // latent_size
    return mask.reshape(B, latent_size, f, latent_size, f).mean(axis=(2, 4)).reshape(B, pixels)


def foreground(images, threshold=0.3):
    """(B, 3, H, W) -> (B, H, W) bool: pixels whose colour differs from the background (each image's
    median colour, since the objects cover less than half of it) by more than ``threshold``."""
    background = np.median(images.reshape(*images.shape[:2], -1), axis=2)[:, :, None, None]
    return np.abs(images - background).max(axis=1) > threshold


def colour_region(images, colour, radius=0.3):
    """(B, 3, H, W) -> (B, H, W) bool: pixels within ``radius`` (RGB in [0, 1]) of a shapes colour."""
    rgb = shapes.RGB[shapes.COLOURS.index(colour)][None, :, None, None]
    return np.sqrt((((images + 1) / 2 - rgb) ** 2).sum(axis=1)) < radius


def pixel_colour_right(images, prompts):
    """Share of images whose object has the prompt's colour, read from the pixels alone: the mean colour of
    the foreground (a blob counts, no shape needed) nearest to the prompt's shapes colour among all six.
    A gentler judge than the classifier's, for a model that draws blobs before it draws shapes."""
    inside = foreground(images)                                                     # (B, H, W)
    right = []
    for image, region, p in zip(images, inside, prompts):
        if not region.any():
            right.append(False)
            continue
        rgb = (image[:, region].mean(axis=1) + 1) / 2                                # (3,) in [0, 1]
        nearest = int(np.argmin(((shapes.RGB - rgb) ** 2).sum(axis=1)))
        right.append(shapes.COLOURS[nearest] == shapes.parse_caption(p)["colour"])
    return float(np.mean(right))


def inside_share(attention, region):
    """Share of each token's attention that lands inside ``region``, divided by the region's share of
    the pixels (what uniform attention would give): 1 = no preference, > 1 = the token is read there.

    attention (B, 64, L) averaged over steps, region (B, 64) in [0, 1]. Returns (L,) averaged over
    the images with a non-empty region (NaN for a token no pixel attends to, or when no image has one)."""
    keep = region.sum(axis=1) > 0
    if not keep.any():
        return np.full(attention.shape[2], np.nan)
    attention, region = attention[keep], region[keep]
    mass = attention.sum(axis=1)                                                    # (B, L)
    with np.errstate(invalid="ignore", divide="ignore"):
        inside = (attention * region[:, :, None]).sum(axis=1) / mass
    return (inside / region.mean(axis=1, keepdims=True)).mean(axis=0)


def word_positions(prompt, words):
    """Positions (in the padded id sequence) of the tokens that spell ``words`` of ``prompt``."""
    pieces = pipe.tokenizer.tokens(prompt)
    return [1 + i for i, piece in enumerate(pieces) if piece.strip() in words]


images, frames, timesteps, attention = sample_with_attention(prompt, settings.attention_images, args.seed)
mean_attention = attention.mean(axis=0)                                             # (B, 64, L)
fg_cells = per_cell(foreground(images).astype(np.float32))                          # (B, 64)
ratio = inside_share(mean_attention, fg_cells)[:len(names)]                          # (tokens,): the real ones
parsed = shapes.parse_caption(prompt)
object_words = word_positions(prompt, {parsed["colour"], parsed["shape"]})
real = slice(0, len(names))
share_of_attention = mean_attention[:, :, real].mean(axis=(0, 1))                   # (tokens,)
padding_share = float(mean_attention[:, :, len(names):].sum(axis=2).max())
print(f"\n{prompt!r}: {settings.attention_images} images, guidance {GUIDANCE}, attention averaged over "
      f"heads, the {sum(layer.last_attention_probs.shape[2] == pixels for layer in layers)} cross-attention "
      f"layers at {latent_size}x{latent_size} and all {settings.steps} steps")
print(f"the object covers {fg_cells.mean():.1%} of the image; per token: its share of all attention, and the "
      f"attention mass inside the object / the object's area (1.00 = uniform)")
for position, name in enumerate(names):
    marker = "  <- object word" if position in object_words else ""
    print(f"  {name!r:11}  share {share_of_attention[position]:6.1%}   inside/uniform {ratio[position]:5.2f}{marker}")
print(f"the {pipe.max_length - len(names)} padding positions get {padding_share:.1e} of any pixel's attention "
      f"(masked: exactly nothing)")
assert padding_share < 1e-6, padding_share


def attention_figure(images, frames, timesteps, attention, prompt, regions, ratios, path, rows=3):
    """Rows: a few sampling steps (x0 prediction, then one 8 x 8 map per token, <start> and <end>
    included) and the mean over all steps (final image). Each map has its own colour scale; the
    outline is the object region; the last row's titles give each token's inside/uniform ratio."""
    names = ["<start>"] + pipe.tokenizer.tokens(prompt) + ["<end>"]
    picks = np.unique(np.linspace(0, len(timesteps) - 1, rows + 1)[:-1].round().astype(int))
    fig, axes = plt.subplots(len(picks) + 1, len(names) + 1, figsize=(1.55 * (len(names) + 1),
                                                                      1.9 * (len(picks) + 1) + 0.7), squeeze=False)
    size = images.shape[-1]
    for r, pick in enumerate(list(picks) + [None]):
        maps = attention.mean(axis=0) if pick is None else attention[pick]         # (B, 64, L)
        show(axes[r, 0], images[0] if pick is None else frames[pick],
             "final image" if pick is None else f"x0 guess, t = {timesteps[pick]}")
        axes[r, 0].set_ylabel("mean of all steps" if pick is None else f"step {pick + 1}", fontsize=8)
        for position, name in enumerate(names):
            column = maps[0, :, position].reshape(latent_size, latent_size)
            ax = axes[r, position + 1]
            ax.imshow(column, cmap="magma", interpolation="nearest", extent=(0, size, size, 0))
            ax.contour(np.arange(size) + 0.5, np.arange(size) + 0.5, regions[0].astype(float), levels=[0.5],
                       colors="cyan", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            share = maps[0, :, position].mean()
            detail = f"\ninside x{ratios[position]:.2f}" if pick is None else ""
            ax.set_title(f"{name.strip()!r} {share:.0%}{detail}", fontsize=8)
    fig.suptitle(f"Which latent pixels read each token of {prompt!r}\n(cross-attention at {latent_size}x"
                 f"{latent_size}, mean over heads and layers; bright = attends; % = the token's share of "
                 f"attention; cyan = object;\nlast row: attention inside the object / uniform, over all "
                 f"{len(images)} images)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


attention_figure(images, frames, timesteps, attention, prompt, foreground(images), ratio, out / "attention_maps.png")


# %% 3. Why "on", "the" and "left" light up on the circle: each token's state holds the words before it
# Swap words and see which token states change: a causal encoder can only change states at and after the swap.
swaps = {"red circle -> blue square": "a blue square on the left", "left -> right": "a red circle on the right"}
states, _ = pipe.encode_prompts([prompt] + list(swaps.values()))
states = backend.to_numpy(states)[:, :len(names)]                                  # (prompts, tokens, 128)
change = {what: np.linalg.norm(states[k + 1] - states[0], axis=1) / np.linalg.norm(states[0], axis=1)
          for k, what in enumerate(swaps)}
unit = states[0] / np.linalg.norm(states[0], axis=1, keepdims=True)
similarity = unit @ unit.T                                                          # cosine of token states
shape_position = word_positions(prompt, {parsed["shape"]})[0]
print(f"\ntoken states of {prompt!r}: how much each changes (|c - c'| / |c|) when words are swapped, and its "
      f"cosine with the state of {names[shape_position]!r}")
print(f"  {'token':11}" + "".join(f"{what:>28}" for what in swaps) + f"{'cosine with circle':>20}"
      f"{'inside/uniform':>16}")
for position, name in enumerate(names):
    print(f"  {name!r:11}" + "".join(f"{change[what][position]:28.2f}" for what in swaps)
          + f"{similarity[position, shape_position]:20.2f}{ratio[position]:16.2f}")
first_word = min(object_words)
content_free = list(range(first_word))             # <start> and "a": before any content word
after_object = [p for p in range(shape_position + 1, len(names) - 1) if p not in object_words]  # on, the, left
swap_object = change["red circle -> blue square"]
print(f"states before the first swapped word do not move ({swap_object[:first_word].max():.1e}): the encoder "
      f"is causal; {[names[p] for p in after_object]} after the object change by "
      f"{swap_object[after_object].min():.2f}-{swap_object[after_object].max():.2f} when the object does, "
      f"as much as the object words ({swap_object[object_words].min():.2f}-{swap_object[object_words].max():.2f})")
print(f"so their states point the way the circle's does (cosine {similarity[after_object, shape_position].min():.2f}"
      f"-{similarity[after_object, shape_position].max():.2f}), and the U-Net reads the circle through them: "
      f"their inside/uniform {np.nanmin(ratio[after_object]):.2f}-{np.nanmax(ratio[after_object]):.2f}")
assert swap_object[:first_word].max() < 1e-5 and change["left -> right"][:len(names) - 2].max() < 1e-5, change
assert swap_object[after_object].min() > 0.5, swap_object    # function words after the object carry it
object_ratio = float(np.mean(ratio[object_words]))
free_ratio = float(np.nanmax(ratio[content_free]))
print(f"the honest claim: object words {[names[i] for i in object_words]} put {object_ratio:.2f} x uniform of "
      f"their attention inside the object; the tokens before the first content word {[names[i] for i in content_free]} "
      f"(the function word 'a', whose causal state holds no object yet, and <start>) at most {free_ratio:.2f} x "
      f"(they are read on the background: a place to park attention); padding nothing. The function words after "
      f"the object are no such control: their states carry it (above). "
      f"(claim: object words >= the content-free tokens + {settings.attention_margin})")
assert args.smoke or object_ratio >= free_ratio + settings.attention_margin, (object_ratio, free_ratio)

fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [1, 1.4]})
image = axes[0].imshow(similarity, cmap="RdBu_r", vmin=-1, vmax=1)
axes[0].set_xticks(range(len(names)), [n.strip() for n in names], rotation=45, fontsize=8)
axes[0].set_yticks(range(len(names)), [n.strip() for n in names], fontsize=8)
for i in range(len(names)):
    for j in range(len(names)):
        axes[0].text(j, i, f"{similarity[i, j]:.2f}", ha="center", va="center", fontsize=6)
axes[0].set_title("cosine between the text encoder's token states\n(after 'circle' the states stay close to "
                  "its: causal states carry the words before them)", fontsize=9)
fig.colorbar(image, ax=axes[0], fraction=0.046)
x = np.arange(len(names))
colours = ["tab:grey" if p in content_free else "tab:red" if p in object_words else "tab:blue" for p in x]
axes[1].bar(x - 0.2, ratio, width=0.4, color=colours, label="attention inside the object / uniform")
axes[1].bar(x + 0.2, swap_object, width=0.4, color="none", edgecolor="k", hatch="//",
            label="state change when 'red circle' -> 'blue square'")
axes[1].axhline(1.0, color="k", lw=0.8, ls=":")
axes[1].set_xticks(x, [n.strip() for n in names], fontsize=8)
axes[1].set(ylabel="ratio (1 = uniform) / relative change",
            title="filled: where each token is read (red = object word, blue = after it, grey = content-free)\n"
                  "hatched: how much the token's state depends on the object words")
axes[1].title.set_fontsize(9)
axes[1].set_ylim(0, 1.3 * max(np.nanmax(ratio), swap_object.max()))      # room for the legend above the bars
axes[1].legend(fontsize=8, loc="upper left")
fig.tight_layout()
save_figure(fig, out / "token_states.png")

# two objects: does each word look at its own object?
pair_prompt = "a red circle to the left of a blue square"
pair = shapes.parse_caption(pair_prompt)
pair_images, pair_frames, pair_timesteps, pair_attention = sample_with_attention(
    pair_prompt, settings.attention_images, args.seed + 1)
pair_mean = pair_attention.mean(axis=0)
pair_names = ["<start>"] + pipe.tokenizer.tokens(pair_prompt) + ["<end>"]
first_words = word_positions(pair_prompt, {pair["colour"], pair["shape"]})
second_words = [i for i in word_positions(pair_prompt, {pair["colour2"], pair["shape2"]}) if i not in first_words]
regions = {colour: per_cell(colour_region(pair_images, colour).astype(np.float32))
           for colour in (pair["colour"], pair["colour2"])}
print(f"\n{pair_prompt!r}: attention inside each object / its area, per word")
print(f"  {'word':10}" + "".join(f"{'in the ' + colour + ' object':>22}" for colour in regions))
binding = {colour: inside_share(pair_mean, region) for colour, region in regions.items()}
for position in first_words + second_words:
    print(f"  {pair_names[position].strip():10}" + "".join(f"{binding[c][position]:22.2f}" for c in regions))
own_first = np.mean(binding[pair["colour"]][first_words]) - np.mean(binding[pair["colour2"]][first_words])
own_second = np.mean(binding[pair["colour2"]][second_words]) - np.mean(binding[pair["colour"]][second_words])
print(f"words of object 1 prefer object 1 by {own_first:+.2f}; words of object 2 prefer object 2 by "
      f"{own_second:+.2f} (claim: both > 0: each object's words are read on that object)")
if not args.smoke:
    assert own_first > 0 and own_second > 0, (own_first, own_second)
both = colour_region(pair_images, pair["colour"]) | colour_region(pair_images, pair["colour2"])
attention_figure(pair_images, pair_frames, pair_timesteps, pair_attention, pair_prompt, both,
                 inside_share(pair_mean, per_cell(both.astype(np.float32)))[:len(pair_names)],
                 out / "attention_maps_two_objects.png", rows=2)
for layer in layers:
    layer.store_attention = False


# %% 4. Your own text-to-image model: conditioning dropout while training, guidance while sampling
# The one training loop (minidiff/train/loop.py fit) through the text2image job: the shipped VAE's latents of
# rendered shapes, the shipped (frozen) text encoder's states of their captions, and in every batch each caption
# swapped for "" with probability cond_dropout (run_text2image's draw_batch). One-object scenes only: a short run.
job = Text2ImageJob(model=LEARNER_UNET, steps=settings.train_steps, batch_size=settings.train_batch, lr=2e-3,
                    warmup_steps=max(1, settings.train_steps // 10), dataset_size=settings.train_images,
                    cond_dropout=LEARNER_DROPOUT, two_object_fraction=0.0, seed=args.seed,
                    log_every=max(1, settings.train_steps // 15), checkpoint_every=settings.train_steps,
                    sample_every=settings.train_steps)


def caption_gain(model_pipe, prompts, timesteps=(100, 500, 900)):
    """How much the caption lowers the U-Net's denoising error, the information guidance amplifies:

        1 - L(c) / L(""),    L(c) = mean |target - f(z_t, t, c)|^2   (target: the noise, for eps-prediction)

    with z_t the latents of true renders of ``prompts`` noised to each t (the same noise for both).
    0: the caption tells the model nothing it uses, and guidance, which scales f(c) - f(""), has only
    noise to scale. Returns {t: gain}."""
    rendered = np.stack([shapes.render(shapes.parse_caption(p), model_pipe.vae.config.image_size, rng=(args.seed, i))
                         for i, p in enumerate(prompts)])
    z0 = model_pipe.encode(rendered)
    xp = backend.get_array_module(z0)
    cond, cond_mask = model_pipe.encode_prompts(prompts)
    empty, empty_mask = model_pipe.encode_prompts([""] * len(prompts))
    noise = backend.rng(args.seed).standard_normal(z0.shape, dtype=np.float32)
    gains = {}
    for t in timesteps:
        t_batch = xp.full(len(prompts), t)
        z_t = model_pipe.schedule.q_sample(z0, t_batch, noise)
        target = prediction_target(z0, noise, t_batch, model_pipe.schedule, model_pipe.prediction_type)
        with no_grad():
            error_text = float(((model_pipe.unet.forward(z_t, t_batch, cond, cond_mask) - target) ** 2).mean())
            error_empty = float(((model_pipe.unet.forward(z_t, t_batch, empty, empty_mask) - target) ** 2).mean())
        gains[t] = 1.0 - error_text / error_empty
    return gains


def train_and_judge(job, prompts):
    """Train ``job`` from scratch; sample one image per prompt at each LEARNER_SCALES from the result.
    Returns (FitResult, {scale: images}, {scale: accuracy_by_category table})."""
    result = run_text2image(job, progress=False)
    own = dataclasses.replace(pipe, unet=result.model)        # the shipped VAE and text encoder, your U-Net
    images = {scale: to_host(evaluate.generate(own, prompts, scale, settings.accuracy_steps, args.seed))
              for scale in LEARNER_SCALES}
    tables = {scale: evaluate.accuracy_by_category(evaluate.match_size(images[scale], judge.config.image_size),
                                                   prompts, judge) for scale in LEARNER_SCALES}
    return result, images, tables, caption_gain(own, prompts)


one_object_prompts = [p for p in captions.CATEGORY_PROMPTS if shapes.parse_caption(p)["num_objects"] == 1]
own_prompts = [p for p in spread(one_object_prompts, settings.learner_prompts) for _ in range(2)]
start = time.perf_counter()
own_result, own_images, own_tables, own_gain = train_and_judge(job, own_prompts)
shipped_gain = caption_gain(pipe, own_prompts)
print(f"\nyour U-Net: {own_result.model.num_parameters():,} parameters, {job.steps} steps of {job.batch_size} "
      f"latents ({job.steps * job.batch_size:,} examples, about {LEARNER_DROPOUT * job.steps * job.batch_size:,.0f} "
      f"of them with the empty caption) in {time.perf_counter() - start:.0f} s with its evaluation")
print(evaluate.format_categories({f"s = {scale:g}": own_tables[scale] for scale in LEARNER_SCALES}))
(first_step, first_loss), (last_step, last_loss) = own_result.history[0], own_result.history[-1]
colour = {scale: own_tables[scale]["single/colour"][0] for scale in LEARNER_SCALES}
blob_colour = {scale: pixel_colour_right(own_images[scale], own_prompts) for scale in LEARNER_SCALES}
guided_scale = LEARNER_SCALES[-1]
print(f"loss {first_loss:.3f} at step {first_step} -> {last_loss:.3f} at step {last_step}; colour right "
      + ", ".join(f"{colour[s]:.0%} at s = {s:g}" for s in LEARNER_SCALES)
      + f" (s = 0 is the unconditional model the empty captions taught, so its colours are chance, about 1 in "
        f"{len(shapes.COLOURS)}; the judge also needs one clean object, which a short run may not draw yet)")
print("the colour read from the pixels alone (the foreground's mean colour, a blob counts): "
      + ", ".join(f"{blob_colour[s]:.0%} at s = {s:g}" for s in LEARNER_SCALES))
print("how much the caption lowers the denoising error, 1 - L(c) / L(''), on true renders of the prompts noised to t:")
for t in own_gain:
    print(f"  t = {t:3d}: your U-Net {own_gain[t]:+6.1%}   the shipped U-Net {shipped_gain[t]:+6.1%}")
noisiest = max(own_gain)
if own_gain[noisiest] < shipped_gain[noisiest] / 2:
    print(f"a short run learns the pictures first (the loss falls) and to read the caption later: at "
          f"t = {noisiest} the caption lowers your model's error by {own_gain[noisiest]:.0%}, the shipped model's by "
          f"{shipped_gain[noisiest]:.0%}. Guidance, which scales f(c) - f(''), amplifies that little: the colours "
          f"read from the pixels go from {blob_colour[0.0]:.0%} right at s = 0 to {blob_colour[guided_scale]:.0%} at "
          f"s = {guided_scale:g} (own_samples.png, row by row), while the judge, which also wants one clean shape, "
          f"is stricter. --full trains {FULL.train_steps} steps of {FULL.train_batch} at {FULL.learner_channels} "
          f"channels")
else:
    print(f"your model reads its caption: at t = {noisiest} it lowers the error by {own_gain[noisiest]:.0%} (the "
          f"shipped model's: {shipped_gain[noisiest]:.0%}), so guidance has a direction to amplify")
assert args.smoke or last_loss < first_loss / 3, own_result.history
if settings.blob_gain is not None:
    print(f"claim: guidance moves your model's colours towards the prompt's: read from the pixels, s = "
          f"{guided_scale:g} >= s = 0 + {settings.blob_gain:.0%}")
    assert blob_colour[guided_scale] >= blob_colour[0.0] + settings.blob_gain, blob_colour
if settings.colour_gain is not None:
    print(f"claim: colour at s = {guided_scale:g} >= s = 0 + {settings.colour_gain:.0%}")
    assert colour[guided_scale] >= colour[0.0] + settings.colour_gain, colour

fig, axes = plt.subplots(1, 2, figsize=(12, 4))
steps_logged, losses = zip(*own_result.history)
axes[0].plot(steps_logged, losses, "o-")
axes[0].set(yscale="log", xlabel="training step", ylabel="loss (mean over the log window)",
            title=f"Your U-Net's training: L_simple, caption dropout p = {LEARNER_DROPOUT}")
for category in own_tables[0.0]:
    axes[1].plot(LEARNER_SCALES, [own_tables[s][category][0] for s in LEARNER_SCALES], "o-",
                 lw=2.5 if category == "overall" else 1.5, label=category)
axes[1].plot(LEARNER_SCALES, [blob_colour[s] for s in LEARNER_SCALES], "k--", label="colour read from the pixels")
axes[1].axhline(1 / len(shapes.COLOURS), color="grey", ls=":",
                label=f"chance for a colour (1 in {len(shapes.COLOURS)})")
axes[1].set(xlabel="guidance scale s", ylabel="accuracy (attribute classifier)", ylim=(-0.02, 1.02),
            xticks=LEARNER_SCALES, title=f"Your model after {job.steps} steps, {len(own_prompts)} one-object images "
                                         f"per scale\n(the classifier's lines lie on top of each other where equal)")
axes[1].legend(fontsize=8)
for ax in axes:
    ax.grid(alpha=0.3)
fig.tight_layout()
save_figure(fig, out / "own_training.png")

shown = own_prompts[::2][:6 if not args.smoke else 2]
fig, axes = plt.subplots(len(LEARNER_SCALES), len(shown), figsize=(1.9 * len(shown), 2.2 * len(LEARNER_SCALES)),
                         squeeze=False)
for r, scale in enumerate(LEARNER_SCALES):
    for c, p in enumerate(shown):
        i = own_prompts.index(p)
        show(axes[r, c], own_images[scale][i], p.replace(" on the", "\non the").replace(" at the", "\nat the")
             .replace(" in the", "\nin the") if r == 0 else None)
    axes[r, 0].set_ylabel(f"s = {scale:g}" + (" (uncond.)" if scale == 0 else ""), fontsize=9)
fig.suptitle(f"Your model after a short run ({job.steps} steps of {job.batch_size}): the same noise at each guidance "
             f"scale\n(at t = {noisiest} the caption lowers its denoising error by {own_gain[noisiest]:.0%}, the "
             f"shipped model's by {shipped_gain[noisiest]:.0%}: what guidance has to amplify)", fontsize=9)
fig.tight_layout()
save_figure(fig, out / "own_samples.png")


# %% 5. Guidance-scale sweep on the shipped model: the same noise, s = 0 (unconditional) to 7
sweep_prompts = ["a red circle on the left", "a small blue square at the top",
                 "a large yellow triangle in the center", "a purple square to the right of an orange circle"]
sweep = {scale: to_host(evaluate.generate(pipe, sweep_prompts, scale, settings.steps, args.seed))
         for scale in SCALES}
sweep_ok = {scale: [evaluate.prompt_accuracy(sweep[scale][i:i + 1], [p], judge)[0] == 1.0
                    for i, p in enumerate(sweep_prompts)] for scale in SCALES}
fig, axes = plt.subplots(len(sweep_prompts), len(SCALES), figsize=(2.0 * len(SCALES), 2.15 * len(sweep_prompts)),
                         squeeze=False)
for c, scale in enumerate(SCALES):
    for r, p in enumerate(sweep_prompts):
        verdict = "obeys" if sweep_ok[scale][r] else "misses"
        show(axes[r, c], sweep[scale][r], f"s = {scale:g}{' (uncond.)' if scale == 0 else ''}: {verdict}")
        if c == 0:
            axes[r, c].set_ylabel(p.replace(" to the", "\nto the").replace(" at the", "\nat the")
                                  .replace(" on the", "\non the").replace(" in the", "\nin the"), fontsize=8)
fig.suptitle("Classifier-free guidance eps_u + s (eps_c - eps_u): rows = prompts, columns = scale, same seed\n"
             "(obeys/misses: the attribute classifier's verdict)", fontsize=9)
fig.tight_layout()
save_figure(fig, out / "guidance_sweep.png")
for scale in SCALES:
    print(f"  s = {scale:g}: the classifier says {sum(sweep_ok[scale])} of {len(sweep_prompts)} sweep images obey")


# %% 6. The shipped model's prompt accuracy by category, against the guidance scale
# An average hides the failing case: accuracy per single-object attribute, per relation as the prompt says
# it, and colour-shape binding, on CATEGORY_PROMPTS (30 one-object prompts, 10 per relation).
category_prompts = spread(captions.CATEGORY_PROMPTS, settings.category_prompts)
prompts = [p for p in category_prompts for _ in range(settings.images_per_prompt)]
size = judge.config.image_size
rendered = np.stack([shapes.render(shapes.parse_caption(p), pipe.vae.config.image_size, rng=(args.seed, i))
                     for i, p in enumerate(prompts)])
tables = {"true renders": evaluate.accuracy_by_category(evaluate.match_size(rendered, size), prompts, judge)}
print(f"\n{len(prompts)} images per scale ({len(category_prompts)} prompts x {settings.images_per_prompt}), "
      f"{settings.accuracy_steps} DDIM steps")
for scale in settings.accuracy_scales:
    start = time.perf_counter()
    generated = evaluate.match_size(to_host(evaluate.generate(pipe, prompts, scale, settings.accuracy_steps,
                                                              args.seed)), size)
    tables[f"s = {scale:g}"] = evaluate.accuracy_by_category(generated, prompts, judge)
    print(f"  s = {scale:g}: overall {tables[f's = {scale:g}']['overall'][0]:.1%} "
          f"({time.perf_counter() - start:.0f} s)", flush=True)
print(evaluate.format_categories(tables))
scale_names = [f"s = {scale:g}" for scale in settings.accuracy_scales]
at4, at0 = tables["s = 4"], tables["s = 0"]


def mean_of(table, categories):
    """Mean accuracy over the categories the table has (NaN if none)."""
    values = [table[c][0] for c in categories if c in table]
    return float(np.mean(values)) if values else float("nan")


vertical = mean_of(at4, ("relation/above", "relation/below"))
horizontal = mean_of(at4, ("relation/to the left of", "relation/to the right of"))
print(f"at s = 4: single-object colour {at4['single/colour'][0]:.0%} and shape {at4['single/shape'][0]:.0%} "
      f"(claim: >= {settings.single_floor:.0%}); overall {at4['overall'][0]:.0%} against {at0['overall'][0]:.0%} "
      f"unguided (claim: >= + {settings.accuracy_gain:.0%})")
if vertical < horizontal - 0.2:
    why = ("the model draws both objects (see binding) but picks which one goes on top by a coin toss: its text "
           "encoder barely tells 'above' from 'below', so no guidance scale can fix it; better text states can")
else:
    why = ("above/below as good as left/right: the shipped text encoder was trained with hard negatives (the "
           "same two objects, swapped), so its states say which object is on top (data/pretrained/README.md)")
print(f"relations at s = 4: left/right {horizontal:.0%}, above/below {vertical:.0%}: {why}")
assert min(at4["single/colour"][0], at4["single/shape"][0]) >= settings.single_floor, at4
assert at4["overall"][0] >= at0["overall"][0] + settings.accuracy_gain, (at4, at0)

fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
groups = (("single object", [c for c in at4 if c.startswith("single/")] + ["overall"]),
          ("two objects", [c for c in at4 if c.startswith("relation/")] + ["binding"]))
for ax, (title, categories) in zip(axes, groups):
    for marker, category in zip("osv^D", categories):           # a marker each: equal lines stay visible
        if category not in at4:
            continue
        line, = ax.plot(settings.accuracy_scales, [tables[n][category][0] for n in scale_names], marker=marker,
                        ms=9 if category in ("overall", "binding") else 6, alpha=0.85,
                        lw=2.5 if category in ("overall", "binding") else 1.5,
                        label=f"{category.split('/')[-1]} ({at4[category][1]})")
        ax.plot([settings.accuracy_scales[-1] + 0.4], [tables["true renders"][category][0]], "_", ms=12,
                color=line.get_color())
    ax.set(xlabel="guidance scale s", title=f"{title} (n prompts in each category)",
           xticks=settings.accuracy_scales, ylim=(-0.02, 1.02))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
axes[0].set_ylabel("prompt accuracy (attribute classifier)")
fig.suptitle(f"Shipped model, accuracy by category: {len(prompts)} images per scale, {settings.accuracy_steps} DDIM "
             f"steps; the dash right of each line = true renders (the judge's ceiling)", fontsize=9)
fig.tight_layout()
save_figure(fig, out / "accuracy_vs_guidance.png")


# %% 7. A negative prompt: away from an attribute the prompt leaves open
open_prompt, negative = "a red circle", "a large red circle"
n = settings.negative_images


def pictures(prompt, negative_prompt):
    """n images from pipe.text_to_image (the same seed, so the same x_T, for both calls) as a host array."""
    tiles = pipe.text_to_image(prompt, negative_prompt=negative_prompt, steps=settings.steps,
                               guidance_scale=NEGATIVE_GUIDANCE, seed=args.seed + 2, num_images=n)
    return from_uint8(np.stack([np.asarray(tile) for tile in tiles]))


plain, steered = pictures(open_prompt, ""), pictures(open_prompt, negative)
large = shapes.SIZES.index("large")
fractions = {}
for label, batch in (("negative ''", plain), (f"negative {negative!r}", steered)):
    predicted = evaluate.predict_labels(judge, evaluate.match_size(batch, size))
    fractions[label] = (float((predicted["size"] == large).mean()),
                        evaluate.prompt_accuracy(evaluate.match_size(batch, size), [open_prompt] * n, judge)[0])
    print(f"{open_prompt!r}, {label:28}: large {fractions[label][0]:5.1%}, "
          f"still a red circle {fractions[label][1]:5.1%}")
(large_plain, red_plain), (large_steered, red_steered) = fractions.values()
print(f"the negative prompt moves the share of large circles by {large_steered - large_plain:+.1%} "
      f"(claim: falls by >= {settings.negative_drop:.0%}) while the prompt stays obeyed")
if red_steered < red_plain:
    print(f"  ({red_plain - red_steered:.0%} fewer images obey the prompt: the push goes away from everything the "
          f"negative prompt says, so some escape it with two small circles instead of one)")
assert large_plain - large_steered >= settings.negative_drop, fractions
if not args.smoke:
    assert red_steered >= 0.8, fractions

shown = min(n, 8)
fig, axes = plt.subplots(2, shown, figsize=(1.5 * shown, 3.6), squeeze=False)
for r, (label, batch) in enumerate(zip(fractions, (plain, steered))):
    for c in range(shown):
        show(axes[r, c], batch[c])
    axes[r, 0].set_ylabel(label.replace("negative ", "negative\n"), fontsize=8)
fig.suptitle(f"prompt {open_prompt!r}, guidance {NEGATIVE_GUIDANCE:g}, same seeds: large {large_plain:.0%} -> "
             f"{large_steered:.0%} with the negative prompt", fontsize=9)
fig.tight_layout()
save_figure(fig, out / "negative_prompt.png")

# %% Exercises
# 1. Guidance by hand. Fill in my_guidance: eps_uncond + s (eps_cond - eps_uncond). The cell checks it against
#    minidiff/diffusion/guidance.py guided_prediction at s = 0, 1 and 4. Then the negative prompt: show on paper
#    that eps_n + s (eps_c - eps_n) = eps_u + s (eps_c - eps_u) - (s - 1) (eps_n - eps_u).
# 2. Predict the causal encoder. Which token positions (0 = <start>) of "a small blue square at the top" change
#    their state when "small" becomes "large"? Write your answer in predicted_changes before you run the cell;
#    it checks you against the text encoder. Which of those tokens would you expect to light up on the square?
# 3. No dropout, no guidance. Predict what eps_theta(z, t, "") is for a model that never saw an empty caption,
#    then run with MINIDIFF_EXERCISE=3: your U-Net trains again with cond_dropout = 0 and the table compares
#    its colour and shape accuracy at s = 0, 1, 3 with the model above. Where does guidance help, where not?


def my_guidance(eps_uncond, eps_cond, scale):
    """Your code: the classifier-free guided noise prediction."""
    return None


predicted_changes = None          # your answer to exercise 2: a list of positions, e.g. [2, 3]

rng = np.random.default_rng(args.seed)
eps_u, eps_c = rng.standard_normal((2, 2, 4, 8, 8)).astype(np.float32)
if my_guidance(eps_u, eps_c, 4.0) is None:
    print("exercise 1: fill in my_guidance")
else:
    for scale in (0.0, 1.0, 4.0):
        assert np.allclose(my_guidance(eps_u, eps_c, scale), guidance.guided_prediction(eps_u, eps_c, scale),
                           atol=1e-5), scale
    print("exercise 1: correct at s = 0, 1 and 4")

small, large = pipe.encode_prompts(["a small blue square at the top", "a large blue square at the top"])[0]
small, large = backend.to_numpy(small), backend.to_numpy(large)
real_tokens = len(pipe.tokenizer.tokens("a small blue square at the top")) + 2
moved = np.linalg.norm(small - large, axis=1)[:real_tokens] / np.linalg.norm(small[:real_tokens], axis=1)
measured = [int(p) for p in np.flatnonzero(moved > 1e-5)]
if predicted_changes is None:
    print("exercise 2: fill in predicted_changes")
else:
    assert sorted(predicted_changes) == measured, f"the encoder changes positions {measured}"
    print(f"exercise 2: correct, positions {measured} change")

if exercise == "3":
    bare_result, _, bare_tables, _ = train_and_judge(dataclasses.replace(job, cond_dropout=0.0), own_prompts)
    print("exercise 3: your model with and without conditioning dropout")
    print(evaluate.format_categories({**{f"p={LEARNER_DROPOUT} s={s:g}": own_tables[s] for s in LEARNER_SCALES},
                                      **{f"p=0 s={s:g}": bare_tables[s] for s in LEARNER_SCALES}}))

print(f"\nlesson 10 done in {time.perf_counter() - lesson_start:.0f} s")
