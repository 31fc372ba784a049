"""The training loop: every model minidiff ships is trained by this one ``fit``, read top to bottom.

Each job has a config dataclass with two named instances: ``quick()`` (a few minutes on a 2-core
CPU, the default) and ``full()`` (``--preset full``: the shipped models, on a GPU).

The loop (`fit`), the same for every job:

    for step in range(start, steps):
        rng = step_rng(seed, step)        # batch indices, noise, t, dropout: a function of (seed, step)
                                          # alone, so a resumed run continues the very same run
        model.zero_grad()
        loss = job_loss(rng, step)        # forward + hand-written backward: fills every p.grad
        clip_grad_norm(model, grad_clip)  # ||g|| <= grad_clip
        optimizer.step()                  # AdamW at lr(t) = warmup_cosine(t, lr, warmup_steps, steps, min_lr)
        ema.update()                      # shadow <- decay shadow + (1 - decay) theta; samples use the shadow
        every log_every steps:            read the mean loss back (the only sync) and stop if it is not finite
        every checkpoint_every steps:     save model + optimizer + EMA + step (atomically)
        every sample_every steps:         save a sample grid and the loss curve under DIR/samples/
        when --max-minutes is up:         save and stop cleanly; `--resume` continues

Nothing in the loop copies between host and device or reads a number back inside a step: the
training data is rendered (or encoded) once and kept on the device, and batches are gathered
there with indices drawn on the device. (One exception: mini-CLIP's forward validates its token
ids and positives matrix, which reads a few numbers back each step.)

Checkpoints
-----------
``DIR/<job>.npz`` (``unet.npz`` for text2image, as ``pipeline.py`` expects) holds, in its JSON
config, ``{"job": ..., "model": <model config>, "train": <job config>, "diffusion": {"schedule",
"num_steps", "prediction_type"}}`` so that ``evaluate``, ``pipeline`` and ``--resume`` can rebuild
the model. While training it also holds the optimizer and EMA states. When the last step is done
it is rewritten as the *final* checkpoint: the EMA weights as the model's, no optimizer, and
``extra/complete = 1`` (and the latent ``scale_factor`` for the VAE). Resuming with a different
job or config is an error that names the first difference.

Read beside: ``minidiff/optim.py`` (AdamW, EMA, clipping, the schedule), ``minidiff/checkpoint.py``
and ``minidiff/zoo.py`` (the files), ``minidiff/diffusion/loss.py`` (the objective), and
``minidiff/train/jobs.py`` (what each job feeds this loop).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import backend, zoo
from ..checkpoint import load_checkpoint, load_into, save_checkpoint
from ..files import atomic_write_bytes, interrupt_on_sigterm, remove_stale_temps
from ..nn.layers import Dropout
from ..nn.module import no_grad
from ..optim import EMA, AdamWGroups, clip_grad_norm, warmup_cosine
from ..utils import image_grid
from .config import TrainConfig

# fields that may change when a run is resumed (bookkeeping and where the inputs live)
RESUMABLE_CHANGES = ("log_every", "checkpoint_every", "sample_every", "vae", "text_encoder", "tokenizer",
                     "teacher")


LOCK_FILE = ".train.lock"          # in an --out folder while a run trains into it


class TrainingDiverged(RuntimeError):
    """The loss (or the gradient norm) stopped being a finite number."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a run between two atomic saves; the message names what is kept."""


def step_rng(seed: int, step: int):
    """The generator for one step, on the current device: determined by (seed, step) alone."""
    return backend.rng(int(np.random.SeedSequence([seed, step]).generate_state(1)[0]))


@dataclass
class FitResult:
    model: object
    step: int                 # the step the model is at
    complete: bool            # reached cfg.steps (the final checkpoint is written)
    steps_run: int            # steps run by this call
    seconds: float
    final_loss: float | None
    checkpoint: Path | None
    history: list             # [(step, mean loss over the last log window)]
    metrics: list = dataclasses.field(default_factory=list)   # [{"step": s, **metrics_fn(model)}] per log window
    evaluation: dict = dataclasses.field(default_factory=dict)  # a job's held-out scores once complete


