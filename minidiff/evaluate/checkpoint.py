"""``python -m minidiff evaluate CHECKPOINT``: sample a checkpoint and score it against real images."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import backend, zoo
from ..datasets import captions, shapes
from ..diffusion import samplers
from .frechet import frechet_distance_from_features
from .judge import (DEFAULT_CLASSIFIER, HELDOUT_SEED, accuracy_by_category, classifier_features, match_size,
                    format_categories, prompt_accuracy)
from .digits import evaluate_digits, unconditional_sampler
from .retrieval import format_probe, relation_probe, retrieval_accuracy
from .sampling import generate, sample_unconditional  # noqa: F401  (evaluate.generate, as before)


# ------------------------------------------------------------------------ evaluating a checkpoint
def load_classifier(path=DEFAULT_CLASSIFIER, device=None):
    """The AttributeClassifier in a classifier checkpoint (``python -m minidiff train classifier``)."""
    return zoo.load_classifier(path, device)


def _sibling_or_recorded(ckpt, file_name, recorded):
    """An input model of a checkpoint: the file beside it (as `train all` lays them out), else
    the path recorded in its config."""
    beside = Path(ckpt.path).parent / file_name
    return beside if beside.exists() else Path(recorded or beside)


def evaluate_checkpoint(path, num_images: int = 512, steps: int = 50, sampler: str = "ddim",
                        guidance_scales=(1.0, 2.0, 4.0, 7.5), seed: int = 0, classifier=None,
                        device=None, batch_size: int = 64, verbose: bool = True, spacing: str = "leading",
                        clip_x0: bool = False) -> dict:
    """Sample a pixel, latent or text-to-image checkpoint and score it against real shapes images
    (a checkpoint trained on ``--data digits``: against the held-out digits, judged by the
    digit_classifier.npz beside it; see ``digits.evaluate_digits``).

    ``spacing`` (every model) and ``clip_x0`` (pixel models only) go to ``samplers.sample``;
    ``batch_size`` is the number of images sampled at once.

    Prints and returns {"reference_fd": FD between two independent real sets of the same size (the
    noise floor), "fd": ... (unconditional models) or, for text-to-image (prompts cycling through
    FIXED_PROMPTS), "reference_accuracy" (the prompt accuracy of true renders of the prompts: the
    classifier's ceiling) and "guidance": {scale: {"fd", "accuracy", "per_attribute"}}}.
    ``classifier``: the judge's checkpoint; None: the shipped judge of the model's image size
    (``zoo.judge_path``: classifier64.npz for 64x64 images, classifier.npz otherwise).
    ``device``: where to run (None: the current device; the caller's device is left as it was).
    """
    with backend.using(device):
        return _evaluate_checkpoint(path, num_images, steps, sampler, guidance_scales, seed, classifier,
                                    batch_size, verbose, spacing, clip_x0)


def _evaluate_checkpoint(path, num_images, steps, sampler, guidance_scales, seed, classifier, batch_size,
                         verbose, spacing, clip_x0):
    from ..diffusion.schedule import NoiseSchedule
    if num_images < 2:
        raise ValueError(f"evaluate: need at least 2 images for a Fréchet distance, got {num_images}")
    if steps < 1:
        raise ValueError(f"evaluate: steps must be >= 1, got {steps}")
    if any(not g >= 0 for g in guidance_scales):
        raise ValueError(f"evaluate: guidance scales must be >= 0, got {list(guidance_scales)}")
    if spacing not in samplers.SPACINGS:
        raise ValueError(f"evaluate: spacing must be one of {samplers.SPACINGS}, got {spacing!r}")
    model, ckpt = zoo.load_trained(path)
    job = ckpt.config["job"]
    say = print if verbose else (lambda *a, **k: None)
    if job == "clip":
        return _evaluate_clip(model, ckpt, num_images, seed, say)
    if job not in ("pixel", "latent", "text2image"):
        raise ValueError(f"evaluate: {path} is a {job!r} checkpoint; give a pixel, latent, text2image or clip one")
    if clip_x0 and job != "pixel":
        raise ValueError(f"evaluate: clip_x0=True clips x0 predictions to [-1, 1], which only suits pixel "
                         f"models; {path} is a {job!r} checkpoint (its x0 is a latent)")
    recorded = ckpt.config.get("train", {})
    recorded = recorded if isinstance(recorded, dict) else {}
    data = recorded.get("data", "shapes")
    if data not in ("shapes", "digits"):
        raise ValueError(f"evaluate: {path} was trained on --data {data}, whose images carry no labels to "
                         "judge samples by; evaluate judges models of shapes and of digits")
    diffusion = zoo.diffusion_settings(ckpt)
    schedule = NoiseSchedule.make(diffusion["schedule"], diffusion["num_steps"])
    prediction_type = diffusion["prediction_type"]
    digit_judge, digit_judge_path = _digit_judge(path, ckpt) if data == "digits" else (None, None)
    vae = None
    if job in ("latent", "text2image"):
        vae = zoo.load_vae(_sibling_or_recorded(ckpt, zoo.FILES["vae"], recorded.get("vae")))
    image_size = vae.config.image_size if vae is not None else model.config.image_size
    if digit_judge is None:
        classifier = zoo.judge_path(image_size) if classifier is None else classifier
        judge = load_classifier(classifier)
        say(f"judged by {classifier}")
    if digit_judge is not None:
        say(f"evaluate {path} ({job} on digits, step {ckpt.step}): {sampler} {steps} steps, {spacing} spacing"
            + (", x0 clipped" if clip_x0 else "") + f"; judged by {digit_judge_path}")
        sampling = dict(steps=steps, seed=seed, sampler=sampler, batch_size=batch_size, spacing=spacing)
        if job == "text2image":
            pipe = _pipeline(model, ckpt, vae, schedule, prediction_type, recorded)
            scores = evaluate_digits(digit_judge, num_images, image_size, say, pipe=pipe,
                                     guidance_scales=guidance_scales, **sampling)
        else:
            sample = unconditional_sampler(model, schedule, _unconditional_shape(model), _decoder(vae),
                                           prediction_type=prediction_type, clip_x0=clip_x0, **sampling)
            scores = evaluate_digits(digit_judge, num_images, image_size, say, sample=sample)
        return {"job": job, **scores}
    size = judge.config.image_size
    real = shapes.sample(num_images, seed=(seed, HELDOUT_SEED), size=image_size)["images"]
    real_features = classifier_features(judge, match_size(real, size))
    other = shapes.sample(num_images, seed=(seed, HELDOUT_SEED + 1), size=image_size)["images"]
    results = {"job": job, "num_images": num_images,
               "reference_fd": frechet_distance_from_features(real_features,
                                                              classifier_features(judge, match_size(other, size)))}
    say(f"evaluate {path} ({job}, step {ckpt.step}): {num_images} images, {sampler} {steps} steps, "
        f"{spacing} spacing" + (", x0 clipped" if clip_x0 else ""))
    say(f"  Fréchet distance between two real sets (noise floor): {results['reference_fd']:.3f}")

    if job in ("pixel", "latent"):
        images = sample_unconditional(model, schedule, num_images, _unconditional_shape(model), steps, seed,
                                      sampler, prediction_type, _decoder(vae), batch_size, spacing=spacing,
                                      clip_x0=clip_x0)
        if images.shape[1] != 3:
            raise ValueError(f"evaluate: the classifier judges RGB shapes images; this model makes "
                             f"{images.shape[1]}-channel images")
        results["fd"] = frechet_distance_from_features(real_features,
                                                       classifier_features(judge, match_size(images, size)))
        say(f"  Fréchet distance, samples vs real: {results['fd']:.3f}")
        return results

    pipe = _pipeline(model, ckpt, vae, schedule, prediction_type, recorded)
    prompt_set = captions.CATEGORY_PROMPTS
    prompts = [prompt_set[i % len(prompt_set)] for i in range(num_images)]
    # the judge's ceiling: true renders of the same prompts, scored the same way
    rendered = np.stack([shapes.render(shapes.parse_caption(p), image_size, rng=(seed, i))
                         for i, p in enumerate(prompts)])
    ceiling = accuracy_by_category(match_size(rendered, size), prompts, judge)
    results["reference_accuracy"] = ceiling["overall"][0]
    results["reference_categories"] = ceiling
    results["guidance"] = {}
    tables = {"true render": ceiling}
    say(f"  {'guidance':>8}  {'FD':>8}  {'all right':>10}")
    for scale in guidance_scales:
        images = np.clip(generate(pipe, prompts, scale, steps, seed, sampler, batch_size, spacing), -1.0, 1.0)
        images = match_size(images, size)
        categories = accuracy_by_category(images, prompts, judge)
        accuracy, per_attribute = prompt_accuracy(images, prompts, judge)
        fd = frechet_distance_from_features(real_features, classifier_features(judge, images))
        results["guidance"][float(scale)] = {"fd": fd, "accuracy": accuracy, "per_attribute": per_attribute,
                                             "categories": categories}
        tables[f"guidance {scale:g}"] = categories
        say(f"  {scale:>8g}  {fd:>8.3f}  {accuracy:>10.3f}")
    say("  prompt accuracy by category (the true renders are the judge's ceiling):")
    say(format_categories(tables))
    return results


def _digit_judge(path, ckpt):
    """(the digit classifier, its path): the digit_classifier.npz beside a checkpoint trained on
    digits, as `train all --data digits` lays them out."""
    beside = Path(ckpt.path).parent / zoo.FILES["digit_classifier"]
    if not beside.exists():
        raise FileNotFoundError(f"evaluate: {path} was trained on --data digits and is judged by {beside}, "
                                f"which is missing; train it with: python -m minidiff train digit_classifier "
                                f"--out {beside.parent}")
    return zoo.load_digit_classifier(beside), beside


def _unconditional_shape(model):
    return (model.config.in_channels, model.config.image_size, model.config.image_size)


def _decoder(vae):
    """Latents -> images in [-1, 1] for a latent model; None (the samples are images) for a pixel one."""
    if vae is None:
        return None
    return lambda z: backend.get_array_module(z).clip(vae.decode_latents(z), -1, 1)


def _pipeline(model, ckpt, vae, schedule, prediction_type, recorded):
    """A text-to-image checkpoint's Pipeline: its VAE, and the text encoder and tokenizer beside it
    (else the ones its training recorded)."""
    from ..pipeline import Pipeline
    text_encoder = zoo.load_text_encoder(
        _sibling_or_recorded(ckpt, zoo.FILES["text_encoder"], recorded.get("text_encoder")))
    tokenizer = zoo.load_tokenizer(_sibling_or_recorded(ckpt, zoo.FILES["tokenizer"], recorded.get("tokenizer")),
                                   text_encoder.config.vocab_size)
    return Pipeline(vae=vae, unet=model, text_encoder=text_encoder, tokenizer=tokenizer, schedule=schedule,
                    prediction_type=prediction_type, max_length=text_encoder.config.max_length)


def _evaluate_clip(model, ckpt, num_scenes, seed, say):
    """A mini-CLIP checkpoint: held-out retrieval and the relation probe (tokenizer.json beside it)."""
    tokenizer = zoo.load_tokenizer(Path(ckpt.path).parent / zoo.FILES["tokenizer"], model.config.text.vocab_size)
    retrieval = retrieval_accuracy(model, tokenizer, num_batches=8, batch_size=64, seed=seed)
    probe = relation_probe(model, tokenizer, num_scenes=num_scenes, seed=seed)
    say(f"evaluate {ckpt.path} (clip, step {ckpt.step}): held-out text->image top-1 {retrieval['top1']:.3f} "
        f"(chance {retrieval['chance']:.3f})")
    say(f"  relation probe on {num_scenes} held-out two-object scenes: the true caption beats its ... (50% = a bag of words)")
    say(format_probe(probe))
    return {"job": "clip", "retrieval": retrieval, "probe": probe}


def add_arguments(parser):
    parser.add_argument("checkpoint", help="a pixel.npz, latent.npz, unet.npz (text-to-image) or clip.npz checkpoint")
    parser.add_argument("--n", type=int, default=512,
                        help="images to sample (per guidance scale); the FD's noise floor shrinks with more")
    parser.add_argument("--steps", type=int, default=50, help="sampler steps")
    parser.add_argument("--sampler", default="ddim", help=f"one of {', '.join(samplers.SAMPLERS)}")
    parser.add_argument("--spacing", default="leading",
                        help="timestep spacing: leading (default), trailing (starts at t = T-1) or linspace")
    parser.add_argument("--clip-x0", action="store_true",
                        help="pixel models: clip every x0 prediction to [-1, 1] while sampling")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 4.0, 7.5],
                        help="classifier-free guidance scales to compare (text-to-image)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64, help="images sampled at once")
    parser.add_argument("--classifier", default=None,
                        help="classifier checkpoint (python -m minidiff train classifier; default: the shipped "
                             "judge of the model's image size, data/pretrained/classifier64.npz for 64x64, "
                             "classifier.npz otherwise); a model trained on --data digits is judged by the "
                             "digit_classifier.npz beside it instead")
    backend.add_device_argument(parser)
    return parser


def main(args) -> int:
    if args.sampler not in samplers.SAMPLERS:
        raise ValueError(f"--sampler must be one of {samplers.SAMPLERS}, got {args.sampler!r}")
    if args.spacing not in samplers.SPACINGS:
        raise ValueError(f"--spacing must be one of {samplers.SPACINGS}, got {args.spacing!r}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    evaluate_checkpoint(args.checkpoint, args.n, args.steps, args.sampler, args.guidance, args.seed,
                        args.classifier, args.device, args.batch_size, spacing=args.spacing, clip_x0=args.clip_x0)
    return 0
