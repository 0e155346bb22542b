"""Adaptive Shells as a trainable method (the interface the generic trainer drives).

Training: random ray batches (``batch_mode = "rays"``), volumetric rendering with an occupancy
grid (:mod:`.volume`; refreshed every ``occ_update_every`` steps, partially by default:
``occ_refresh_fraction``), loss ``L1(rgb) (or MSE: rgb_loss) + eikonal_weight * eikonal +
mask_weight * BCE(opacity, mask or alpha) + kernel_reg_weight * mean(1 / (a s(x)))``. After step ``k`` of
``shell_finetune_from`` (by default the last seventh of training; 0 = never) the shells are
extracted (:mod:`.extract`) and later steps render only inside the band (:mod:`.render`),
exactly as the shells will be rendered. What those steps train is ``shell_finetune_params``:

* ``color`` (``auto``'s choice with the probe sampler): the colour network only; the geometry stays
  exactly as volume rendering left it, and the crossing samples take their opacity from the probe
  grid (no gradient).
* ``all``: the whole field. The probe sampler still places the samples (from its grid), but each
  crossing's opacity is recomputed from the field -- SDF network, hash grid and kernel size -- at
  its descent's probe points (:meth:`.field.ShellField.descent_opacity`, differentiable); near
  misses use the field's own NeuS opacity as in rendering.
* ``shell_finetune_sampler step`` (``auto`` then trains all): a sample every
  ``shell_finetune_step`` in every band interval with the field's own NeuS opacity -- volume
  rendering restricted to the band, the paper's fine-tuning.

Measured side by side from one lego_200 volumetric checkpoint (step 2,000 of a 4,000-step
schedule; 600 fine-tuning steps each; shells rendered with the probe sampler, all 200 test views,
``tools/results/bench_shells_finetune.json``): colour only 22.20 dB, all 23.08 dB, step sampler
23.39 dB. From the
default runs' step-12,000 checkpoints an earlier session measured the opposite (differentiable
crossings 26.25 / 23.22 dB against 26.52 / 24.03 colour only on lego_200 / scan24_400), so the
default stays ``auto`` until a full-length comparison (README "Adaptive Shells").

Rendering (:meth:`ShellsMethod.render`): ``render_mode`` ``auto`` uses the shells when they exist,
else full volumetric rendering. Outputs: ``rgb (H,W,3)``, ``alpha``, ``depth`` (expected depth
along the ray), ``normal (H,W,3)`` (opacity-weighted world normal), ``cost (H,W)`` (network
samples per ray: points where the SDF network runs -- at the 4 finite-difference points, or once
with analytic normals -- and the colour network once; a heat map of the cost), ``probes (H,W)`` (grid lookups per ray: the occupancy grid
volumetrically, the probe grid in the shells) and ``geo_evals (H,W)`` (points where only the SDF
network runs: whole-field fine-tuning's descents; 0 when rendering).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as Fn

from ...errors import ConfigError
from ...train.metrics import composite_on_background
from ...train.optim import adam
from ..base import Method
from .config import ShellsConfig
from .field import ShellField
from .volume import OccupancyGrid, render_rays_volume


def lr_factor(step: int, cfg: ShellsConfig) -> float:
    """Linear warm-up over ``lr_warmup`` steps, then cosine decay to ``lr_final_frac``.

    The volumetric phase decays over its own length: with fine-tuning from step ``k``
    (:attr:`ShellsConfig.finetune_step`) the rate reaches ``lr_final_frac`` at ``k``, as in a
    volume-only run of ``k`` steps; the fine-tuning steps then follow the cosine over
    ``max_steps`` (for the earlier default 12,000 + 2,000: from 0.145 down to 0.1 of the base rates).
    With the decay over all ``max_steps`` the default recipe rendered lego_200 at 26.23 dB (all
    test views); continuing a decayed 12,000-step volume-only run the same way gave 26.47 dB.
    """
    if step < cfg.lr_warmup:
        return (step + 1) / cfg.lr_warmup
    k = cfg.finetune_step
    end = k if 0 < k < cfg.max_steps and step < k else cfg.max_steps
    t = min(max((step - cfg.lr_warmup) / max(end - cfg.lr_warmup, 1), 0.0), 1.0)
    return cfg.lr_final_frac + (1 - cfg.lr_final_frac) * 0.5 * (1 + math.cos(math.pi * t))


class ShellsMethod(Method):
    """Adaptive Shells: a NeuS field (hash-grid SDF, learned kernel size, colour network) trained
    volumetrically, then rendered and fine-tuned inside an extracted mesh band (see the module
    docstring). ``field`` is the :class:`ShellField`, ``occ`` its occupancy grid, ``shells`` the
    extracted meshes (None before extraction)."""

    name = "shells"
    config_cls = ShellsConfig
    batch_mode = "rays"
    masked_eval = True  # on data with masks (DTU) evaluate inside the mask, background outside
    devices = ("cpu", "cuda")   # field, occupancy grid, probe grid and render rays follow the field's device
    export_formats = {"shells": "outer.ply, inner.ply and surface.ply (the SDF zero level set) in a folder"}

    def __init__(self, cfg: ShellsConfig, field: ShellField, occ: OccupancyGrid | None = None):
        if cfg.render_mode not in ("auto", "shells", "volume"):
            raise ConfigError(f"render_mode must be auto, shells or volume, got {cfg.render_mode!r}")
        if not 0.0 < float(cfg.occ_refresh_fraction) <= 1.0:
            raise ConfigError(f"occ_refresh_fraction must be in (0, 1], got {cfg.occ_refresh_fraction}")
        super().__init__(cfg)
        self.field = field
        self.model = field
        self.occ = occ or OccupancyGrid(field.center, float(field.half_size), cfg.occ_res)
        self.shells = None          # engine.methods.shells.extract.Shells once extracted
        self._renderer = None
        self._train_renderer = None
        self._time_progress = None
        self.gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.last_render_stats: dict = {}

    # ---------------------------------------------------------------- creation
    @classmethod
    def create(cls, cfg: ShellsConfig, dataset) -> "ShellsMethod":
        field = ShellField(dataset.scene_box, cfg, seed=cfg.seed)
        m = cls(cfg, field)
        n = sum(p.numel() for p in field.parameters())
        m.notes.append(f"hash grid {cfg.hash_levels} levels x 2^{cfg.hash_log2_size} x {cfg.hash_features}, "
                       f"resolutions {field.resolutions[0]}..{field.resolutions[-1]}; {n} parameters")
        return m

    # ---------------------------------------------------------------- device
    def to(self, device) -> "ShellsMethod":
        """The field and the occupancy grid move (:meth:`Method.to`); the shell meshes stay on the CPU
        as data (checkpoints, export) and the renderer (BVH, probe grid) is rebuilt on the field's
        device when next needed. The sampling generator stays on the CPU: the same draws on every
        device and rank, copied to the device (a few KB a step)."""
        super().to(device)
        self._renderer = self._train_renderer = None
        return self

    # ---------------------------------------------------------------- optimisation
    def make_optimizer(self) -> torch.optim.Optimizer:
        c, f = self.cfg, self.field
        nets = [p for n, p in f.named_parameters() if n not in ("table", "log_s")]
        groups = [{"name": "encoding", "params": [f.table], "lr": c.lr_encoding, "base_lr": c.lr_encoding},
                  {"name": "networks", "params": nets, "lr": c.lr_network, "base_lr": c.lr_network},
                  {"name": "log_s", "params": [f.log_s], "lr": c.lr_s, "base_lr": c.lr_s}]
        return adam(groups, lr=0.0, betas=(0.9, 0.99), eps=1e-15)    # fused where torch has it

    def _schedule_step(self, step: int) -> int:
        """The step the schedules (learning rate, extraction) see: ``step``, or with a time budget
        (``time_budget_s``, one process) the step of the same fraction of ``max_steps`` as the
        elapsed fraction of the budget when that is further -- so a run stopped by its budget has
        decayed its rates and extracted its shells at ``shell_finetune_from`` of the budget. Ranks
        of a data-parallel run keep the step count (their clocks differ)."""
        p = self._time_progress
        if p is None:
            return step
        return max(step, int(p * self.cfg.max_steps))

    def update_learning_rates(self, optimizer, step: int, progress: float | None = None) -> dict:
        self._time_progress = (float(progress) if progress is not None and self.cfg.time_budget_s > 0
                               and self.world_size == 1 else None)
        k = lr_factor(self._schedule_step(step), self.cfg)
        base = {"encoding": self.cfg.lr_encoding, "networks": self.cfg.lr_network, "log_s": self.cfg.lr_s}
        for g in optimizer.param_groups:
            g["lr"] = base[g["name"]] * k
        return {g["name"]: g["lr"] for g in optimizer.param_groups}

    def _occupied(self, p: torch.Tensor, cell_radius: float) -> torch.Tensor:
        """Occupancy predicate of the grid: ``|f(p)| < 2 r_cell + ln(4/eps) / s(p)`` (the logistic
        density of NeuS is below ``eps`` of its peak elsewhere)."""
        f, log_s, _ = self.field.geometry(p)
        return f.abs() < 2.0 * cell_radius + math.log(4.0 / self.cfg.occ_eps) * torch.exp(-log_s)

    def _refresh_cells(self, s: int):
        """The cells the occupancy refresh after step ``s`` re-evaluates: all (None), or with
        ``occ_refresh_fraction`` f < 1 a partial set (:meth:`OccupancyGrid.refresh_cells`) except on
        every ``round(1 / f)``-th refresh, which re-evaluates every cell."""
        f = float(self.cfg.occ_refresh_fraction)    # in (0, 1]: checked in __init__
        if f == 1.0 or (s // self.cfg.occ_update_every) % max(int(round(1.0 / f)), 1) == 0:
            return None
        return self.occ.refresh_cells(f, self.gen)

    def _anneal(self, step: int) -> float:
        n = self.cfg.cos_anneal_steps
        return 1.0 if n <= 0 else min(1.0, step / n)

    def render_rays(self, o, d, background=None, anneal: float = 1.0, train: bool = False,
                    mode: str | None = None, offsets=None) -> dict:
        """Render rays (R, 3) with the volumetric or the shell path (``mode`` overrides the config).
        ``train``: jittered sample offsets, ``offsets`` (R, 1) when given, else drawn from ``self.gen``."""
        view = self.field.view_encoding(d)
        gen = self.gen if train and offsets is None else None
        mode = mode or self.active_mode
        if mode == "shells":
            if train and self.cfg.shell_finetune_sampler == "step":
                return self.train_renderer.render_rays(o, d, view, background, anneal=anneal)
            # whole-field fine-tuning: the probe sampler's crossings get their opacity from the field
            return self.renderer.render_rays(o, d, view, background, anneal=anneal,
                                             differentiable=train and not self.finetune_colour_only,
                                             solid=self.cfg.shell_finetune_solid if train else None)
        return render_rays_volume(self.field, self.occ, o, d, view, self.cfg, background, anneal, gen,
                                  t_stop=self.cfg.t_stop, offsets=offsets)

    @property
    def active_mode(self) -> str:
        m = self.cfg.render_mode
        if m == "auto":
            return "shells" if self.shells is not None else "volume"
        if m == "shells" and self.shells is None:
            raise ConfigError("render_mode=shells but this model has no shells yet (train with "
                              "--shell-finetune-from N or run 'kernelight export RUN --format shells')")
        return m

    @property
    def renderer(self):
        if self._renderer is None:
            from .render import ShellRenderer

            self._renderer = ShellRenderer(self.field, self.shells, self.cfg)
        return self._renderer

    @property
    def train_renderer(self):
        """The band renderer of ``shell_finetune_sampler step``: a sample every
        ``shell_finetune_step`` in every band interval, the field's own NeuS opacity."""
        import dataclasses

        r = self._train_renderer
        if r is None or r.shells_id != id(self.shells):
            from .render import ShellRenderer

            cfg = dataclasses.replace(self.cfg, shell_probe_grid=0, shell_one_sample_crossings=False,
                                      shell_surface_samples=False, shell_step=self.cfg.shell_finetune_step)
            r = self._train_renderer = ShellRenderer(self.field, self.shells, cfg)
            r.shells_id = id(self.shells)
        return r

    def train_step_rays(self, step: int, batch, background) -> tuple:
        if self.shells is None or not self.finetune_colour_only:
            return self._train_step_rays(step, batch, background)
        # colour-only fine-tuning: the geometry (hash table, SDF network, kernel size) builds no graph,
        # so the backward skips the table gradient that after_backward would discard
        geo = [p for n, p in self.field.named_parameters() if not n.startswith("col_") and p.requires_grad]
        for p in geo:
            p.requires_grad_(False)
        try:
            loss, stats = self._train_step_rays(step, batch, background)
        finally:
            for p in geo:
                p.requires_grad_(True)
        if not loss.requires_grad:       # no ray reached the colour network: a zero gradient, not an error
            loss = loss + 0.0 * self.field.col_l2.bias.sum()
        return loss, stats

    def _train_step_rays(self, step: int, batch, background) -> tuple:
        c = self.cfg
        bg = torch.as_tensor(background, dtype=torch.float32, device=batch.origins.device)
        # per-ray randomness is drawn for the global batch and sliced (Method.shard): every rank's
        # self.gen stays in step (the occupancy grid updates draw from it too)
        offsets = None
        if self.active_mode == "volume":
            n = len(batch) * self.world_size
            # self.gen stays on the CPU (the same draws on every device and rank): one small copy a step
            offsets = torch.rand(n, 1, generator=self.gen)[self.shard(n)].to(batch.origins.device)
        out = self.render_rays(batch.origins, batch.directions, bg, anneal=self._anneal(step), train=True,
                               offsets=offsets)
        target = batch.rgb
        mask_t = None
        if batch.mask is not None:
            mask_t = batch.mask.float()
            target = composite_on_background(target, mask_t, bg)
        elif batch.alpha is not None:
            mask_t = batch.alpha.float()
        err = out["rgb"] - target
        l1 = err.abs().mean()
        if c.rgb_loss == "mse":
            loss = (err ** 2).mean()
        elif c.rgb_loss == "l1":
            loss = l1
        else:
            raise ConfigError(f"rgb_loss must be l1 or mse, got {c.rgb_loss!r}")
        stats = {}
        # eikonal on the samples and on random points of the box
        pts = (torch.rand(256, 3, generator=self.gen)[self.shard(256)].to(self.field.center.device) * 2 - 1) \
            * self.field.half_size + self.field.center
        _, g_rand, _, _ = self.field.geometry_grad(pts)
        grads = torch.cat([out["grad"], g_rand], 0)
        eik = self.batch_mean((grads.norm(dim=-1) - 1.0) ** 2)   # samples differ per rank
        loss = loss + c.eikonal_weight * eik
        if mask_t is not None and c.mask_weight > 0:
            op = out["opacity"].clamp(1e-3, 1 - 1e-3)
            mask_loss = Fn.binary_cross_entropy(op, mask_t)
            loss = loss + c.mask_weight * mask_loss
            stats["mask_loss"] = float(mask_loss.detach())
        if c.kernel_reg_weight > 0:   # batch_mean: 0 when no rank has samples
            kreg = self.batch_mean(torch.exp(-out["log_s"]) / self.field.half_size)
            loss = loss + c.kernel_reg_weight * kreg
        mse = ((out["rgb"].detach() - target) ** 2).mean().clamp_min(1e-12)
        stats.update({"l1": float(l1.detach()), "eikonal": float(eik.detach()),
                      "psnr": float(-10 * torch.log10(mse)),
                      "samples_per_ray": float(out["samples"].mean()),
                      "s_mean": float(torch.exp(out["log_s"].detach()).mean()) if out["log_s"].numel() else 0.0})
        return loss, stats

    @property
    def finetune_colour_only(self) -> bool:
        """Whether fine-tuning inside the shells trains the colour network only (``shell_finetune_params``)."""
        v = self.cfg.shell_finetune_params
        if v not in ("auto", "color", "all"):
            raise ConfigError(f"shell_finetune_params must be auto, color or all, got {v!r}")
        return v == "color" or (v == "auto" and int(self.cfg.shell_probe_grid) > 0
                                and self.cfg.shell_finetune_sampler != "step")

    def after_backward(self) -> None:
        # colour-only fine-tuning: the geometry (hash table, SDF network, kernel size) keeps its
        # volumetric training; Adam skips parameters without a gradient
        if self.shells is not None and self.finetune_colour_only:
            for n, p in self.field.named_parameters():
                if not n.startswith("col_"):
                    p.grad = None

    def changed_structure(self, result: dict | None) -> bool:
        """The extraction changes the model (the occupancy refresh is deterministic on every rank)."""
        return bool(result) and "shell_faces_outer" in result

    def post_step(self, optimizer, step: int) -> dict | None:
        c = self.cfg
        s = step + 1
        res = None
        if s >= c.occ_warmup and s % c.occ_update_every == 0 and self.shells is None:
            frac = self.occ.update(self._occupied, self.gen, cells=self._refresh_cells(s))
            res = {"occupied": round(frac, 4)}
        if (self.shells is not None and self._renderer is not None and not self.finetune_colour_only
                and s % (4 * c.occ_update_every) == 0):
            self._renderer.update_vertex_sdf()    # vertex SDF / probe grid follow the fine-tuned field
        if c.finetune_step > 0 and self._schedule_step(s) >= c.finetune_step and self.shells is None:
            self.extract_shells()
            res = dict(res or {})
            res.update({"shell_faces_outer": int(self.shells.outer[1].shape[0]),
                        "shell_faces_inner": int(self.shells.inner[1].shape[0])})
        return res

    # ---------------------------------------------------------------- shells
    def extract_shells(self, **overrides):
        """Extract the shells from the current field (see :func:`.extract.extract_shells`)."""
        from .extract import extract_shells

        self.shells = extract_shells(self.field, self.cfg, **overrides)
        self._renderer = None
        return self.shells

    def export(self, format: str, out_dir) -> list:
        """Write ``format="shells"``: outer.ply, inner.ply and surface.ply (SDF zero level set)."""
        from pathlib import Path

        if format != "shells":
            return super().export(format, out_dir)
        from .extract import write_shells

        if self.shells is None:
            self.extract_shells()
        return write_shells(self.shells, Path(out_dir))

    # ---------------------------------------------------------------- inference
    @torch.no_grad()
    def render(self, cameras, index: int, background=None, mode: str | None = None) -> dict:
        dev = self.field.center.device
        o, d = cameras.generate_rays(index)
        H, W = o.shape[:2]
        o, d = o.reshape(-1, 3).to(dev), d.reshape(-1, 3).to(dev)     # no copy when the cameras are there
        bg = None if background is None else torch.as_tensor(background, dtype=torch.float32, device=dev)
        keys = ("rgb", "alpha", "depth", "depth_sum", "normal", "cost", "probes", "geo_evals")
        acc = {k: [] for k in keys}
        for i in range(0, o.shape[0], self.cfg.render_chunk):
            out = self.render_rays(o[i:i + self.cfg.render_chunk], d[i:i + self.cfg.render_chunk], bg, mode=mode)
            for k in keys:
                acc[k].append(out[k])
        cat = {k: torch.cat(v, 0) for k, v in acc.items()}
        normal = Fn.normalize(cat["normal"], dim=-1) * cat["alpha"][:, None]
        res = {k: cat[k].reshape(H, W) for k in ("alpha", "depth", "depth_sum", "cost", "probes", "geo_evals")}
        res.update(rgb=cat["rgb"].reshape(H, W, 3), normal=normal.reshape(H, W, 3))
        return res

    @property
    def num_primitives(self) -> int:
        """Faces of the outer and inner shells (0 before extraction)."""
        if self.shells is None:
            return 0
        return int(self.shells.outer[1].shape[0] + self.shells.inner[1].shape[0])

    def bounds(self) -> torch.Tensor:
        """The field's cubic box."""
        c, a = self.field.center.detach().float(), float(self.field.half_size)
        return torch.stack([c - a, c + a])

    def progress_label(self) -> str:
        if self.shells is None:
            return "volumetric"
        return f"shells {self.num_primitives} faces"

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict:
        st = {"field": {k: v.detach().clone() for k, v in self.field.state_dict().items()},
              "occ": self.occ.state_dict(),
              "shells": None if self.shells is None else self.shells.state_dict(),
              "gen": self.gen.get_state(),
              "normals": self.cfg.normals}       # part of the model: a checkpoint keeps the mode it trained with
        return st

    @classmethod
    def from_state_dict(cls, cfg: ShellsConfig, st: dict) -> "ShellsMethod":
        import dataclasses

        fs = st["field"]
        center, half = fs["center"], fs["half_size"]
        box = torch.stack([center - half, center + half])
        # part of the model, whatever the config says: the SDF gradient it was trained with (checkpoints
        # before the option: finite differences) and the table's shape (a pre-2^18 checkpoint loads)
        L, T, F = (int(v) for v in fs["table"].shape)
        if T & (T - 1):
            raise ConfigError(f"checkpoint hash table {tuple(fs['table'].shape)}: its size {T} is not a power of two")
        model = {"normals": st.get("normals", "fd"), "hash_levels": L, "hash_log2_size": T.bit_length() - 1,
                 "hash_features": F}
        if any(getattr(cfg, k) != v for k, v in model.items()):
            cfg = dataclasses.replace(cfg, **model)
        field = ShellField(box, cfg, seed=cfg.seed)
        field.load_state_dict(fs)
        m = cls(cfg, field, OccupancyGrid.from_state_dict(st["occ"]))
        if st.get("shells"):
            from .extract import Shells

            m.shells = Shells.from_state_dict(st["shells"])
        if st.get("gen") is not None:     # sample jitter / occupancy refresh continue where they were
            m.gen.set_state(st["gen"].cpu())
        return m
