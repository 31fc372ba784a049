"""Lesson 09: from words to vectors -- a BPE tokenizer, a transformer text encoder, and mini-CLIP.

Stable Diffusion never sees your prompt as text. Three steps turn it into numbers the U-Net's
cross-attention can read:

1. Tokenizer (byte-level BPE). Any text is a sequence of UTF-8 bytes, so 256 base tokens can
   spell anything. Training repeats one rule: find the most frequent adjacent pair of tokens in
   the corpus and merge it into a new token. On shapes captions, after 125 merges every word of
   the grammar is a single token (vocabulary 3 specials + 256 bytes + 125 = 384), while an unseen
   word still falls apart into known pieces. A prompt becomes <start> tokens <end> <pad>...

2. Text encoder (a small transformer, like CLIP's text tower).
       x_0 = E[ids] + P                          token + position embeddings      (B, L, W)
       x   = x + Attn(LN(x), causal & pad mask)  pre-LN self-attention  } N blocks
       x   = x + MLP(LN(x))                      pre-LN feed-forward    }
       states = LN(x),  pooled = states[end token]
   The causal mask lets token i see tokens 0..i only, so the end token's state has read the
   whole prompt: it is the sentence vector. The U-Net later reads all the states.

3. Contrastive pretraining (mini-CLIP). An image encoder and the text encoder map a batch of B
   images and their captions to unit vectors u_i, v_j; the logits s u_i . v_j (s = 1/temperature,
   learned) should be largest on the true pairs. The symmetric InfoNCE loss is a cross-entropy
   along each row (image -> which caption?) and each column (caption -> which image?):
       L = 1/2 [CE_rows + CE_cols],   L = log B when the embeddings carry no information.
   Captions that leave attributes out ("a red circle") describe several images of a batch; we
   count every image a caption describes as a positive (targets spread uniformly over them).

We then measure text -> image retrieval on held-out batches of 64: for each caption, is the
most similar image one that the caption describes? Chance is about 2%. Last, retrieval_examples.png
shows the 6 best of 286 held-out images for five prompts, framed green when the prompt describes
the image; every prompt has at least 6 such images in the pool, and the printed precision is the
share of green frames. The last cell holds exercises.

Settings: --smoke (seconds), --quick (the small CLIPConfig.quick, 300 steps: about a minute on a
2-core CPU), no flag (CLIPConfig.shipped, 3000 steps: meant for a GPU, --device gpu).

Read beside: minidiff/models/tokenizer.py, minidiff/models/text_encoder.py,
minidiff/models/clip.py, minidiff/datasets/captions.py (which caption fits which image),
minidiff/train/jobs.py (run_clip) and minidiff/evaluate/retrieval.py (retrieval_accuracy).
"""
# %% setup: `import minidiff` from this clone, as a script or in a notebook kernel (which has no __file__)
import sys, pathlib  # noqa: E401
_lessons = pathlib.Path(globals().get("__file__", "lessons/_")).resolve().parent
sys.path.insert(0, str(next((p for p in (_lessons.parent, pathlib.Path.cwd(), pathlib.Path.cwd().parent)
                             if (p / "minidiff" / "__init__.py").is_file()), _lessons.parent)))
import minidiff  # noqa: F401,E402  (before NumPy: it sets how OpenBLAS's threads wait, minidiff/__init__.py)

import dataclasses
import math
import time

import numpy as np

from minidiff import backend, evaluate, train
from minidiff.datasets import shapes
from minidiff.datasets.captions import (POSITION_PHRASES, canonical_labels, caption_matches, label_matches,
                                        label_matrix, labels_from_attributes, parse_caption)
from minidiff.models.clip import CLIPConfig, MiniCLIP, contrastive_loss
from minidiff.models.text_encoder import TextEncoderConfig
from minidiff.models.tokenizer import WORD_PATTERN, BPETokenizer, normalise
from minidiff.nn.module import no_grad
from minidiff.utils import output_dir, parse_lesson_args, pyplot, save_figure, to_uint8

args = parse_lesson_args('Lesson 09: from words to vectors -- a BPE tokenizer, a transformer text encoder, and mini-CLIP.')
out = output_dir("09_text_encoder", args.out)
plt = pyplot()

