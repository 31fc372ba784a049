"""``python -m minidiff train all``: a whole checkpoint folder from nothing, stage by stage.

    python -m minidiff train all --out DIR                                      # quick: a CPU
    python -m minidiff train all --out DIR --preset full --device gpu --half    # the shipped recipe

A recipe is a short list of stages. A stage is one training job (``train/jobs.py``) with the few
settings it needs beyond the job's preset, the files it reads from the folder, and the stages that
must finish first. On the shapes (the shipped pipeline: 64x64 images through 8x8x4 latents, Stable
Diffusion's 48x fewer numbers):

    stage        job          waits for      writes into DIR
    clip         clip         -              tokenizer.json, clip.npz, text_encoder.npz
    vae32        vae          -              vae32.npz         32x32 -> 8x8x4 (f = 4): the latent space
    text2image   text2image   clip, vae32    unet.npz          trained on vae32's latents of 32x32 scenes
    vae64        vae64        vae32          vae.npz           64x64 -> the same latents (f = 8, vae64.py)
    judge64      classifier   -              classifier64.npz  the attribute classifier of 64x64 images

The U-Net learns in the 32x32 VAE's latent space, and the 64x64 VAE learns to speak that same
latent space (it is distilled from vae32), so the two train at the same time and meet in the
finished folder: ``generate --checkpoints DIR`` decodes the U-Net's latents with vae.npz into 64x64
images. ``--data digits`` trains clip, vae, text2image and the digit classifier; a folder of your
own images (``folder:DIR``, ``idx:DIR``) clip, vae and text2image (32x32; there are no labels to
train a judge on).

Every stage trains in a work folder of its own, DIR/stages/NAME/ (its checkpoints, its sample
grids; ``--max-minutes`` stops it and the same command resumes it). When a stage completes, its
files are copied up into DIR, so DIR only ever holds finished models. A stage whose files are
already in DIR is skipped.

Stages that do not wait for each other can train side by side (``--parallel N``), each in a process
of its own. On one GPU that is nearly free time: these models are small, and one training process
leaves the GPU idle for most of each step while Python issues the next kernel, so a second or a
third process fills those gaps (measured on an H200: three runs side by side took 221 s, the longest
of them 206 s alone). On a CPU they only take cores from each other, so the default is 1 there
(and 3 on a GPU). What each stage took is printed at the end and kept, run by run, in
DIR/train_all.json, and DIR/samples.png shows what the finished folder makes, prompt by prompt.
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import multiprocessing
import pickle
import queue
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import backend, zoo
from ..checkpoint import load_checkpoint
from ..datasets import captions
from ..evaluate.digits import digit_prompts
from ..files import atomic_write_bytes
from .config import JOB_CONFIGS, make_config
from .data import load_data
from .runners import RUNNERS

WORK_DIR = "stages"                 # DIR/stages/NAME/: a stage's checkpoints and samples while it trains
TIMES_FILE = "train_all.json"       # DIR/train_all.json: what each run of `train all` took, stage by stage
CLIP_FILES = (zoo.FILES["tokenizer"], zoo.FILES["clip"], zoo.FILES["text_encoder"])
# the judging stage by --data: a folder or IDX files have no labels to judge samples with, so none
JUDGE_STAGES = {"shapes": "judge64", "digits": "digit_classifier"}
# what to ask the finished folder first
EXAMPLE_PROMPTS = {"shapes": "a small red circle above a blue square", "digits": "the digit seven"}
# settings `train all` wires itself (a stage's inputs are the files of the stages before it), or that
# name one job's model: a stage sets its own
NOT_OVERRIDES = ("vae", "text_encoder", "tokenizer", "teacher", "model", "init")


@dataclass(frozen=True)
class Stage:
    """One stage of a recipe. ``settings``: beyond the job's preset, ``full``: beyond that with
    ``--preset full`` (the command line's options win over both); ``inputs``: {config field: file in
    DIR}; ``rename``: {file the job writes: its name in DIR}."""
    name: str
    job: str
    after: tuple = ()
    settings: dict = field(default_factory=dict)
    full: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)
    rename: dict = field(default_factory=dict)

    @property
    def checkpoint(self) -> str:
        """The file the job trains (and resumes) in its work folder; "complete" once it is finished."""
        return zoo.FILES[self.job]

    @property
    def files(self) -> list:
        """[(file in the work folder, its name in DIR)] for every file the stage hands on."""
        written = CLIP_FILES if self.job == "clip" else (self.checkpoint,)
        return [(name, self.rename.get(name, name)) for name in written]


def _text_to_image(vae_stage: str, vae_file: str, **more) -> Stage:
    """The U-Net, on the latents of the VAE that ``vae_stage`` writes as ``vae_file``."""
    return Stage("text2image", "text2image", after=("clip", vae_stage),
                 inputs={"vae": vae_file, "text_encoder": zoo.FILES["text_encoder"],
                         "tokenizer": zoo.FILES["tokenizer"]}, **more)


def recipe_for(data=None) -> tuple:
    """The stages of ``train all --data DATA``, in an order that runs them one after another."""
    kind = str(data or "shapes")
    if kind == "shapes":
        # the full preset's numbers: the shipped files' recipe, the U-Net from scratch (14-15 steps/s
        # on one H200: 8000 steps are about 9 minutes, alongside the 64x64 VAE's 5500)
        return (Stage("clip", "clip", full={"model": "relations", "steps": 2000, "two_object_fraction": 0.6}),
                # pink in 30% of its scenes (as the decoder fine-tune that taught the shipped VAE pink), so
                # its decoder can draw what a LoRA or a token asks for
                Stage("vae32", "vae", settings={"extra_fraction": 0.3}, rename={zoo.FILES["vae"]: zoo.VAE32_FILE}),
                _text_to_image("vae32", zoo.VAE32_FILE, full={"steps": 8000, "two_object_fraction": 0.6}),
                Stage("vae64", "vae64", after=("vae32",), inputs={"teacher": zoo.VAE32_FILE}, full={"steps": 5500}),
                Stage("judge64", "classifier", settings={"model": "judge64"}, full={"steps": 2500},
                      rename={zoo.FILES["classifier"]: zoo.JUDGE64_FILE}))
    stages = (Stage("clip", "clip"), Stage("vae", "vae"), _text_to_image("vae", zoo.FILES["vae"]))
    if kind == "digits":
        stages += (Stage("digit_classifier", "digit_classifier"),)
    return stages


def stages_for(data) -> tuple:
    """The stage names of ``train all --data DATA`` (``recipe_for``)."""
    return tuple(stage.name for stage in recipe_for(data))


def stage_configs(out, preset="quick", overrides=None) -> dict:
    """{stage name: its job config} for ``train all`` into ``out``, every one built (and so checked)
    before any stage runs. ``overrides`` reach every stage whose job has the setting; one that no
    stage uses is a ValueError, and so are those `train all` sets itself (NOT_OVERRIDES)."""
    out = Path(out)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    stages = recipe_for(overrides.get("data"))
    for k in NOT_OVERRIDES:
        if k in overrides:
            raise ValueError(f"--{k.replace('_', '-')} {overrides[k]!r}: `train all` chooses it for each "
                             "stage itself; train that job on its own to choose it")
    fields = {stage.name: {f.name for f in dataclasses.fields(JOB_CONFIGS[stage.job])} for stage in stages}
    unused = sorted(set(overrides) - set().union(*fields.values()))
    if unused:
        k = unused[0]
        raise ValueError(f"--{k.replace('_', '-')} {overrides[k]!r}: no stage of `train all` uses it "
                         f"(stages: {', '.join(s.name for s in stages)}); train that job on its own")
    configs = {}
    for stage in stages:
        mine = {k: v for k, v in overrides.items() if k in fields[stage.name]}
        cfg = make_config(stage.job, preset, {**stage.settings, **(stage.full if preset == "full" else {}), **mine})
        configs[stage.name] = dataclasses.replace(cfg, **{k: str(out / name) for k, name in stage.inputs.items()})
    return configs


# -- one stage -------------------------------------------------------------------------------------
def work_folder(out, stage: Stage) -> Path:
    return Path(out) / WORK_DIR / stage.name


def is_finished(out, stage: Stage) -> bool:
    """Every file of the stage is in DIR and its model is a finished one."""
    out = Path(out)
    return all((out / name).is_file() for _, name in stage.files) and \
        zoo.is_complete(out / stage.rename.get(stage.checkpoint, stage.checkpoint))


def check_inputs(out, stage: Stage):
    """A finished stage must have been trained on the files this recipe gives it: a folder holding an
    older recipe's models (a U-Net trained on another VAE's latents, say) is refused, not mixed in."""
    checkpoint = Path(out) / stage.rename.get(stage.checkpoint, stage.checkpoint)
    recorded = (load_checkpoint(checkpoint).config or {}).get("train", {})
    for setting, name in stage.inputs.items():
        used = recorded.get(setting) if isinstance(recorded, dict) else None
        if isinstance(used, str) and Path(used).name != name:
            raise ValueError(f"train all: {checkpoint} was trained with {setting} {Path(used).name}, where this recipe "
                             f"gives it {name} (the folder holds another recipe's models); choose a new --out")


def publish(out, stage: Stage):
    """Copy a completed stage's files from its work folder up into DIR (each written atomically)."""
    work = work_folder(out, stage)
    for source, name in stage.files:
        if not (work / source).is_file():
            raise RuntimeError(f"train all: stage {stage.name} completed but wrote no {work / source}")
        atomic_write_bytes(Path(out) / name, (work / source).read_bytes())


