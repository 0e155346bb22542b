"""The training loop shared by all methods: data, optimizer, logging, checkpoints, resume.

A run folder ``<output>/<scene>/<method>/<timestamp>/`` holds:

* ``config.toml``  — a scene TOML with the full method config: ``kernelight train config.toml``
  reproduces the run;
* ``checkpoints/step-NNNNNN.pt`` — atomic, loadable with ``weights_only=True``; ``--resume RUN``
  continues from the newest one (optimizer state, RNG and densification statistics included);
* ``metrics.jsonl`` — one JSON object per logged step (train loss/PSNR, test PSNR when evaluated).

Ctrl-C saves a checkpoint and exits cleanly. A NaN/Inf loss stops training with a message naming
the step; the last good checkpoint is kept.

The optimizer step happens in exactly one place (:meth:`Trainer._step`), RNG seeds are explicit
and there is no hidden global state. Started by torchrun (``kernelight train ... --nproc N``) the
loop is data-parallel: ranks split each step's batch, average their gradients, apply the same step,
and rank 0 alone writes (:mod:`engine.train.distributed` explains the design). The run's world size
is recorded in ``config.toml`` (``[run]``), in checkpoints and in ``metrics.jsonl``; a checkpoint
resumes with any number of ranks that divides the batch.

Device: ``TrainSettings.device`` (``auto`` | ``cpu`` | ``cuda``; ``--device``) holds the model,
the dataset and the optimizer state, and is the device Taichi runs on.

Images: a dataset whose decoded images exceed ``TrainSettings.image_cache`` (``--image-cache``,
default half the available memory) streams from disk through a bounded cache (:mod:`engine.data.stream`):
ray methods draw from working sets of cached images, image methods prefetch the next step's images.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ConfigError, KernelightError
from ..io.atomic import atomic_write_text
from ..io.checkpoint import checkpoint_name, latest_valid_checkpoint, load_checkpoint, save_checkpoint
from . import distributed, metrics


class TrainingError(KernelightError):
    """Training cannot continue (NaN loss, ...). The message says where and what was kept."""


@dataclass
class TrainSettings:
    """What a run needs besides the method's own options. ``method`` is the method class (a
    :class:`engine.methods.base.Method` subclass; ``engine.methods.get_method(name)`` finds one by
    name): the trainer never looks methods up itself."""

    method: type
    data: Path
    output: Path = Path("outputs")
    scene_name: str | None = None
    data_format: str | None = None
    downscale: int = 1
    background: tuple | None = None
    options: dict = field(default_factory=dict)
    run_dir: Path | None = None          # set when resuming
    progress: bool = True
    quiet: bool = False
    # objects with on_start(trainer), before_step(trainer), after_step(trainer, loss, stats),
    # on_end(trainer) (e.g. the live viewer: viewer.training.TrainingViewerHook)
    hooks: list = field(default_factory=list)
    device: str = "auto"                 # auto | cpu | cuda: model, data and optimizer state live there
    dist_timeout_s: float = distributed.DEFAULT_TIMEOUT_S   # a rank silent this long stops the others
    # decoded-image budget: auto | MB | "<n>MB"/"<n>GB" | "<n>img" | all; a dataset that does not fit
    # streams from disk (engine.data.stream) and rays come from working sets of cached images
    image_cache: object = "auto"


def make_method_config(method_cls, options: dict):
    """The method's config: defaults overridden by ``options`` (checked, coerced: see
    :meth:`engine.methods.base.MethodConfig.from_options`)."""
    return method_cls.config_cls.from_options(options, method_cls.name)


def write_run_config(run_dir: Path, settings: TrainSettings, cfg, world_size: int = 1, device: str = "cpu") -> None:
    import tomli_w

    opts = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()}
    scene = {"name": settings.scene_name or Path(settings.data).name, "data": str(Path(settings.data).resolve()),
             "downscale": int(settings.downscale)}
    if settings.data_format:
        scene["format"] = settings.data_format
    if settings.background is not None:
        scene["background"] = ",".join(f"{c:g}" for c in settings.background)
    doc = {"scene": scene, "method": {"name": settings.method.name, "options": opts},
           "run": {"world_size": int(world_size), "device": str(device),
                   "image_cache": str(settings.image_cache if settings.image_cache is not None else "auto")}}
    atomic_write_text(run_dir / "config.toml", "# written by kernelight train; "
                      "'kernelight train config.toml' reproduces this run\n" + tomli_w.dumps(doc))


class Trainer:
    def __init__(self, settings: TrainSettings):
        from ..data import load_dataset
        from ..methods.base import Method

        self.settings = settings
        if not (isinstance(settings.method, type) and issubclass(settings.method, Method)):
            raise ConfigError(f"TrainSettings.method must be a Method subclass (engine.methods.get_method(name)), "
                              f"got {settings.method!r}")
        self.method_cls = settings.method
        self.method_name = self.method_cls.name
        resume_ckpt = None
        if settings.run_dir is not None:
            self.run_dir = Path(settings.run_dir)
            resume_ckpt = latest_valid_checkpoint(self.run_dir / "checkpoints", method=self.method_name)
            if resume_ckpt is None:
                raise ConfigError(f"{self.run_dir}: no checkpoint to resume from in checkpoints/")
        self.cfg = make_method_config(self.method_cls, settings.options)
        self.device = distributed.resolve_device(settings.device, start=True)
        self.device_note = None
        if self.device.type not in self.method_cls.devices:
            if (settings.device or "auto") != "auto":
                raise ConfigError(f"--device {settings.device}: method {self.method_name} keeps its model on "
                                  f"{' or '.join(self.method_cls.devices)} (its {self.device.type} placement is not "
                                  f"done yet); use --device auto")
            # Taichi still runs on the GPU; the model stays where the method can hold it
            self.device_note = (f"method {self.method_name} keeps its model on the CPU; the kernels run on "
                                f"{self.device.type} and their inputs are copied per call")
            self.device = torch.device("cpu")
        rank, world, _ = distributed.env_world()
        ck = load_checkpoint(resume_ckpt, method=self.method_name) if resume_ckpt is not None else None
        written = (f"{resume_ckpt.name} was written by {int(ck.get('world_size', 1))} rank(s); "
                   if ck is not None and int(ck.get("world_size", 1)) != world else "")
        self.batch = distributed.check_world(self.method_cls, self.cfg, world, written)   # before any rank waits
        self.dist = distributed.init(self.device, settings.dist_timeout_s)
        self.is_main = self.dist.is_main
        self.dataset = load_dataset(settings.data, downscale=settings.downscale,
                                    background=settings.background, format=settings.data_format,
                                    image_cache=settings.image_cache)
        if "train" not in self.dataset.splits:
            raise ConfigError(f"{settings.data}: the dataset has no 'train' split")
        if self.device.type != "cpu":
            self.dataset.splits = {k: v.to(self.device) for k, v in self.dataset.splits.items()}
        self.background = torch.as_tensor(self.dataset.background, dtype=torch.float32).to(self.device)
        torch.manual_seed(self.cfg.seed)
        # every rank holds the same generators and draws the whole step's batch (distributed.py)
        self.gen = torch.Generator().manual_seed(self.cfg.seed)
        self.step = 0
        self.train_time = 0.0
        if ck is not None:
            self.method = self._attach(self.method_cls.from_state_dict(self.cfg, ck["model"]))
            self.optimizer = self.method.make_optimizer()
            self.optimizer.load_state_dict(ck["optimizer"])
            self.gen.set_state(ck["rng"])
            self.step = int(ck["step"])
            self.train_time = float(ck.get("train_time", 0.0))
            self._order = ck.get("order")
            self.notes = [f"resumed from {resume_ckpt} at step {self.step}"]
            w0 = int(ck.get("world_size", 1))
            if w0 != self.dist.world_size:
                opt = self.method_cls.batch_option() or "batch"
                self.notes.append(f"the checkpoint was written by {w0} rank(s), resuming with {self.dist.world_size}: "
                                  f"each step's batch ({opt} = {self.batch}) is split {self.dist.world_size} way(s) "
                                  f"instead of {w0}; the training is the same")
        else:
            self.method = self._attach(self.method_cls.create(self.cfg, self.dataset))
            self.optimizer = self.method.make_optimizer()
            self._order = None
            scene = settings.scene_name or Path(settings.data).name
            stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H%M%S")
            run_dir = str(Path(settings.output) / scene / self.method_name / stamp)
            # rank 0 names the run (clocks differ) and its initial model is every rank's
            run_dir = distributed.broadcast_bytes(self.dist, run_dir.encode() if self.is_main else None,
                                                  "the run folder broadcast").decode()
            self.run_dir = Path(run_dir)
            self.notes = list(self.method.notes)
            self._sync_from_rank0("the initial model broadcast")
        if self.device_note:
            self.notes.append(self.device_note)
        self.notes.extend(self._streaming_notes())
        if self.dist.enabled:
            self.notes.append(f"data-parallel: {self.dist.world_size} ranks ({self.dist.backend}, {self.device}); "
                              f"each step's batch of {self.batch} split {self.batch // self.dist.world_size} per rank")
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "checkpoints").mkdir(exist_ok=True)
            write_run_config(self.run_dir, settings, self.cfg, self.dist.world_size, self.device.type)
        self.last_good_ckpt = resume_ckpt
        # "image": whole training images per step (method.train_step, one call each); "rays": random
        # rays across all training images (method.train_step_rays, batch size cfg.rays_per_batch)
        self.batch_mode = self.method_cls.batch_mode
        if self.batch_mode not in ("image", "rays"):
            raise ConfigError(f"method {self.method_name}: batch_mode must be 'image' or 'rays', got {self.batch_mode!r}")
        self.sampler = None
        if self.batch_mode == "rays":
            from ..data.sampler import RaySampler

            self.sampler = RaySampler(self.dataset.splits["train"], int(self.cfg.rays_per_batch), seed=self.cfg.seed,
                                      shard=(self.dist.rank, self.dist.world_size))
            if resume_ckpt is not None and ck.get("sampler"):
                self.sampler.load_state_dict(ck["sampler"])
            if self.sampler.working_set is not None:
                self.notes.append(f"rays come from working sets of {self.sampler.working_set} training images, "
                                  f"the next set every {self.sampler.refresh_every} steps (decoded in the background)")

    def _attach(self, method):
        """Put a method on the run's device, tell it where it sits in a distributed run and give it
        the training data (:meth:`Method.bind_training_data`)."""
        method = method.to(self.device)
        method.dist = self.dist if self.dist.enabled else None
        method.bind_training_data(self.dataset)
        return method

    def _sync_from_rank0(self, what: str) -> None:
        """Every rank's model and optimizer become copies of rank 0's (after structural changes)."""
        if not self.dist.enabled:
            return
        st = distributed.broadcast_state(
            self.dist, {"model": self.method.state_dict(), "optimizer": self.optimizer.state_dict()}
            if self.is_main else None, what=what)
        if not self.is_main:
            notes = self.method.notes
            self.method = self._attach(self.method_cls.from_state_dict(self.cfg, st["model"]))
            self.method.notes = notes
            self.optimizer = self.method.make_optimizer()
            self.optimizer.load_state_dict(st["optimizer"])

    # -------------------------------------------------------------------------- helpers
    def _count(self) -> str:
        """What the model is made of, for progress lines (the method's ``progress_label``)."""
        return self.method.progress_label()

    def _next_index(self) -> int:
        n = len(self.dataset.splits["train"].cameras)
        if not self._order:
            self._order = torch.randperm(n, generator=self.gen).tolist()
        return self._order.pop()

    def _next_indices(self) -> list[int]:
        """This rank's training images for the step: the step draws ``self.batch`` images for all
        ranks (the same on every rank) and each rank keeps its part."""
        idx = [self._next_index() for _ in range(self.batch)]
        split = self.dataset.splits["train"]
        if split.streaming and self._order:   # decode the next step's images while this one trains
            split.prefetch(list(reversed(self._order[-self.batch:]))[self.dist.shard(self.batch)])
        return idx[self.dist.shard(len(idx))]

    def _streaming_notes(self) -> list[str]:
        info = self.dataset.metadata.get("image_cache") or {}
        if not info.get("streaming"):
            return []
        return [f"images stream from disk: decoded they take {info['decoded_mb']:,.0f} MB, more than the image "
                f"cache ({info['budget_mb']:,.0f} MB, --image-cache {info['setting']}); "
                f"{self.dataset.splits['train'].images.capacity()} training images fit in it"]

    def save(self) -> Path:
        """Write a checkpoint (rank 0 only; the other ranks hold the same state)."""
        path = self.run_dir / "checkpoints" / checkpoint_name(self.step)
        if not self.is_main:
            return path
        payload = {"model": self.method.state_dict(), "optimizer": self.optimizer.state_dict(),
                   "rng": self.gen.get_state(), "order": self._order, "train_time": self.train_time,
                   "sampler": self.sampler.state_dict() if self.sampler is not None else None,
                   "world_size": self.dist.world_size, "device": self.device.type}
        try:
            save_checkpoint(path, payload, method=self.method_name, step=self.step)
        except OSError as exc:   # disk full, quota, permissions: the atomic write left the older ones intact
            kept = self.last_good_ckpt or "none (no checkpoint was saved yet)"
            raise TrainingError(f"could not write checkpoint {path} at step {self.step} ({exc.strerror or exc}); "
                                f"training stopped. Last good checkpoint, intact: {kept}; free space and resume "
                                f"with: kernelight train --resume {self.run_dir}") from None
        self.last_good_ckpt = path
        return path

    def progress(self) -> float:
        """Training progress in [0, 1]: the larger of the step and time-budget fractions."""
        p = self.step / max(self.cfg.max_steps, 1)
        budget = getattr(self.cfg, "time_budget_s", 0.0)
        if budget:
            p = max(p, self.train_time / budget)
        return min(p, 1.0)

    def _log(self, record: dict) -> None:
        if not self.is_main:
            return
        if self.dist.enabled:
            record = {**record, "world_size": self.dist.world_size}
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    @torch.no_grad()
    def evaluate(self, max_views: int | None = None) -> dict:
        split = self.dataset.splits.get("test") or self.dataset.splits.get("val") or self.dataset.splits["train"]
        n = len(split.cameras)
        k = n if max_views is None else min(n, max_views)
        idx = torch.linspace(0, n - 1, k).round().long().tolist() if k > 0 else []
        psnrs = []
        for j, i in enumerate(idx):
            split.prefetch(idx[j + 1:j + 3])
            out = self.method.render(split.cameras, i, background=self.background)
            mse = ((out["rgb"] - eval_target(self.method, split, i, self.background)) ** 2).mean().clamp_min(1e-12)
            psnrs.append(float(-10 * torch.log10(mse)))
        return {"test_psnr": sum(psnrs) / max(len(psnrs), 1), "test_views": len(psnrs)}

    # -------------------------------------------------------------------------- the loop
    def _check_finite(self, params) -> None:
        """Stop, naming the step and the parameter group, when a parameter is NaN/Inf (a NaN gradient or
        a corrupted value would otherwise be written into the next checkpoint)."""
        if not params:
            return
        with torch.no_grad():
            # fast path: a NaN or Inf anywhere makes the plain sum non-finite (one vectorised pass;
            # isfinite().all() took 8 ms a call for a 1.6M-parameter field against 0.3 ms); a sum
            # that overflows on finite values is told apart by the exact check below
            total = torch.stack([p.detach().sum().to(torch.float64) for p in params]).sum()
            if math.isfinite(float(total)):
                return
            ok = torch.stack([p.isfinite().all() for p in params]).all()
        if bool(ok):
            return
        bad = [g.get("name", "?") for g in self.optimizer.param_groups
               if any(not bool(p.isfinite().all()) for p in g["params"])]
        kept = self.last_good_ckpt or "none (no checkpoint was saved yet)"
        raise TrainingError(f"parameters became non-finite (NaN/Inf in {', '.join(bad)}) at step {self.step}; "
                            f"training stopped without saving them. Last good checkpoint: {kept}")

    def _step(self, indices: list[int] | None) -> tuple[float, dict]:
        """One training step: this rank's share of the batch, gradients averaged over ranks, one
        optimizer step (the one place where parameters change), structural changes made once."""
        split = self.dataset.splits["train"]
        self.optimizer.zero_grad(set_to_none=True)
        self._check_finite([p for g in self.optimizer.param_groups for p in g["params"]])   # changed by a hook?
        if self.batch_mode == "rays":
            loss, stats = self.method.train_step_rays(self.step, self.sampler.sample(), self.background)
            loss.backward()
            loss = float(loss.detach())
        else:   # the loss is the mean over the step's images: backward image by image
            losses, per = [], []
            for index in indices:
                li, st, _ = self.method.train_step(self.step, split.images[index], split.cameras, index,
                                                   self.background)
                (li / len(indices)).backward()
                losses.append(float(li.detach()))
                per.append(st)
            loss = sum(losses) / len(losses)
            stats = per[0] if len(per) == 1 else _mean_stats(per)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        loss, psnr = distributed.average_gradients(self.dist, params, (loss, stats["psnr"]),
                                                   f"the gradient all-reduce of step {self.step}")
        stats["psnr"] = psnr
        if not math.isfinite(loss):   # the same value on every rank: all stop together
            kept = self.last_good_ckpt or "none (no checkpoint was saved yet)"
            raise TrainingError(f"loss became {loss} at step {self.step}; training stopped. "
                                f"Last good checkpoint: {kept}")
        self.method.after_backward()
        self.method.update_learning_rates(self.optimizer, self.step, progress=self.progress())
        self.optimizer.step()          # the one place where parameters change
        self._check_finite(params)
        struct = self.method.post_step(self.optimizer, self.step)
        if struct:
            stats.update(struct)
            if self.dist.enabled and self.method.changed_structure(struct):
                self._sync_from_rank0(f"the model broadcast after the structural change of step {self.step}")
        return loss, stats

    def train(self) -> Path:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        c = self.cfg
        main = self.is_main   # rank 0 alone prints, logs, evaluates, checkpoints and serves hooks
        console = Console(quiet=self.settings.quiet or not main)
        for note in self.notes:
            console.print(f"[cyan]note:[/] {note}")
        console.print(f"run folder: {self.run_dir}")
        columns = [TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[ips]:>5.1f} it/s"), TextColumn("loss {task.fields[loss]:.4f}"),
                   TextColumn("PSNR {task.fields[psnr]:5.2f}"), TextColumn("{task.fields[n]}"),
                   TimeElapsedColumn(), TimeRemainingColumn()]
        from shaders import runtime

        hooks = list(self.settings.hooks) if main else []
        for h in hooks:
            h.on_start(self)
        start_step = self.step
        ema_loss, ema_psnr = None, None
        t_last, s_last = time.perf_counter(), self.step
        t_print = t_last
        ips = 0.0
        with Progress(*columns, console=console, disable=not (self.settings.progress and main),
                      transient=False) as prog:
            task = prog.add_task("train", total=c.max_steps, completed=self.step, ips=0.0, loss=0.0,
                                 psnr=0.0, n=self._count())
            try:
                while self.step < c.max_steps:
                    if c.time_budget_s and self.train_time >= c.time_budget_s:
                        console.print(f"time budget of {c.time_budget_s:.0f} s reached at step {self.step}")
                        break
                    for h in hooks:
                        h.before_step(self)
                    t0 = time.perf_counter()
                    indices = self._next_indices() if self.batch_mode == "image" else None
                    with runtime.runtime_lock:  # viewer renders never interleave with a step
                        loss, stats = self._step(indices)
                    self.train_time += time.perf_counter() - t0
                    if c.time_budget_s and self.dist.enabled:   # ranks stop at the same step
                        self.train_time = distributed.broadcast_float(self.dist, self.train_time,
                                                                      f"the clock broadcast of step {self.step}")
                    self.step += 1
                    for h in hooks:
                        h.after_step(self, loss, stats)
                    ema_loss = loss if ema_loss is None else 0.9 * ema_loss + 0.1 * loss
                    ema_psnr = stats["psnr"] if ema_psnr is None else 0.9 * ema_psnr + 0.1 * stats["psnr"]
                    now = time.perf_counter()
                    if now - t_last > 1.0:
                        ips = (self.step - s_last) / (now - t_last)
                        t_last, s_last = now, self.step
                    prog.update(task, completed=self.step, ips=ips, loss=ema_loss, psnr=ema_psnr,
                                n=self._count())
                    if not console.is_terminal and now - t_print > 30.0:  # logs (CI, make demo | tee)
                        t_print = now
                        console.print(f"step {self.step}/{c.max_steps}  {ips:.2f} it/s  loss {ema_loss:.4f}  "
                                      f"train PSNR {ema_psnr:.2f}  {self._count()}  "
                                      f"{self.train_time:.0f} s")
                    rec = None
                    if self.step % c.log_every == 0 or "cloned" in stats:
                        rec = {"step": self.step, "loss": loss, "train_psnr": stats["psnr"],
                               "num_primitives": self.method.num_primitives,
                               "train_time_s": round(self.train_time, 3)}
                        rec.update({k: v for k, v in stats.items() if k != "psnr"})
                    if c.eval_every and self.step % c.eval_every == 0 and main:
                        rec = rec or {"step": self.step, "train_time_s": round(self.train_time, 3)}
                        rec.update(self.evaluate(c.eval_views))
                        prog.console.print(f"step {self.step}: test PSNR {rec['test_psnr']:.2f} dB "
                                           f"({rec['test_views']} views), {self._count()}")
                    if rec:
                        self._log(rec)
                    if c.checkpoint_every and self.step % c.checkpoint_every == 0:
                        self.save()
            except KeyboardInterrupt:
                path = self.save()
                console.print(f"[yellow]interrupted at step {self.step}: checkpoint saved to {path}[/]; "
                              f"resume with: kernelight train --resume {self.run_dir}")
                for h in hooks:
                    h.on_end(self)
                distributed.shutdown(self.dist)
                return self.run_dir
            except distributed.DistributedError as exc:
                for h in hooks:
                    h.on_end(self)
                kept = self.last_good_ckpt or "none"
                raise distributed.DistributedError(f"{exc} at step {self.step}; last checkpoint: {kept}"
                                                   + (f"; resume with: kernelight train --resume {self.run_dir}"
                                                      if self.last_good_ckpt else "")) from None
        path = self.save()
        distributed.shutdown(self.dist)
        if self.step > start_step and main:
            final = self.evaluate(None if len(self.dataset.splits.get("test", [])) <= 25 else 25)
            self._log({"step": self.step, "final": True, **final, "train_time_s": round(self.train_time, 3)})
            console.print(f"done: {self.step} steps in {self.train_time:.0f} s, test PSNR "
                          f"{final['test_psnr']:.2f} dB on {final['test_views']} views; checkpoint {path}")
        for h in hooks:
            h.on_end(self)
        return self.run_dir


def _mean_stats(per: list[dict]) -> dict:
    """Per-image stats of one step averaged (numbers), the first image's value otherwise."""
    out = dict(per[0])
    for k, v in out.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            vals = [p.get(k, v) for p in per]
            out[k] = sum(vals) / len(vals) if isinstance(v, float) else sum(vals)
    return out


def eval_target(method, split, index: int, background) -> torch.Tensor:
    """Ground truth for evaluation: the image, or for methods with ``masked_eval = True`` on data
    with masks (DTU), the image inside the mask composited on the background outside it (the
    field does not model the background there)."""
    img = split.images[index]
    if method.masked_eval and getattr(split, "masks", None) is not None:
        img = metrics.composite_on_background(img, split.masks[index], background)
    return img


def train(settings: TrainSettings) -> Path:
    """Train a method and return the run folder (see module docstring)."""
    return Trainer(settings).train()