if args.smoke:
    CONFIG = CLIPConfig(text=TextEncoderConfig(width=32, num_layers=1, num_heads=2, mlp_ratio=2),
                        image_size=16, channels=(8, 16, 16), norm_groups=4, embed_dim=16)
    STEPS, LR, EVAL_BATCHES = 6, 3e-3, 1
elif args.quick:
    CONFIG, STEPS, LR, EVAL_BATCHES = CLIPConfig.quick(), 300, 2e-3, 8
else:
    CONFIG, STEPS, LR, EVAL_BATCHES = CLIPConfig.shipped(), 3000, 1e-3, 16
BATCH = 64

# %% 1. Train the tokenizer on shapes captions
corpus = shapes.caption_corpus(20_000, seed=args.seed)
tokenizer = BPETokenizer.train(corpus, CONFIG.text.vocab_size)
print(f"tokenizer: {tokenizer.vocab_size} ids = 3 specials + 256 bytes + {len(tokenizer.merges)} merges")
print("first merges (most frequent pairs first):")
for rank, (a, b) in enumerate(tokenizer.merges[:10]):
    new = tokenizer.vocab[259 + rank]
    print(f"  {rank:2d}: {tokenizer.vocab[a]!r:8} + {tokenizer.vocab[b]!r:8} -> {new!r}")
prompt = "A small red circle above a blue square"
ids, mask = tokenizer.encode(prompt, max_length=CONFIG.text.max_length)
print(f"prompt {prompt!r}\n  pieces {tokenizer.tokens(prompt)}\n  ids    {ids.tolist()}\n"
      f"  mask   {mask.astype(int).tolist()}")
unseen = "a violet hexagon"
print(f"an unseen phrase {unseen!r} -> pieces {tokenizer.tokens(unseen)}")
assert tokenizer.decode(ids) == normalise(prompt), "decode(encode(x)) gives back the normalised text"
# words as the tokenizer splits them before merging (" red", ","): one token each?
split = [c for c in corpus[:5000] if len(tokenizer.encode_text(c)) != len(WORD_PATTERN.findall(normalise(c)))]
words = {w for caption in corpus for w in WORD_PATTERN.findall(normalise(caption))}
print(f"{len(words)} distinct words in the corpus; captions with a word split in pieces: {len(split)} of 5000")
assert not split, f"every caption word is one token after all merges, but not in {split[0]!r}"
lengths = tokenizer.encode_batch(corpus[:5000])[1].sum(axis=1)
print(f"caption length in tokens (with <start>, <end>): mean {lengths.mean():.1f}, max {lengths.max()} "
      f"<= max_length {CONFIG.text.max_length}")
assert lengths.max() <= CONFIG.text.max_length

# %% 2. The text encoder: a causal transformer
model = MiniCLIP(CONFIG, seed=args.seed)
encoder = model.text_encoder
print(f"text encoder: {CONFIG.text.num_layers} blocks of width {CONFIG.text.width}, "
      f"{encoder.num_parameters():,} parameters; image encoder {model.image_encoder.num_parameters():,}")
ids2, mask2 = tokenizer.encode_batch(["a red circle above a blue square", "a red circle above a blue triangle"],
                                     max_length=CONFIG.text.max_length)
encoder.eval()
states, pooled = encoder(ids2, mask2)
encoder.train()
first_diff = int(np.argmax(ids2[0] != ids2[1]))
before = float(np.abs(states[0, :first_diff] - states[1, :first_diff]).max())
after = float(np.abs(states[0, first_diff] - states[1, first_diff]).max())
print(f"states {states.shape}, pooled {pooled.shape}. The prompts differ first at token {first_diff}: "
      f"max |state difference| before it {before:.1e}, at it {after:.2f}")
assert before < 1e-5 < after, "the causal mask: a later word cannot change an earlier state"

# %% 3. The contrastive loss before training is about log B
batch = shapes.sample(BATCH, seed=(args.seed, 10 ** 6), size=CONFIG.image_size)
ids_b, mask_b = tokenizer.encode_batch(batch["captions"], max_length=CONFIG.text.max_length)
positives = caption_matches(batch["labels"], batch["captions"])
with no_grad():
    loss0, _ = model(batch["images"], ids_b, mask_b, positives)