def run_stage(out, stage: Stage, cfg, deadline=None, progress=True, ship_dtype=None) -> dict:
    """Train one stage in its work folder (resuming it), and publish its files when it completes.
    Returns {"complete", "step", "steps_run", "seconds"}."""
    if zoo.is_complete(work_folder(out, stage) / stage.checkpoint):
        publish(out, stage)             # finished in an earlier run that stopped before copying it up
        return {"complete": True, "step": cfg.steps, "steps_run": 0, "seconds": 0.0}
    result = RUNNERS[stage.job](cfg, out=work_folder(out, stage), resume=True, deadline=deadline,
                                progress=progress, ship_dtype=ship_dtype)
    if result.complete:
        publish(out, stage)
    return {"complete": bool(result.complete), "step": int(result.step),
            "steps_run": int(getattr(result, "steps_run", 0)), "seconds": float(getattr(result, "seconds", 0.0))}


# -- the whole recipe ------------------------------------------------------------------------------
def default_parallel() -> int:
    """3 stages side by side on a GPU, 1 on a CPU (there they would only share its cores)."""
    return 3 if backend.device() == "gpu" else 1


@dataclass
class _Run:
    """One `train all` command: what every stage is run with, and what each took."""
    out: Path
    preset: str
    overrides: dict
    deadline: float | None
    progress: bool
    ship_dtype: object
    parallel: int
    began: float = field(default_factory=time.perf_counter)
    times: dict = field(default_factory=dict)        # stage -> {"started", "ended" (s from began), outcome}

    def left(self):
        return None if self.deadline is None else self.deadline - time.perf_counter()

    def clock(self):
        return time.perf_counter() - self.began


