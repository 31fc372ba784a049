"""Measure the shipped models against their targets, by category (the numbers in README.md beside
this file).

    python data/pretrained/measure_targets.py [--checkpoints DIR] [--seeds 64] [--steps 50] [--json OUT]
        [--only readme base lora token control]

* readme   the README's prompt, one image per seed, judged by the attribute classifier
* base     the 70 category prompts x seeds, by category (with and without the pink LoRA)
* lora     "a pink <shape> <place>" with the LoRA adapter (and the base model, which has no pink)
* token    the same prompts with the learned token "<pink>" (textual inversion)
* control  held-out outlines as ControlNet controls: IoU of the object with the outline's filled
           shape, and the colour the prompt asks for
A part whose file is absent from DIR is skipped with a note.
"""
import argparse
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
import numpy as np  # noqa: E402

from minidiff import backend, zoo  # noqa: E402
from minidiff.datasets import captions  # noqa: E402
from minidiff.evaluate import adapters, judge  # noqa: E402
from minidiff.evaluate.checkpoint import load_classifier  # noqa: E402
from minidiff.pipeline import Pipeline  # noqa: E402
from minidiff.train import finetune  # noqa: E402

README_PROMPT = "a small red circle above a blue square"
PARTS = ("readme", "base", "lora", "token", "control")


def table(title, result):
    print(f"\n{title}")
    print(judge.format_categories({"accuracy": result}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", default=str(zoo.PRETRAINED_DIR))
    parser.add_argument("--seeds", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--json", default=None)
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    a = parser.parse_args()
    folder = pathlib.Path(a.checkpoints)
    pipe = Pipeline.load(folder)
    classifier = load_classifier(zoo.judge_path(pipe.vae.config.image_size, folder))
    print(f"judged by {zoo.judge_path(pipe.vae.config.image_size, folder)}")
    report, n, g = {}, a.seeds, a.guidance
    began = time.perf_counter()

    def sample(prompts, seed=0):
        return pipe.sample_prompts(prompts, g, steps=a.steps, seed=seed)

    if "readme" in a.only:
        images = sample([README_PROMPT] * n)
        report["readme"] = judge.accuracy_by_category(images, [README_PROMPT] * n, classifier)
        table(f"README prompt {README_PROMPT!r}, {n} seeds", report["readme"])

    repeats = max(1, n // 16)
    base_prompts = list(captions.CATEGORY_PROMPTS) * repeats
    pink_prompts = list(finetune.PINK_PROMPTS) * max(1, n // 8)
    lora_path = folder / finetune.LORA_FILE
    if "base" in a.only:
        report["base"] = judge.accuracy_by_category(sample(base_prompts, seed=1), base_prompts, classifier)
        table(f"base vocabulary, {len(base_prompts)} images ({len(captions.CATEGORY_PROMPTS)} prompts)",
              report["base"])
    if "lora" in a.only or "base" in a.only:
        base_pink = adapters.new_colour_judgement(sample(pink_prompts, seed=2), pink_prompts, classifier)
        report["pink_base_model"] = {k: v for k, v in base_pink.items() if k != "per_image"}
        print(f"\nbase model on pink prompts: {report['pink_base_model']}")
    if ("lora" in a.only or "base" in a.only) and lora_path.is_file():
        pipe.load_lora(lora_path)
        size = lora_path.stat().st_size
        unet_size = (folder / zoo.FILES["text2image"]).stat().st_size
        report["lora_size"] = {"adapter_bytes": size, "unet_bytes": unet_size, "share": size / unet_size}
        print(f"\nLoRA adapter {size:,} bytes beside the U-Net's {unet_size:,} ({100 * size / unet_size:.2f}%)")
        if "lora" in a.only:
            pink = adapters.new_colour_judgement(sample(pink_prompts, seed=2), pink_prompts, classifier)
            report["lora"] = {k: v for k, v in pink.items() if k != "per_image"}
            print(f"with the LoRA, pink prompts ({len(pink_prompts)} images): {report['lora']}")
        if "base" in a.only:
            report["base_with_lora"] = judge.accuracy_by_category(sample(base_prompts, seed=1), base_prompts,
                                                                  classifier)
            table("base vocabulary with the LoRA", report["base_with_lora"])
        pipe.unload_lora()
    elif "lora" in a.only:
        print(f"\n(no {lora_path}: LoRA skipped)")

    token_path = folder / finetune.TOKEN_FILE
    if "token" in a.only and token_path.is_file():
        token = finetune.load_token(token_path, pipe.text_encoder, pipe.tokenizer)
        prompts = [finetune.placeholder_captions([p])[0] for p in pink_prompts]
        images = finetune.placeholder_images(pipe, prompts, guidance_scale=g, steps=a.steps, seed=2)
        result = adapters.new_colour_judgement(images, prompts, classifier, word=finetune.PLACEHOLDER)
        report["token"] = {k: v for k, v in result.items() if k != "per_image"}
        print(f"\nwith the learned token {finetune.PLACEHOLDER}: {report['token']}")
        token.detach()
    elif "token" in a.only:
        print(f"\n(no {token_path}: textual inversion skipped)")

    control_path = folder / finetune.CONTROLNET_FILE
    if "control" in a.only and control_path.is_file():
        pipe.load_controlnet(control_path)
        scenes = adapters.control_scenes(n, seed=3, size=pipe.vae.config.image_size)
        from minidiff.models.controlnet import edge_map
        controls = edge_map(pipe.xp.asarray(scenes["images"]))
        model_fn = pipe.guided_model_fn(scenes["prompts"], [""] * n, g, control=controls)
        from minidiff.diffusion import samplers
        size = pipe.vae.config.latent_size
        latents = samplers.sample(model_fn, pipe.schedule, (n, pipe.latent_channels, size, size), sampler="ddim",
                                  steps=a.steps, rng=backend.rng(3, pipe.device),
                                  prediction_type=pipe.prediction_type, progress=False)
        images = backend.to_numpy(pipe.decode(latents))
        result = adapters.control_judgement(images, scenes["masks"], scenes["prompts"], classifier)
        free = adapters.control_judgement(sample(scenes["prompts"], seed=3), scenes["masks"], scenes["prompts"],
                                          classifier)
        report["control"] = {k: v for k, v in result.items() if k != "iou"}
        report["control_without"] = {k: v for k, v in free.items() if k != "iou"}
        print(f"\nControlNet on {n} held-out outlines: {report['control']}")
        print(f"the same prompts without a control: {report['control_without']}")
    elif "control" in a.only:
        print(f"\n(no {control_path}: ControlNet skipped)")

    print(f"\n{time.perf_counter() - began:.0f} s on {pipe.device}")
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(report, indent=1, default=float))


if __name__ == "__main__":
    main()
