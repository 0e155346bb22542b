"""GVGEN text-to-3D (ECCV 2024) as a trainable method: ``kernelight train gvgen --data DATASET_DIR``.

Training data: a set built by ``kernelight gvgen dataset`` (read by :mod:`engine.data.gvgen`):
per object, its fitted GaussianVolume (``volume.pt``: the ``as_grid()`` tensor and the GDF), its
captions and its Blender-format training images. Held-out colour-shape pairs are never trained on;
their test views are the dataset's ``test`` split, so the periodic eval, ``kernelight eval RUN`` and
``kernelight render RUN`` show generations from captions the model never saw.

One training step (``batch_mode = "image"``: the trainer hands over one training view):

1. ``batch_objects`` volumes: the view's object plus others drawn by the method's own generator
   (saved in checkpoints), each with one of its captions drawn at random;
2. stage 1 (:mod:`.diffusion`): the x0-parameterised DDPM loss on their normalised GDFs, the caption
   replaced by the empty one with probability ``cond_dropout``;
3. stage 2 (:mod:`.attributes`): attributes from the (slightly noised) ground-truth GDF and the
   caption, attribute losses against the fitted volumes, and the rendering loss
   ``0.2 L1 + 0.8 D-SSIM`` of the view's object, splatted by
   :func:`engine.render.gaussians.render_gaussians` (``path="splat"``, differentiable).

Generation (:meth:`GVGenMethod.generate`): caption -> text encoder -> DDIM sampling of the GDF
-> stage 2 in one pass -> N^3 Gaussians (those above ``min_opacity`` are rendered / exported).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from ...errors import ConfigError, DataError
from ...train.metrics import dssim_loss
from ..base import Method
from . import attributes as attr
from .config import GVGenConfig
from .diffusion import Schedule, ddim_sample, denormalize_gdf, diffusion_loss, normalize_gdf
from .unet import UNet3D

FORMAT = "kernelight-gvgen-model"


def _nets(cfg: GVGenConfig, n: int, text_dim: int) -> tuple[UNet3D, UNet3D]:
    patch = cfg.resolved_patch(n)
    levels = len(cfg.channel_mults)
    if n % (patch * 2 ** (levels - 1)):
        raise ConfigError(f"grid size {n} is not divisible by patch x 2^(levels - 1) = {patch * 2 ** (levels - 1)} "
                          f"(channel_mults has {levels} levels, patch {patch})")
    # cross-attention at the levels of 8^3 and coarser (GVGEN: the 8^3 and 4^3 levels of 32^3) and the middle
    attn = tuple(lvl for lvl in range(levels) if n // patch // 2 ** lvl <= 8)
    kw = dict(channels=cfg.channels, mults=tuple(cfg.channel_mults), blocks=cfg.blocks, attn_levels=attn,
              text_dim=text_dim, patch=patch)
    return (UNet3D(1, 1, time_embedding=True, **kw),
            UNet3D(4, attr.CHANNELS, time_embedding=False, **kw))


class GVGenMethod(Method):
    """Stage 1 (``stage1``: GDF diffusion U-Net) and stage 2 (``stage2``: attribute U-Net) plus
    ``meta``: N, box, text encoder name and dimension, the training captions' vocabulary, the
    held-out captions."""

    name = "gvgen"
    config_cls = GVGenConfig
    export_formats = {"ply": "standard 3DGS .ply of a generation (--caption, --gen-seed; default: the first "
                             "held-out caption)",
                      "gdf": "the generation's Gaussian Distance Field: (N, N, N) float32 .npy (world units)",
                      "generator": "a compact generator checkpoint (.pt: float16 networks and their meta, no optimizer "
                                   "state) that engine.generate / kernelight generate --model read (how the shipped "
                                   "engine/methods/gvgen/weights/primitives16.pt was made)"}

    def __init__(self, cfg: GVGenConfig, meta: dict, stage1: UNet3D, stage2: UNet3D):
        super().__init__(cfg)
        self.meta = meta
        self.stage1 = stage1
        self.stage2 = stage2
        self.schedule = Schedule()
        self.gen = torch.Generator().manual_seed(cfg.seed + 1)
        self._encoder = None
        self._data = None
        self._cache: dict = {}
        self._version = 0
        self._last_gen = None

    # ---------------------------------------------------------------- geometry
    @property
    def grid_size(self) -> int:
        return int(self.meta["N"])

    @property
    def box(self) -> torch.Tensor:
        return torch.as_tensor(self.meta["box"], dtype=torch.float32).reshape(2, 3)

    @property
    def side(self) -> float:
        return float((self.box[1] - self.box[0]).max())

    @property
    def cell(self) -> float:
        return self.side / (self.grid_size - 1)

    @property
    def vocabulary(self) -> set:
        return set(self.meta.get("vocabulary", []))

    # ---------------------------------------------------------------- creation
    @classmethod
    def create(cls, cfg: GVGenConfig, dataset) -> "GVGenMethod":
        info = (getattr(dataset, "metadata", None) or {}).get("gvgen")
        if info is None:
            raise ConfigError(f"{getattr(dataset, 'root', 'the dataset')}: method gvgen trains on a GVGEN training "
                              f"set (a folder with dataset.json, built by kernelight gvgen dataset), not on a "
                              f"{getattr(dataset, 'format', '?')} scene")
        man = info["manifest"]
        n = int(man["N"])
        if cfg.grid_size and cfg.grid_size != n:
            raise ConfigError(f"option grid_size is {cfg.grid_size} but the training set's volumes are {n}^3 "
                              f"({dataset.root}/dataset.json); use --grid-size {n} (or 0)")
        cfg.grid_size = n
        from .text import get_encoder, vocabulary

        enc = get_encoder(cfg.text_encoder)
        train_objs = dataset.splits["train"].cameras.gvgen["objects"]
        caps = [c for o in train_objs for c in _captions(o)]
        held = [o for o in man["objects"] if o.get("split") == "heldout"]
        meta = {"format": FORMAT, "N": n, "box": [[float(x) for x in r] for r in man["box"]],
                "text_encoder": cfg.text_encoder, "text_dim": int(enc.dim),
                "vocabulary": sorted(vocabulary(caps)), "train_captions": sorted(set(caps)),
                "heldout_captions": [o.get("caption") or _captions(o)[0] for o in held],
                "dataset": str(dataset.root), "gdf_key": "gdf_opaque"}
        s1, s2 = _nets(cfg, n, int(enc.dim))
        m = cls(cfg, meta, s1, s2)
        m._encoder = enc
        m.notes.append(f"{len(train_objs)} training objects ({len(set(caps))} captions, vocabulary of "
                       f"{len(meta['vocabulary'])} words), {len(held)} held out; N = {n}; stage-1 / stage-2 U-Nets "
                       f"{_count(s1) / 1e6:.2f}M / {_count(s2) / 1e6:.2f}M parameters")
        if info.get("missing"):
            m.notes.append(f"{len(info['missing'])} object(s) listed in dataset.json have no volume.pt yet and are "
                           f"left out: {', '.join(info['missing'][:6])}{' ...' if len(info['missing']) > 6 else ''}")
        if cfg.init_from:
            m._warm_start(cfg.init_from)
        return m

    def _warm_start(self, path) -> None:
        from ...api import find_run_checkpoint
        from ...io.checkpoint import load_checkpoint

        _, ck = find_run_checkpoint(path)
        data = load_checkpoint(ck)
        if data.get("method") != self.name:
            raise ConfigError(f"init_from {path}: a {data.get('method')} checkpoint, not a gvgen one")
        st = data["model"]
        if int(st["meta"]["N"]) != self.grid_size:
            raise ConfigError(f"init_from {path}: its networks generate {st['meta']['N']}^3 volumes, this set is "
                              f"{self.grid_size}^3")
        try:
            self.stage1.load_state_dict(_float(st["stage1"]))
            self.stage2.load_state_dict(_float(st["stage2"]))
        except RuntimeError as exc:
            raise ConfigError(f"init_from {path}: the network sizes differ from this config's ({str(exc)[:200]})") \
                from None
        self.notes.append(f"networks warm-started from {ck}")

    # ---------------------------------------------------------------- text
    def encoder(self):
        if self._encoder is None:
            from .text import get_encoder

            self._encoder = get_encoder(self.meta.get("text_encoder", "minilm"))
        return self._encoder

    def encode(self, captions: list[str]) -> dict:
        out = self.encoder().encode(list(captions))
        return {"pooled": out["pooled"].float(), "tokens": out["tokens"].float(), "mask": out["mask"].bool()}

    @staticmethod
    def null_condition(batch: int, dim: int) -> dict:
        """The empty caption (classifier-free guidance's unconditional input): zeros, one token."""
        return {"pooled": torch.zeros(batch, dim), "tokens": torch.zeros(batch, 1, dim),
                "mask": torch.ones(batch, 1, dtype=torch.bool)}

    # ---------------------------------------------------------------- training data
    def _load_data(self, cameras) -> dict:
        info = getattr(cameras, "gvgen", None)
        if info is None:
            raise ConfigError("method gvgen trains on a GVGEN training set (engine.data.gvgen); these cameras carry "
                              "no object records")
        if self._data is not None and self._data["root"] == info["root"] \
                and len(self._data["objects"]) == len(info["objects"]):
            return self._data
        from .dataset import read_volume

        root = Path(info["root"])
        grids, gdfs = [], []
        n = self.grid_size
        for o in info["objects"]:
            vol = read_volume(root / "objects" / o["id"] / "volume.pt")
            if int(vol["N"]) != n:
                raise DataError(root / "objects" / o["id"] / "volume.pt",
                                f"a {vol['N']}^3 volume; this model generates {n}^3")
            grids.append(vol["grid"][..., :attr.CHANNELS].float())
            # the distance to the nearest *visible* Gaussian when the set has it: after the Candidate Pool
            # Strategy re-activates every free anchor, the plain GDF is ~0 everywhere (FORMAT.md note)
            g = vol.get("gdf_opaque") if self.meta.get("gdf_key", "gdf_opaque") == "gdf_opaque" else None
            gdfs.append(normalize_gdf((vol["gdf"] if g is None else g).float(), self.side, self.cfg.gdf_clamp))
        caps = [_captions(o) for o in info["objects"]]
        flat = sorted({c for cs in caps for c in cs})
        emb = self.encoder().encode(flat)
        index = {c: i for i, c in enumerate(flat)}
        self._data = {"root": info["root"], "objects": info["objects"], "grid": torch.stack(grids),
                      "gdf": torch.stack(gdfs)[:, None], "captions": [[index[c] for c in cs] for cs in caps],
                      "pooled": emb["pooled"].float(), "tokens": emb["tokens"].float(), "mask": emb["mask"].bool(),
                      "view_object": info["view_object"]}
        return self._data

    def _condition(self, d: dict, cap_idx: list[int], drop: torch.Tensor | None = None) -> dict:
        c = {"pooled": d["pooled"][cap_idx].clone(), "tokens": d["tokens"][cap_idx].clone(),
             "mask": d["mask"][cap_idx].clone()}
        if drop is not None and bool(drop.any()):
            c["pooled"][drop] = 0
            c["tokens"][drop] = 0
            c["mask"][drop] = False
            c["mask"][drop, 0] = True
        return c

    # ---------------------------------------------------------------- optimisation
    def make_optimizer(self) -> torch.optim.Optimizer:
        groups = [{"name": "stage1", "params": list(self.stage1.parameters()), "lr": self.cfg.lr},
                  {"name": "stage2", "params": list(self.stage2.parameters()), "lr": self.cfg.lr}]
        return torch.optim.Adam(groups, lr=self.cfg.lr)

    def update_learning_rates(self, optimizer, step: int, progress: float | None = None) -> dict:
        c = self.cfg
        p = step / max(c.max_steps, 1) if progress is None else progress
        warm = min(1.0, (step + 1) / c.warmup_steps) if c.warmup_steps else 1.0
        lr = c.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))
        for g in optimizer.param_groups:
            g["lr"] = lr
        return {g["name"]: lr for g in optimizer.param_groups}

    def train_step(self, step: int, image: torch.Tensor, cameras, index: int, background) -> tuple:
        c = self.cfg
        d = self._load_data(cameras)
        self._version += 1
        self._cache.clear()
        M = d["grid"].shape[0]
        obj = int(d["view_object"][int(index)])
        others = torch.randint(0, M, (max(c.batch_objects - 1, 0),), generator=self.gen).tolist()
        objs = [obj] + others
        cap_idx = [d["captions"][o][int(torch.randint(0, len(d["captions"][o]), (1,), generator=self.gen))]
                   for o in objs]
        B = len(objs)
        gdf = d["gdf"][objs]
        target = d["grid"][objs]
        drop = torch.rand(B, generator=self.gen) < c.cond_dropout
        drop[0] = False
        cond = self._condition(d, cap_idx)
        stats = {}
        loss = torch.zeros(())
        if c.diffusion_weight > 0:
            ld = diffusion_loss(self.stage1, self.schedule, gdf, self._condition(d, cap_idx, drop), generator=self.gen)
            loss = loss + c.diffusion_weight * ld
            stats["diffusion_loss"] = float(ld.detach())
        x_in = gdf + c.gdf_noise * torch.randn(gdf.shape, generator=self.gen) if c.gdf_noise > 0 else gdf
        raw = self.stage2(attr.stage2_input(x_in), cond["pooled"], cond["tokens"], cond["mask"])
        pred = attr.decode(raw, self.cell, c.max_offset_cells, c.init_scale_cells)
        la, parts = attr.attribute_loss(pred, target, self.cell)
        loss = loss + c.attribute_weight * la
        stats["attribute_loss"] = float(la.detach())
        stats.update({f"attr_{k}": float(v.detach()) for k, v in parts.items()})
        if c.render_weight == 0 or step % c.render_every:   # attribute losses only this step
            with torch.no_grad():
                rgb = self._render_grid(pred[0].detach(), cameras, index, background)["rgb"]
            mse = ((rgb - image) ** 2).mean().clamp_min(1e-12)
            stats["psnr"] = float(-10 * torch.log10(mse))
            return loss, stats, rgb
        out = self._render_grid(pred[0], cameras, index, background)
        rgb = out["rgb"]
        l1 = (rgb - image).abs().mean()
        lr_ = (1 - c.ssim_weight) * l1 + (c.ssim_weight * dssim_loss(rgb, image) if c.ssim_weight > 0 else 0.0)
        loss = loss + c.render_weight * lr_
        mse = ((rgb.detach() - image) ** 2).mean().clamp_min(1e-12)
        stats.update({"render_loss": float(lr_.detach()), "psnr": float(-10 * torch.log10(mse))})
        return loss, stats, rgb.detach()

    # ---------------------------------------------------------------- generation
    def _render_grid(self, grid: torch.Tensor, cameras, index: int, background) -> dict:
        from ...render.gaussians import render_gaussians

        g = attr.grid_to_gaussians(grid, self.box, min_opacity=max(self.cfg.min_opacity, 1.0 / 255.0))
        if g["means"].shape[0] == 0:      # nothing visible: an empty image (no gradient to give)
            H, W = int(cameras.height[int(index)]), int(cameras.width[int(index)])
            bg = torch.zeros(3) if background is None else torch.as_tensor(background, dtype=torch.float32)
            z = torch.zeros(H, W)
            return {"rgb": bg.expand(H, W, 3).clone() + 0 * grid.sum(), "alpha": z, "depth": z, "depth_sum": z,
                    "cost": z}
        return render_gaussians(g["means"], g["quats"], g["log_scales"], torch.sigmoid(g["opacity_logits"]), g["sh"],
                                cameras, index, mode="opacity", sh_degree=0, background=background, path="splat")

    @torch.no_grad()
    def generate(self, caption: str, seed: int | None = None, steps: int | None = None,
                 guidance: float | None = None, callback=None) -> dict:
        """One object from ``caption``: ``grid (N, N, N, 14)`` in ``as_grid()`` order, ``gdf (N, N, N)``
        (world units), ``caption``, ``unknown_words`` (words no training caption had), ``seconds``
        (text + stage 1 + stage 2, wall clock)."""
        from .text import unknown_words, validate_caption

        c = self.cfg
        caption = validate_caption(caption)
        seed = c.gen_seed if seed is None else int(seed)
        steps = c.ddim_steps if steps is None else int(steps)
        guidance = c.guidance if guidance is None else float(guidance)
        key = (caption, seed, steps, guidance, self._version)
        if key in self._cache:
            return self._cache[key]
        self.stage1.eval()
        self.stage2.eval()
        t0 = time.perf_counter()
        cond = self.encode([caption])
        n = self.grid_size
        g = torch.Generator().manual_seed(seed)
        unc = self.null_condition(1, cond["pooled"].shape[1]) if guidance != 1.0 else None
        x = ddim_sample(self.stage1, self.schedule, (1, 1, n, n, n), cond, steps=steps, guidance=guidance,
                        uncond=unc, generator=g, callback=callback)
        raw = self.stage2(attr.stage2_input(x), cond["pooled"], cond["tokens"], cond["mask"])
        grid = attr.decode(raw, self.cell, c.max_offset_cells, c.init_scale_cells)[0]
        res = {"caption": caption, "grid": grid, "gdf": denormalize_gdf(x[0, 0], self.side, c.gdf_clamp),
               "unknown_words": unknown_words(caption, self.vocabulary), "seed": seed, "steps": steps,
               "seconds": time.perf_counter() - t0}
        self.stage1.train()
        self.stage2.train()
        if len(self._cache) > 16:
            self._cache.clear()
        self._cache[key] = res
        self._last_gen = res
        return res

    def gaussians(self, generation: dict) -> dict:
        """A generation's Gaussians above ``min_opacity`` (means, quats, log_scales, opacity_logits, sh)."""
        return attr.grid_to_gaussians(generation["grid"], self.box, min_opacity=self.cfg.min_opacity)

    def write_ply(self, generation: dict, path) -> Path:
        """A generation as a standard 3DGS ``.ply`` (written atomically)."""
        from ...io.ply import write_gaussian_ply

        g = self.gaussians(generation)
        return write_gaussian_ply(path, g["means"], g["log_scales"], g["quats"], g["opacity_logits"], g["sh"])

    def default_caption(self) -> str:
        if self.cfg.caption:
            return self.cfg.caption
        held = self.meta.get("heldout_captions") or []
        if held:
            return held[0]
        tc = self.meta.get("train_captions") or []
        return tc[0] if tc else "a red sphere"

    def _caption_for(self, cameras, index: int) -> str:
        if self.cfg.caption:
            return self.cfg.caption
        info = getattr(cameras, "gvgen", None)
        if info is not None and 0 <= int(index) < len(info["view_object"]):
            o = info["objects"][int(info["view_object"][int(index)])]
            return o.get("caption") or _captions(o)[0]
        return self.default_caption()

    # ---------------------------------------------------------------- inference contract
    @torch.no_grad()
    def render(self, cameras, index: int, background=None) -> dict:
        gen = self.generate(self._caption_for(cameras, index))
        return self._render_grid(gen["grid"], cameras, index, background)

    @property
    def num_primitives(self) -> int:
        return self.grid_size ** 3

    def progress_label(self) -> str:
        n = self.grid_size
        return f"gvgen {n}^3"

    def bounds(self) -> torch.Tensor:
        return self.box.clone()

    def points(self) -> torch.Tensor:
        gen = self._last_gen or self.generate(self.default_caption())
        return self.gaussians(gen)["means"].detach()

    def export(self, format: str, out) -> list:
        out = Path(out)
        if format == "generator":
            from ...io.checkpoint import save_checkpoint

            if out.suffix.lower() != ".pt":
                out = out / "generator.pt"
            st = self.state_dict()
            st.pop("gen", None)
            for k in ("stage1", "stage2"):
                st[k] = {n: (v.half() if v.is_floating_point() else v) for n, v in st[k].items()}
            st["meta"] = {**st["meta"], "dataset": Path(str(st["meta"].get("dataset", ""))).name,
                          "config": {k: v for k, v in self.cfg.to_dict().items()
                                     if k in ("gdf_clamp", "max_offset_cells", "init_scale_cells", "ddim_steps",
                                              "guidance", "min_opacity")}}
            out.parent.mkdir(parents=True, exist_ok=True)
            return [save_checkpoint(out, {"model": st}, method=self.name, step=int(self.step or 0))]
        gen = self.generate(self.default_caption())
        if format == "ply":
            if out.suffix.lower() != ".ply":
                out = out / "generation.ply"
            return [self.write_ply(gen, out)]
        if format == "gdf":
            import numpy as np

            if out.suffix.lower() != ".npy":
                out = out / "gdf.npy"
            out.parent.mkdir(parents=True, exist_ok=True)
            np.save(out, gen["gdf"].numpy())
            return [out]
        return super().export(format, out)

    def default_export_path(self, format: str, run_dir) -> Path:
        return Path(run_dir) / "export" / {"ply": "generation.ply", "gdf": "gdf.npy"}.get(format, "generator.pt")

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {"meta": dict(self.meta), "hparams1": dict(self.stage1.hparams), "hparams2": dict(self.stage2.hparams),
                "stage1": {k: v.detach().clone() for k, v in self.stage1.state_dict().items()},
                "stage2": {k: v.detach().clone() for k, v in self.stage2.state_dict().items()},
                "gen": self.gen.get_state()}

    @classmethod
    def from_state_dict(cls, cfg: GVGenConfig, st: dict) -> "GVGenMethod":
        meta = st.get("meta") if isinstance(st, dict) else None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or "stage1" not in st:
            raise ConfigError("not a gvgen generator checkpoint (no GVGEN networks in it)")
        n = int(meta["N"])
        if cfg.grid_size and cfg.grid_size != n:
            raise ConfigError(f"this generator makes {n}^3 GaussianVolumes but grid_size is {cfg.grid_size}: a "
                              f"generator's N is fixed by its training set; use --grid-size {n} (or 0), or train "
                              f"one on a {cfg.grid_size}^3 set")
        cfg.grid_size = n
        try:
            s1 = UNet3D(**st["hparams1"])
            s2 = UNet3D(**st["hparams2"])
            s1.load_state_dict(_float(st["stage1"]))
            s2.load_state_dict(_float(st["stage2"]))
        except (TypeError, KeyError, RuntimeError) as exc:
            raise ConfigError(f"corrupt gvgen checkpoint: its networks do not load ({str(exc)[:200]})") from None
        m = cls(cfg, dict(meta), s1, s2)
        if st.get("gen") is not None:
            m.gen.set_state(st["gen"])
        return m


def _captions(o: dict) -> list[str]:
    caps = [c for c in (o.get("captions") or []) if isinstance(c, str) and c.strip()]
    if not caps and o.get("caption"):
        caps = [o["caption"]]
    if not caps:
        raise DataError(o.get("id", "?"), "object has no caption in dataset.json")
    return caps


def _count(net) -> int:
    return sum(p.numel() for p in net.parameters())


def _float(sd: dict) -> dict:
    """State dict tensors as float32 (the shipped weights are stored in float16)."""
    return {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in sd.items()}