def run_all(out, preset="quick", overrides=None, deadline=None, progress=True, ship_dtype=None,
            parallel=1) -> bool:
    """Every stage of the recipe into ``out`` (``stage_configs`` checks them all first); up to
    ``parallel`` stages at a time, each waiting for the stages it needs. Returns True when every
    stage is complete; False when ``deadline`` (a ``time.perf_counter()`` value) came first."""
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise ValueError(f"--parallel must be an integer >= 1, got {parallel!r}")
    out = Path(out)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    stages, todo, configs = plan(out, preset, overrides, parallel)
    run = _Run(out, preset, overrides, deadline, progress, ship_dtype, parallel)
    try:
        complete = (_one_at_a_time if parallel == 1 else _side_by_side)(run, todo, configs)
    finally:
        if run.times:
            _record_times(run, stages, configs)
    if not complete:
        print("train all: --max-minutes is up; run the same command again to continue")
        return False
    data = overrides.get("data") or "shapes"
    judged = "" if data in JUDGE_STAGES else (f"; no classifier stage: --data {data} has no labels to judge "
                                              "samples with")
    print(f"train all: all stages complete in {out}{judged}")
    _draw_what_it_makes(out, data, configs["text2image"])
    prompt = EXAMPLE_PROMPTS.get(data, "one of your captions")
    print(f'try: python -m minidiff generate "{prompt}" --checkpoints {out}')
    return True


def _one_at_a_time(run: _Run, stages, configs) -> bool:
    for stage in stages:
        if run.deadline is not None and run.left() <= 0:
            return False
        started = run.clock()
        try:
            outcome = run_stage(run.out, stage, configs[stage.name], run.deadline, run.progress, run.ship_dtype)
        except (Exception, KeyboardInterrupt) as error:
            raise _naming_the_stage(error, stage.name)
        run.times[stage.name] = {**outcome, "started": started, "ended": run.clock()}
        if not outcome["complete"]:
            return False
    return True


def _naming_the_stage(error, name):
    """The same exception (so the command line gives it the same exit code), its message saying
    which stage it ended."""
    error.args = (f"train all: stage {name}: {' '.join(str(error).split()) or type(error).__name__}",)
    return error