def _json_normalised(value):
    return json.loads(json.dumps(value))


def check_resumable(ckpt, config: dict):
    """Raise ValueError unless the checkpoint was trained by the same job with the same settings."""
    stored = ckpt.config or {}
    if stored.get("job") != config["job"]:
        raise ValueError(f"cannot resume: {ckpt.path} is a {stored.get('job')!r} checkpoint, not {config['job']!r}")
    for section in ("model", "train"):
        mine, theirs = _json_normalised(config[section]), stored.get(section, {})
        for key in sorted(set(mine) | set(theirs)):
            if (section == "train" and key in RESUMABLE_CHANGES) or key not in theirs:
                continue                        # (a setting newer than the checkpoint: nothing to compare)
            if mine.get(key) != theirs.get(key):
                raise ValueError(f"cannot resume {ckpt.path}: it was trained with {section}.{key}="
                                 f"{theirs.get(key)!r}, this run has {mine.get(key)!r}. Resume with the same "
                                 "settings, or train a new model into another --out folder")


def _save_loss_curve(history, path, title):
    from ..utils import pyplot
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps, losses = zip(*history)
    ax.plot(steps, losses)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (mean over the log window)")
    ax.set_title(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())    # a reader never sees half a curve


def _evaluated(model, metrics_fn):
    """metrics_fn(model) in eval mode (no caches, dropout off), the model back in training mode after."""
    model.eval()
    try:
        with no_grad():
            return {name: float(value) for name, value in metrics_fn(model).items()}
    finally:
        model.train()


_held_locks = set()                # folders this process holds (a nested fit, train all stage by stage)


@contextlib.contextmanager
def output_lock(out):
    """Hold ``out/.train.lock`` while training into ``out``: a second run on the same folder refuses
    at once with FileExistsError. The lock is an flock, which the system drops when the process
    ends, however it ends, so a killed run never leaves a stale lock. (No lock where there is no
    fcntl, on Windows.) Nested use inside one process is allowed."""
    try:
        import fcntl
    except ImportError:
        fcntl = None
    folder = Path(out).resolve() if out is not None else None
    if fcntl is None or folder is None or folder in _held_locks:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip() or "?"
        os.close(fd)
        raise FileExistsError(f"--out {folder} is in use by another training run (process {holder}); "
                              "wait for it to finish, or choose another --out") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    _held_locks.add(folder)
    try:
        yield
    finally:
        _held_locks.discard(folder)
        os.close(fd)                   # releases the flock


def _one_run_per_output(train):
    """``fit`` runs inside this guard: ``out`` locked (one run per folder), the temporary files a
    killed run left in it removed first, and SIGTERM stopping the run as Ctrl-C does, with a
    TrainingInterrupted that says which checkpoint is kept."""
    @functools.wraps(train)
    def guarded(job, model, loss_fn, cfg, config, out=None, *args, **kwargs):
        with output_lock(out), interrupt_on_sigterm():
            if out is not None:
                for folder in (Path(out), Path(out) / "samples"):
                    remove_stale_temps(folder)
            try:
                return train(job, model, loss_fn, cfg, config, out, *args, **kwargs)
            except TrainingInterrupted:
                raise
            except KeyboardInterrupt as exc:
                path = Path(out) / zoo.FILES[job] if out is not None else None
                kept = (f"the last checkpoint saved in {path} is kept (continue with --resume)"
                        if path is not None and path.exists() else "no checkpoint was written")
                raise TrainingInterrupted(f"{job}: stopped by {exc or 'Ctrl-C'}; {kept}") from None
    return guarded