print(f"loss at initialisation {float(loss0):.3f} vs log B = log {BATCH} = {math.log(BATCH):.3f} "
      f"(random embeddings: no better than a uniform guess, often a little worse since s = "
      f"{1 / model.temperature:.1f} sharpens random logits); each caption describes "
      f"{positives.sum(axis=0).mean():.2f} images of the batch on average")
assert float(loss0) > 0.9 * math.log(BATCH), "an untrained model cannot beat chance by much"

# %% 4. Pretrain mini-CLIP on shapes, with the loop that trains every model (minidiff/train/loop.py)
start = time.perf_counter()
checkpoints = out / "checkpoint"
checkpoints.mkdir(parents=True, exist_ok=True)
tokenizer.save(checkpoints / "lesson_tokenizer.json")
for name in ("clip.npz", "text_encoder.npz"):          # a rerun of the lesson trains afresh
    (checkpoints / name).unlink(missing_ok=True)
job = dataclasses.replace(train.ClipJob.quick(), model=CONFIG, steps=STEPS, batch_size=BATCH, lr=LR,
                          seed=args.seed, warmup_steps=max(1, STEPS // 20), log_every=max(1, STEPS // 20),
                          dataset_size=min(STEPS * BATCH, 50_000),
                          tokenizer=str(checkpoints / "lesson_tokenizer.json"))
result = train.run_clip(job, out=checkpoints, progress=not args.smoke)
model = result.model
steps_logged = [step for step, _ in result.history]
losses = [loss for _, loss in result.history]
temperatures = [m["temperature"] for m in result.metrics]
print(f"{STEPS} steps of batch {BATCH} in {result.seconds:.0f} s ({result.seconds / max(1, result.steps_run):.2f} "
      f"s/step, device {backend.device()}); loss {losses[0]:.3f} -> {losses[-1]:.3f}, "
      f"temperature {temperatures[0]:.3f} -> {temperatures[-1]:.3f}")
print(f"saved {', '.join(str(checkpoints / name) for name in ('clip.npz', 'text_encoder.npz', 'tokenizer.json'))}")
assert losses[-1] < losses[0]

fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
axes[0].plot(steps_logged, losses)
axes[0].axhline(math.log(BATCH), color="grey", ls="--", label=f"log {BATCH} (no information)")
axes[0].set(xlabel="step", ylabel="symmetric InfoNCE loss", title="contrastive loss (mean over each log window)")
axes[0].legend()
axes[1].plot(steps_logged, [m["heldout_top1"] for m in result.metrics])
axes[1].set(xlabel="step", ylabel="fraction of captions", title="held-out text -> image top-1 (64 pairs)",
            ylim=(0, 1))
axes[2].plot(steps_logged, temperatures)
axes[2].set(xlabel="step", ylabel="1 / s", title="learned temperature")
fig.tight_layout()
save_figure(fig, out / "training_curves.png")

# %% 5. Retrieval on held-out pairs
result = evaluate.retrieval_accuracy(model, tokenizer, EVAL_BATCHES, 64, args.seed)
print(f"held-out text -> image top-1 in batches of 64 ({EVAL_BATCHES} batches): {result['top1']:.1%} "
      f"(own image: {result['strict_top1']:.1%}); chance {result['chance']:.1%}")
if args.smoke:
    assert 0.0 <= result["top1"] <= 1.0
else:
    assert result["top1"] > 0.5 and result["top1"] > 20 * result["chance"], result

# a similarity matrix: 12 held-out images (columns) against their 12 captions (rows)
show = shapes.sample(12, seed=(args.seed, 2 * 10 ** 6), size=CONFIG.image_size)
ids_s, mask_s = tokenizer.encode_batch(show["captions"], max_length=CONFIG.text.max_length)
similarity = backend.to_numpy(model.similarity(show["images"], ids_s, mask_s)).T     # (captions, images)
fig, ax = plt.subplots(figsize=(10, 8.6))
im = ax.imshow(similarity, cmap="viridis", vmin=-1, vmax=1)
for i, image in enumerate(to_uint8(show["images"])):        # each image sits above its column
    ax.imshow(image, extent=(i - 0.45, i + 0.45, -0.6, -1.5), interpolation="nearest")
ax.set_xlim(-0.5, 11.5)
ax.set_ylim(11.5, -1.6)
ax.set_yticks(range(12), show["captions"], fontsize=8)
ax.set_xticks(range(12), [f"image {i}" for i in range(12)], rotation=90, fontsize=8)
ax.set(xlabel="image (drawn above its column)", ylabel="caption",
       title="caption-image cosine similarity (white box: each caption's most similar image)")
for j, i in enumerate(similarity.argmax(axis=1)):
    ax.add_patch(plt.Rectangle((i - 0.5, j - 0.5), 1, 1, fill=False, ec="white", lw=1.5))
fig.colorbar(im, ax=ax, fraction=0.03, label="cosine similarity")
save_figure(fig, out / "similarity_matrix.png")
diagonal_is_best = float((similarity.argmax(axis=1) == np.arange(12)).mean())
print(f"similarity figure: the caption's own image is its best match in {diagonal_is_best:.0%} of rows")

# %% 6. Which words does the embedding separate?
# "a <colour> <shape>" prompts: do prompts sharing a colour (or a shape) sit closer together?
pairs = [(c, s) for c in shapes.COLOURS for s in shapes.SHAPES]
ids_p, mask_p = tokenizer.encode_batch([f"a {c} {s}" for c, s in pairs], max_length=CONFIG.text.max_length)
emb = backend.to_numpy(model.encode_text(ids_p, mask_p))                               # (18, D)
cos = emb @ emb.T
same_colour = np.array([[a[0] == b[0] for b in pairs] for a in pairs])
same_shape = np.array([[a[1] == b[1] for b in pairs] for a in pairs])
off = ~np.eye(len(pairs), dtype=bool)
stats = {"same colour, other shape": cos[same_colour & ~same_shape].mean(),
         "same shape, other colour": cos[same_shape & ~same_colour].mean(),
         "nothing in common": cos[off & ~same_colour & ~same_shape].mean()}
for name, value in stats.items():
    print(f"  mean cosine, {name:26}: {value:+.3f}")
index = {pair: i for i, pair in enumerate(pairs)}
red_circle = index[("red", "circle")]
print(f"  'a red circle' vs 'a red square' {cos[red_circle, index[('red', 'square')]]:+.3f}, "
      f"vs 'a red triangle' {cos[red_circle, index[('red', 'triangle')]]:+.3f}, "
      f"vs 'a blue circle' {cos[red_circle, index[('blue', 'circle')]]:+.3f}"
      "  (colour is learnt first; circle vs square, which differ only in the corners of a "
      "few-pixel shape, last)")
# position prompts: "a red circle <position>"
positions = list(shapes.POSITIONS)
ids_q, mask_q = tokenizer.encode_batch([f"a red circle {POSITION_PHRASES[p][0]}" for p in positions],
                                       max_length=CONFIG.text.max_length)
emb_q = backend.to_numpy(model.encode_text(ids_q, mask_q))
cos_q = emb_q @ emb_q.T

centred = emb - emb.mean(axis=0)
_, _, vt = np.linalg.svd(centred, full_matrices=False)
xy = centred @ vt[:2].T                                                                 # 2-D PCA
fig, axes = plt.subplots(1, 3, figsize=(19, 5.6), gridspec_kw={"width_ratios": [1.1, 1, 0.8]})
markers = dict(zip(shapes.SHAPES, ("o", "s", "^")))
for (c, s), (x, y) in zip(pairs, xy):
    axes[0].scatter(x, y, s=120, marker=markers[s], color=shapes.RGB[shapes.COLOURS.index(c)], edgecolor="k")
# one name per colour, beside its three points and away from the middle (a circle and a square of
# one colour nearly coincide, so a name per point would be printed over its neighbour's)
for c in shapes.COLOURS:
    centre = xy[[i for i, pair in enumerate(pairs) if pair[0] == c]].mean(axis=0)
    away = centre / (np.linalg.norm(centre) + 1e-9)
    axes[0].annotate(c, centre, textcoords="offset points", xytext=tuple(32 * away), fontsize=9,
                     ha="center", va="center")
for s, marker in markers.items():
    axes[0].scatter([], [], s=80, marker=marker, color="w", edgecolor="k", label=s)
axes[0].legend(title="shape word", fontsize=8, loc="best")
axes[0].margins(0.18)
axes[0].set(xlabel="principal component 1", ylabel="principal component 2",
            title='text embeddings of "a <colour> <shape>" (2-D PCA)')
im = axes[1].imshow(cos, cmap="viridis", vmin=-1, vmax=1)
axes[1].set_xticks(range(len(pairs)), [f"{c} {s}" for c, s in pairs], rotation=90, fontsize=7)
axes[1].set_yticks(range(len(pairs)), [f"{c} {s}" for c, s in pairs], fontsize=7)
axes[1].set(title='cosine similarity of "a <colour> <shape>" prompts')
im = axes[2].imshow(cos_q, cmap="viridis", vmin=-1, vmax=1)
axes[2].set_xticks(range(5), positions)
axes[2].set_yticks(range(5), positions)
axes[2].set(title='cosine similarity of "a red circle <position>"')
for i in range(5):
    for j in range(5):
        axes[2].text(j, i, f"{cos_q[i, j]:.2f}", ha="center", va="center", color="w", fontsize=8)
fig.colorbar(im, ax=axes[2], fraction=0.046, label="cosine similarity")
save_figure(fig, out / "word_embeddings.png")
off5 = ~np.eye(5, dtype=bool)
print(f"position prompts: mean off-diagonal cosine {cos_q[off5].mean():+.3f} (1 would mean the position word is ignored)")
if not args.smoke:
    assert stats["same colour, other shape"] > stats["nothing in common"]
    assert stats["same shape, other colour"] > stats["nothing in common"]
    assert cos_q[off5].mean() < 0.9, "the embedding must tell positions apart"

# %% 7. Retrieval examples: the best images for a few prompts out of a held-out pool
# The pool: 256 random held-out scenes, plus SIX renderings of each prompt (their own random sizes and
# jitter), so every prompt has at least 6 images that fit it and a perfect retriever frames all 6 green.
# "Fits" compares scenes in canonical form: "a purple square below a yellow circle" is the same picture as
# "a yellow circle above a purple square" (captions.canonical_labels), so it counts as a fit for either.
queries = ["a red circle on the left", "a small blue square at the top", "a large green triangle",
           "a yellow circle above a purple square", "an orange triangle to the left of a blue circle"]
TOP = 6
pool = shapes.sample(256, seed=(args.seed, 3 * 10 ** 6), size=CONFIG.image_size)
extra_attributes = [shapes.parse_caption(q) for q in queries for _ in range(TOP)]
extra = [shapes.render(a, size=CONFIG.image_size, rng=(args.seed, k // TOP, k % TOP))
         for k, a in enumerate(extra_attributes)]
pool_images = np.concatenate([pool["images"], np.stack(extra)])                    # (286, 3, S, S)
pool_labels = {key: np.concatenate([pool["labels"][key], labels_from_attributes(extra_attributes)[key]])
               for key in pool["labels"]}


def describes(image_labels, texts):
    """(N_img, N_txt) bool: the caption states nothing the picture contradicts, both in canonical form."""
    return label_matches(label_matrix(canonical_labels(image_labels)),
                         label_matrix(canonical_labels(labels_from_attributes([parse_caption(t) for t in texts]))))


match_r = describes(pool_labels, queries)                                           # (286, queries)
assert (match_r[len(pool["images"]):].reshape(len(queries), TOP, len(queries))
        == np.eye(len(queries), dtype=bool)[:, None, :]).all(), "each rendering fits its own prompt, and only it"
flipped = int((describes(pool_labels, queries) != caption_matches(pool_labels, queries)).sum())
print(f"pool of {len(pool_images)}: {flipped} images fit a prompt only when 'B below A' counts as 'A above B'")
ids_r, mask_r = tokenizer.encode_batch(queries, max_length=CONFIG.text.max_length)
scores = backend.to_numpy(model.similarity(pool_images, ids_r, mask_r))             # (286, queries)
fig, axes = plt.subplots(len(queries), TOP, figsize=(11, 1.4 * len(queries)))
precision = []                  # fraction of the top 6 that fit: the green frames (6 or more fit every prompt)
for q, query in enumerate(queries):
    best = np.argsort(-scores[:, q])[:TOP]
    for k, i in enumerate(best):
        ax = axes[q, k]
        ax.imshow(to_uint8(pool_images[i])[0], interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for side in ax.spines.values():
            side.set(color="green" if match_r[i, q] else "red", lw=3)
    precision.append(float(match_r[best, q].mean()))
    axes[q, 0].set_ylabel(f"{query}\n{int(match_r[best, q].sum())}/{TOP} fit", rotation=0, ha="right",
                          va="center", fontsize=9)
    print(f"  {query!r}: {int(match_r[best, q].sum())}/{TOP} of the top images fit "
          f"({int(match_r[:, q].sum())} of {len(pool_images)} in the pool do)")
frames = np.mean(precision)
fig.suptitle(f"top-{TOP} of {len(pool_images)} held-out images per prompt: green frame = the prompt describes it "
             f"({frames:.0%} of the frames are green)")
fig.tight_layout(rect=(0, 0, 1, 0.97))
save_figure(fig, out / "retrieval_examples.png")
print(f"precision in the top {TOP} (the green frames of retrieval_examples.png): {frames:.2f}; every prompt has "
      f">= {TOP} fitting images in the pool, so 1.00 would be all green")
assert match_r.sum(axis=0).min() >= TOP
if not args.smoke:
    assert frames > 0.6, precision
print(f"lesson wall time {time.perf_counter() - start:.0f} s of training and evaluation")


# %% Exercises
# 1. The one rule of BPE. Fill in merge_pair: replace every adjacent (a, b) in a token list, left to right,
#    by new_id (what BPETokenizer.train repeats; minidiff/models/tokenizer.py). The cell checks a few cases,
#    among them an overlap: merging (1, 1) in [1, 1, 1] gives [new, 1], not [1, new].
# 2. InfoNCE by hand. Fill in info_nce: given logits (B, B) with the true pairs on the diagonal, return
#    1/2 (mean cross-entropy of the rows + of the columns). The cell checks it against
#    models/clip.py contrastive_loss on random embeddings. Predict first: what is it for all-zero logits?
# 3. Count the frames. Fill in precision_at_k: for scores (N_img, N_txt) and fits (N_img, N_txt) bool, the mean
#    over prompts of the fraction of each prompt's k best images that fit. The cell checks it against the
#    green frames of retrieval_examples.png. Why did dividing by min(k, number that fit) once give 1.00
#    beside a figure full of red frames?


def merge_pair(tokens, pair, new_id):
    """Your code: a new list with every (pair[0], pair[1]) replaced by new_id, scanning left to right."""
    return None


def info_nce(logits):
    """Your code: symmetric InfoNCE of (B, B) logits whose diagonal holds the true pairs."""
    return None


def precision_at_k(scores, fits, k):
    """Your code: mean over columns of the fraction of the k highest-scoring rows that fit."""
    return None


cases = [(([1, 2, 1, 2, 3], (1, 2), 9), [9, 9, 3]), (([1, 1, 1], (1, 1), 9), [9, 1]), (([3, 1], (1, 2), 9), [3, 1])]
if merge_pair(*cases[0][0]) is None:
    print("exercise 1: fill in merge_pair")
else:
    for case, expected in cases:
        assert list(merge_pair(*case)) == expected, (case, merge_pair(*case), expected)
    print("exercise 1: correct")
check_rng = np.random.default_rng(args.seed)
u, v = check_rng.standard_normal((2, 8, 16)).astype(np.float32)
reference, check_logits, _ = contrastive_loss(u, v, np.asarray(np.log(10.0), np.float32))
answer = info_nce(backend.to_numpy(check_logits).astype(np.float64))
if answer is None:
    print("exercise 2: fill in info_nce")
else:
    assert abs(float(answer) - float(reference)) < 1e-4, (float(answer), float(reference))
    print(f"exercise 2: correct ({float(answer):.4f})")
answer = precision_at_k(scores, match_r, TOP)
if answer is None:
    print("exercise 3: fill in precision_at_k")
else:
    assert abs(float(answer) - frames) < 1e-9, (float(answer), frames)
    print(f"exercise 3: correct ({float(answer):.2f}, as the figure's green frames)")