def _stage_process(name, out, preset, overrides, seconds_left, ship_dtype, device, results):
    """A child process's whole life: one stage, then its outcome (or its error, in one line) on ``results``."""
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)      # its lines as they come, not in blocks
    try:
        backend.set_device(device)
        stage = next(s for s in recipe_for(overrides.get("data")) if s.name == name)
        cfg = stage_configs(out, preset, overrides)[name]
        deadline = None if seconds_left is None else time.perf_counter() + seconds_left
        results.put((name, run_stage(out, stage, cfg, deadline, False, ship_dtype)))
    except (Exception, KeyboardInterrupt) as exc:      # noqa: BLE001 - the parent raises it, as its own
        try:
            pickle.dumps(exc)
        except Exception:                                # noqa: BLE001 - one that cannot travel: its words
            exc = RuntimeError(f"{type(exc).__name__}: {exc}")
        results.put((name, {"error": exc}))


def _side_by_side(run: _Run, stages, configs) -> bool:
    """Start every stage whose inputs are finished, up to ``run.parallel`` at once, each in a
    process of its own (spawned: a fresh interpreter, as CUDA needs), until all are complete. A
    stage that fails stops the others (each keeps its last checkpoint) and ends the run with its message."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    waiting, running = list(stages), {}
    done = {s.name for s in recipe_for(run.overrides.get("data"))} - {s.name for s in stages}
    out_of_time = False
    try:
        while waiting or running:
            for stage in list(waiting):
                if len(running) >= run.parallel or out_of_time:
                    break
                if not all(name in done for name in stage.after):
                    continue
                left = run.left()
                if left is not None and left <= 0:
                    out_of_time = True
                    break
                process = context.Process(target=_stage_process, name=f"minidiff-{stage.name}",
                                          args=(stage.name, str(run.out), run.preset, run.overrides, left,
                                                run.ship_dtype, backend.device(), results))
                process.start()
                running[stage.name] = process
                waiting.remove(stage)
                run.times[stage.name] = {"started": run.clock()}
                print(f"train all: {stage.name} started (process {process.pid})", flush=True)
            if not running:
                break                   # out of time: what waits is for the next run
            name, outcome = _next_outcome(results, running)
            running.pop(name).join()
            error = outcome.pop("error", None)
            run.times[name].update(outcome, ended=run.clock())
            if error is not None:        # the child's own exception, its message saying which stage
                run.times[name]["error"] = f"{type(error).__name__}: {error}"
                _stop(running)
                raise _naming_the_stage(error, name)
            took = run.times[name]["ended"] - run.times[name]["started"]
            print(f"train all: {name} {'complete' if outcome['complete'] else 'stopped'} after {took:.0f} s",
                  flush=True)
            if outcome["complete"]:
                done.add(name)
            else:
                out_of_time = True      # the others run on to their own deadline and checkpoint
    except BaseException:
        _stop(running)
        raise
    return not waiting and not out_of_time


def _next_outcome(results, running):
    """The next (stage, outcome) from the children; a child that died without one (killed, out of
    memory) is an outcome too."""
    while True:
        try:
            return results.get(timeout=0.5)
        except queue.Empty:
            pass
        for name, process in running.items():
            if process.exitcode is not None:
                try:                    # its last words may still be on their way
                    return results.get(timeout=2.0)
                except queue.Empty:
                    return name, {"error": RuntimeError(f"its process ended with exit code {process.exitcode} "
                                                        "and no result (killed, or out of memory?)")}


def _stop(running):
    """SIGTERM to every stage still training (each stops as on Ctrl-C, its last checkpoint kept), then wait."""
    for process in running.values():
        if process.is_alive():
            process.terminate()
    for process in running.values():
        process.join(timeout=60)
        if process.is_alive():
            process.kill()
    running.clear()


# -- what it will do, what it took, and what it makes ---------------------------------------------
SAMPLES_FILE = "samples.png"        # DIR/samples.png: the finished folder's images, each under its prompt


def _prompts_for(data, cfg, n: int = 8) -> list:
    """Prompts the finished folder knows: the shapes' fixed prompts, the digits' wordings, or the
    first distinct captions of your own data."""
    if data == "shapes":
        return list(captions.FIXED_PROMPTS[:n])
    if data == "digits":
        return digit_prompts(n)[0]
    texts = load_data(data, 32, 4 * n, cfg.seed, need_captions=True).captions   # (only the captions are used)
    return list(dict.fromkeys(texts))[:n]


def _draw_what_it_makes(out, data, cfg):
    """DIR/samples.png: the finished pipeline (what `generate --checkpoints DIR` runs), one image per
    prompt, 50 DDIM steps at the folder's guidance scale. A picture that cannot be drawn is a warning:
    the training it would show has succeeded."""
    from ..pipeline import Pipeline
    from ..utils import pyplot
    try:
        pipe = Pipeline.load(out)
        prompts = _prompts_for(data, cfg)
        images = pipe.sample_prompts(prompts, pipe.default_guidance, steps=50, seed=0)
        plt = pyplot()
        fig, axes = plt.subplots(1, len(prompts), figsize=(1.9 * len(prompts), 2.3), squeeze=False)
        for ax, image, prompt in zip(axes[0], images, prompts):
            ax.imshow(np.clip((image.transpose(1, 2, 0) + 1) / 2, 0, 1), interpolation="nearest")
            ax.set_title(textwrap.fill(prompt, 22), fontsize=7)
            ax.axis("off")
        fig.suptitle(f"{out}: guidance {pipe.default_guidance:g}, 50 DDIM steps, seed 0", fontsize=8)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        atomic_write_bytes(Path(out) / SAMPLES_FILE, buffer.getvalue())
        print(f"train all: what the folder makes -> {Path(out) / SAMPLES_FILE}")
    except Exception as exc:                            # noqa: BLE001 - the models are trained and kept
        print(f"train all: no samples drawn ({type(exc).__name__}: {exc})")
def _work(cfg) -> str:
    return f"{cfg.steps} x {cfg.batch_size}"


def plan(out, preset="quick", overrides=None, parallel=1):
    """Print what ``train all`` would do in ``out`` (``--plan`` stops here): each stage, its work, what
    it waits for, what it writes, and whether it is finished already. Every setting is checked, and
    a finished stage's inputs too (``check_inputs``). Returns (stages, those to train, configs)."""
    out = Path(out)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    configs = stage_configs(out, preset, overrides)
    stages = recipe_for(overrides.get("data"))
    todo = [stage for stage in stages if not is_finished(out, stage)]
    for stage in stages:
        if stage not in todo:
            check_inputs(out, stage)
    _print_plan(out, stages, todo, configs, parallel)
    return stages, todo, configs