@_one_run_per_output
def fit(job: str, model, loss_fn, cfg: TrainConfig, config: dict, out=None, resume=False, deadline=None,
        stop_at=None, sample_fn=None, finalize=None, progress=True, ship_dtype=None,
        metrics_fn=None) -> FitResult:
    """Train ``model`` for ``cfg.steps`` steps; the loop of the module docstring.

    loss_fn(rng, step) -> loss: one forward and backward pass at 0-based ``step`` (grads filled), the
                loss a 0-d device array.
    config:     the checkpoint's JSON config ({"job", "model", "train", ...}).
    out:        folder for ``FILES[job]`` and samples/ (None: keep nothing on disk).
    resume:     continue from the checkpoint in ``out`` (a missing one starts afresh; a complete one
                is returned as it is). Without it an existing checkpoint is an error.
    deadline:   a ``time.perf_counter()`` value; at it, save and stop (``--max-minutes``).
    stop_at:    save and stop once this step is reached (a run in pieces; ``--resume`` continues).
    sample_fn(model) -> images in [-1, 1] (N, C, H, W), called with the EMA weights.
    finalize(model) -> {name: array}: extra arrays for the final checkpoint (e.g. the VAE's scale factor).
    ship_dtype: storage dtype of the final checkpoint's weights (e.g. np.float16), None = float32.
    metrics_fn(model) -> {name: float}: extra numbers read at every log window (it may sync).
    """
    path = Path(out) / zoo.FILES[job] if out is not None else None
    samples_dir = Path(out) / "samples" if out is not None else None
    # lr(t) at the optimizer's step t = 1, 2, ...: linear warmup, then cosine down to min_lr
    optimizer = AdamWGroups(model, lr=lambda t: warmup_cosine(t, cfg.lr, cfg.warmup_steps, cfg.steps, cfg.min_lr),
                            betas=cfg.betas, weight_decay=cfg.weight_decay)
    ema = EMA(model, decay=cfg.ema_decay)
    start, history, metrics = 0, [], []
    if path is not None and path.exists():
        if not resume:
            raise ValueError(f"{path} already exists: pass --resume to continue it, or choose another --out")
        ckpt = load_checkpoint(path)
        check_resumable(ckpt, config)
        if int(np.asarray(ckpt.extra.get("complete", 0))):
            print(f"{job}: {path} is complete (step {ckpt.step}); nothing to do")
            load_into(model, ckpt)
            return FitResult(model.eval(), ckpt.step, True, 0, 0.0, None, path,
                             [tuple(r) for r in np.asarray(ckpt.extra.get("loss_history", np.zeros((0, 2))))])
        load_into(model, ckpt, optimizer=optimizer, ema=ema)
        start = ckpt.step
        history = [(int(s), float(v)) for s, v in np.asarray(ckpt.extra.get("loss_history", np.zeros((0, 2))))]
        print(f"{job}: resuming {path} at step {start}/{cfg.steps}")
    end = cfg.steps if stop_at is None else min(cfg.steps, max(stop_at, start))
    dropouts = [m for m in model.modules() if isinstance(m, Dropout)]

    def save(step, final_extra=None):
        """A training checkpoint (model, optimizer, EMA), or with ``final_extra`` the final one."""
        if path is None:
            return
        extra = {"loss_history": np.asarray(history, np.float64).reshape(-1, 2)}
        if final_extra is None:
            save_checkpoint(path, model=model, optimizer=optimizer, ema=ema, config=config, step=step, extra=extra)
        else:
            extra.update(final_extra, complete=np.asarray(1))
            save_checkpoint(path, model=model, config=config, step=step, extra=extra, dtype=ship_dtype)

    def save_samples(step):
        if sample_fn is None or samples_dir is None:
            return
        samples_dir.mkdir(parents=True, exist_ok=True)
        ema.swap()                              # sample with the averaged weights ...
        model.eval()
        try:
            with no_grad():
                images = sample_fn(model)
        finally:
            model.train()
            ema.swap()                          # ... and put the training weights back
        buffer = io.BytesIO()
        image_grid(images, nrow=int(math.ceil(math.sqrt(len(images)))), scale=4).save(buffer, format="PNG")
        atomic_write_bytes(samples_dir / f"{job}_step{step:06d}.png", buffer.getvalue())
        if history:
            _save_loss_curve(history, samples_dir / f"{job}_loss.png", f"{job}: training loss")

    from tqdm.auto import tqdm
    bar = tqdm(total=end, initial=start, desc=job, unit="step", disable=not progress, dynamic_ncols=True)
    xp = backend.get_array_module(model.parameters()[0].data)
    running_loss = xp.zeros((), np.float32)     # sums on the device, read back every log_every steps
    running_norm = xp.zeros((), np.float32)
    window, last_good, began = 0, start, time.perf_counter()
    model.train()
    step = start
    try:
        while step < end:
            rng = step_rng(cfg.seed, step)
            for layer in dropouts:              # dropout masks from this step's generator too
                layer.rng = rng
            model.zero_grad()
            loss = loss_fn(rng, step)
            grad_norm = clip_grad_norm(model, cfg.grad_clip)
            optimizer.step()
            ema.update()
            running_loss += loss
            running_norm += grad_norm
            window += 1
            step += 1
            bar.update(1)
            checkpoint_due = step % cfg.checkpoint_every == 0 or step == end
            out_of_time = deadline is not None and time.perf_counter() > deadline
            if step % cfg.log_every == 0 or checkpoint_due or out_of_time:
                # the only device -> host reads of the loop
                mean_loss, norm = float(running_loss) / window, float(running_norm)
                if not (math.isfinite(mean_loss) and math.isfinite(norm)):
                    kept = (f"the last good checkpoint {path} (step {last_good}) is kept"
                            if path is not None and path.exists() else "no checkpoint was written")
                    raise TrainingDiverged(
                        f"{job}: the loss became {mean_loss} (gradient norm {norm}) between steps "
                        f"{step - window} and {step}; stopped without saving, {kept}. Try a lower --lr "
                        "or check the data")
                history.append((step, mean_loss))
                if metrics_fn is not None:
                    metrics.append({"step": step, **_evaluated(model, metrics_fn)})
                running_loss[...] = 0
                running_norm[...] = 0
                window = 0
                bar.set_postfix(loss=f"{mean_loss:.4f}")
                if not progress:                # no bar (e.g. a log file): one line per log window
                    print(f"{job}: step {step}/{cfg.steps} loss {mean_loss:.4f}", flush=True)
            if step % cfg.sample_every == 0 and step < cfg.steps:
                save_samples(step)
            if step == cfg.steps:                # done: the model takes the averaged weights for good
                ema.copy_to(model)
                save(step, final_extra=finalize(model) if finalize else {})
                save_samples(step)
                last_good = step
            elif checkpoint_due or out_of_time:
                save(step)
                last_good = step
            if out_of_time and step < cfg.steps:
                print(f"\n{job}: time limit reached at step {step}/{cfg.steps}; checkpoint saved, "
                      "continue with --resume")
                break
    finally:
        bar.close()
    backend.synchronize()
    seconds = time.perf_counter() - began
    steps_run = step - start
    final_loss = history[-1][1] if history else None
    complete = step >= cfg.steps
    if complete:
        model.eval()
    rate = steps_run / seconds if seconds > 0 else float("nan")
    loss_text = f"{final_loss:.4f}" if final_loss is not None else "n/a"
    print(f"{job}: {steps_run} steps (now at {step}/{cfg.steps}) in {seconds:.1f} s, {rate:.2f} steps/s, "
          f"final loss {loss_text}" + (f" -> {path}" if path is not None and steps_run else ""))
    return FitResult(model, step, complete, steps_run, seconds, final_loss, path, history, metrics)


# -- the jobs that write one file when they end (the fine-tunes, vae_decoder) ----------------------
def fresh_output(job: str, out, resume: bool, what: str, name: str):
    """A fine-tune starts afresh and writes one file when it ends: --resume is an error, and so is a
    folder that already holds the file (nothing is overwritten; choose another --out or delete it)."""
    if resume:
        raise ValueError(f"train {job}: --resume is not supported ({what} is written when the run ends)")
    if out is not None and (Path(out) / name).exists():
        raise ValueError(f"train {job}: {Path(out) / name} already exists; choose another --out or delete it")


def keep_file(result, cfg, out) -> bool:
    """Write the fine-tune's file? Yes when it trained at all: a run stopped early by --max-minutes or
    --stop-at keeps what it learned (and says so: fine-tunes are short and do not resume)."""
    if out is None or result.step == 0:
        return False
    if not result.complete:
        print(f"stopped at step {result.step} of {cfg.steps}: the file written holds those steps "
              "(fine-tunes do not resume; run again with more time or fewer --steps)")
    return True