def _print_plan(out, stages, todo, configs, parallel):
    side = f", up to {parallel} side by side" if parallel > 1 else ", one after another"
    print(f"train all: {len(todo)} of {len(stages)} stages to train into {out}{side}")
    for stage in stages:
        state = "" if stage in todo else "   (complete)"
        after = f"after {', '.join(stage.after)}" if stage.after else ""
        written = ", ".join(name for _, name in stage.files)
        print(f"  {stage.name:<17}{stage.job:<17}{_work(configs[stage.name]):>12}  {after:<24}-> {written}{state}")


def _record_times(run: _Run, stages, configs):
    """Print what each stage took and add this run to DIR/train_all.json."""
    wall = run.clock()
    rows = []
    print(f"train all: {wall:.0f} s of wall time on {backend.device()}" +
          (f", up to {run.parallel} stages side by side" if run.parallel > 1 else ""))
    for stage in stages:
        if stage.name not in run.times or "ended" not in run.times[stage.name]:
            continue
        t = run.times[stage.name]
        took = t["ended"] - t["started"]
        rate = t.get("steps_run", 0) / t["seconds"] if t.get("seconds") else math.nan
        rows.append({"stage": stage.name, "job": stage.job, "steps_x_batch": _work(configs[stage.name]),
                     "started_s": round(t["started"], 1), "ended_s": round(t["ended"], 1),
                     "wall_s": round(took, 1), "training_s": round(t.get("seconds", 0.0), 1),
                     "steps_run": t.get("steps_run", 0), "complete": bool(t.get("complete", False)),
                     **({"error": t["error"]} if "error" in t else {})})
        print(f"  {stage.name:<17}{t['started']:>7.0f} s -> {t['ended']:>5.0f} s  ({took:.0f} s, "
              f"{rate:.1f} steps/s while training)")
    path = Path(run.out) / TIMES_FILE
    try:
        runs = json.loads(path.read_text(encoding="utf-8")).get("runs", []) if path.is_file() else []
    except (OSError, ValueError, AttributeError):
        runs = []                       # a damaged record is replaced, not a reason to fail
    runs.append({"preset": run.preset, "device": backend.device(), "parallel": run.parallel,
                 "wall_s": round(wall, 1), "stages": rows})
    atomic_write_bytes(path, json.dumps({"runs": runs}, indent=1).encode("utf-8"))
