"""The point field (GPF, ICLR 2024) as a trainable method: see :mod:`.render` for the rendering and
:mod:`.scene` for the points, images and caches of a scene.

Training (``batch_mode = "image"``): each step takes one training image, draws ``rays_per_batch``
of its pixels, encodes its ``source_views`` nearest *other* training views and renders the rays;
loss ``MSE(rgb) + mask_weight * BCE(opacity, alpha or mask) + sparsity_weight * mean(log c + log(1
- c))`` over the confidences ``c`` of the points the step used (Point-NeRF's sparsity term). With
``--scenes A,B`` the steps go round the scenes (the step's first scene is the trainer's image, the
others draw their own), one encoder and kernel for all.

Growing and pruning (Point-NeRF, every ``grow_every`` steps in ``[grow_from, grow_until]``):
training rays whose most opaque interval has opacity > ``grow_opacity`` while the nearest point to
it is farther than ``grow_dist`` spacings add a point there (one per voxel of one spacing, at most
``grow_max``); a new point's feature residual is the mean of its neighbours' and its confidence 0.4
x theirs. Points with confidence < ``prune_conf`` are removed. The progress bar shows the count and
the totals grown / pruned.

Moving points (``lr_pos`` > 0, not in GPF): each point's learned displacement (``point_off``, in
spacings) gets its gradient through the kernel's offsets and distances and the SDF prior; every
``pos_every`` steps, and before a render, it is folded into the points and their caches are rebuilt.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as Fn
from torch import nn

from ...errors import CheckpointError, ConfigError
from ...train.metrics import composite_on_background
from ..base import Method
from .config import PointFieldConfig
from .model import Aggregator, Encoder
from .render import encode_views, point_features, ray_center_depth, render_rays
from .scene import PointFieldError, PointScene, build_scene, fill_depth, sh_dim


class PointFieldNets(nn.Module):
    """Everything shared across scenes: the encoder, the aggregation kernel and log s."""

    def __init__(self, cfg: PointFieldConfig):
        super().__init__()
        torch.manual_seed(cfg.seed)
        self.encoder = Encoder()
        self.agg = Aggregator(cfg.feature_dim, cfg.hidden)
        self.log_s = nn.Parameter(torch.tensor(math.log(cfg.init_s)))


class PointFieldMethod(Method):
    """GPF's neural point field (module docstring). ``scenes`` holds one :class:`PointScene` per
    trained dataset (the first is the one ``render`` shows); ``nets`` the shared networks."""

    name = "pointfield"
    config_cls = PointFieldConfig
    batch_mode = "image"
    masked_eval = True
    export_formats = {"ply": "the points with their confidence, colour and features (image features blended "
                             "over all source views + learned residual) and explicit colour SH: x y z red green "
                             "blue confidence f_0.. sh_0.."}

    def __init__(self, cfg: PointFieldConfig, nets: PointFieldNets, scenes: list[PointScene]):
        super().__init__(cfg)
        if not scenes:
            raise PointFieldError("a point field needs at least one scene")
        self.nets = nets
        self.scenes = nn.ModuleList(scenes)
        self.gen = torch.Generator().manual_seed(cfg.seed + 7)
        self._grow_buf: list[torch.Tensor] = []
        self._last_struct = {}

    # ---------------------------------------------------------------- creation
    @classmethod
    def create(cls, cfg: PointFieldConfig, dataset) -> "PointFieldMethod":
        notes: list[str] = []
        scenes = [build_scene(dataset, cfg, notes)]
        for extra in cfg.scene_list:
            from ...data import load_dataset

            p = Path(extra)
            if not p.exists():
                raise ConfigError(f"option scenes: {extra}: dataset folder not found")
            ds = load_dataset(p)
            scenes.append(build_scene(ds, cfg, notes))
        nets = PointFieldNets(cfg)
        if cfg.init_from:
            cls._load_nets(nets, cfg.init_from)
            notes.append(f"encoder and networks from {cfg.init_from} (fine-tuning)")
        m = cls(cfg, nets, scenes)
        n = sum(p.numel() for p in nets.parameters())
        notes.append(f"networks: {n} parameters (encoder + aggregation kernel); K = {cfg.k_neighbors}, "
                     f"{cfg.source_views} source views, top {cfg.top_views}")
        m.notes = notes
        return m

    @staticmethod
    def _load_nets(nets: PointFieldNets, path) -> None:
        from ...io.checkpoint import latest_valid_checkpoint, load_checkpoint

        p = Path(path)
        if p.is_dir():
            ck = latest_valid_checkpoint(p / "checkpoints", method="pointfield") if (p / "checkpoints").is_dir() else None
            if ck is None:
                raise ConfigError(f"option init_from: {p} has no pointfield checkpoint in checkpoints/")
            p = ck
        data = load_checkpoint(p, method="pointfield")
        st = data["model"]["nets"]
        try:
            nets.load_state_dict(st)
        except RuntimeError:
            raise CheckpointError(f"{p}: its networks do not match this config (feature_dim / hidden differ)") from None

    # ---------------------------------------------------------------- optimisation
    def make_optimizer(self) -> torch.optim.Optimizer:
        c = self.cfg
        groups = [{"name": "encoder", "params": list(self.nets.encoder.parameters()), "lr": c.lr},
                  {"name": "kernel", "params": list(self.nets.agg.parameters()), "lr": c.lr},
                  {"name": "log_s", "params": [self.nets.log_s], "lr": c.lr_s}]
        for i, s in enumerate(self.scenes):
            groups.append({"name": f"point_feat_{i}", "params": [s.point_feat], "lr": c.lr_points})
            groups.append({"name": f"point_conf_{i}", "params": [s.point_conf], "lr": c.lr_points})
            if s.point_sh.shape[1]:
                groups.append({"name": f"point_sh_{i}", "params": [s.point_sh], "lr": c.lr_color})
            if c.lr_pos > 0:
                groups.append({"name": f"point_off_{i}", "params": [s.point_off], "lr": c.lr_pos})
        for g in groups:
            g["base_lr"] = g["lr"]
        return torch.optim.Adam(groups, lr=c.lr)

    def update_learning_rates(self, optimizer, step: int, progress: float = 0.0) -> dict:
        k = float(self.cfg.lr_final_frac) ** min(max(float(progress), 0.0), 1.0)
        for g in optimizer.param_groups:
            g["lr"] = g.get("base_lr", g["lr"]) * k
        return {g["name"]: g["lr"] for g in optimizer.param_groups}

    def _rays_of_pixels(self, cams, index, pix, W):
        uv = torch.stack([(pix % W).float() + 0.5, torch.div(pix, W, rounding_mode="floor").float() + 0.5], -1)
        return cams.pixel_rays(torch.full((pix.shape[0],), int(index), dtype=torch.long), uv)

    def train_step(self, step: int, image: torch.Tensor, cameras, index: int, background) -> tuple:
        c = self.cfg
        si = step % len(self.scenes)
        scene = self.scenes[si]
        if si == 0:
            img, idx = image, int(index)
            cov = scene.coverage_of(idx)
        else:
            idx = int(torch.randint(scene.num_views, (1,), generator=self.gen))
            img, cov = scene.image(idx), scene.coverage_of(idx)
        bg = scene.background if si else torch.as_tensor(background, dtype=torch.float32)
        H, W = int(img.shape[0]), int(img.shape[1])
        n = min(int(c.rays_per_batch), H * W)
        pix = torch.randperm(H * W, generator=self.gen)[:n]
        cams = scene.cameras
        o, d = self._rays_of_pixels(cams, idx, pix, W)
        d1, d2 = scene.train_layers(c)
        tc = ray_center_depth(d1[idx], pix, d, cams.c2w[idx])
        tc2 = None if d2 is None else ray_center_depth(d2[idx], pix, d, cams.c2w[idx])
        views = scene.nearest_views(cams, idx, c.source_views, exclude=idx)
        ctx = encode_views(self.nets.encoder, scene, c, views, target=cams.c2w[idx, :3, 3])
        out = render_rays(self.nets.agg, scene, c, ctx, o, d, tc, self.nets.log_s, bg, t_center2=tc2)
        target = img.reshape(-1, 3)[pix]
        m = None if cov is None else cov.reshape(-1)[pix]
        if m is not None and scene.coverage_is_mask:   # DTU: the field models the masked object only
            target = composite_on_background(target, m, bg)
        mse = ((out["rgb"] - target) ** 2).mean()
        loss = mse
        stats = {"psnr": float(-10 * torch.log10(mse.detach().clamp_min(1e-12))),
                 "samples_per_ray": float(out["cost"].mean()), "s": float(torch.exp(self.nets.log_s.detach()))}
        if m is not None and c.mask_weight > 0:
            op = out["opacity"].clamp(1e-4, 1 - 1e-4)
            bce = Fn.binary_cross_entropy(op, m.clamp(0, 1))
            loss = loss + c.mask_weight * bce
            stats["mask_bce"] = float(bce.detach())
        if out["pidx"].numel() and c.sparsity_weight > 0:
            conf = torch.sigmoid(scene.point_conf[out["pidx"]]).clamp(1e-4, 1 - 1e-4)
            loss = loss + c.sparsity_weight * (torch.log(conf) + torch.log(1 - conf)).mean()
        self._collect_growth(scene, si, o, d, out)
        return loss, stats, None

    # ---------------------------------------------------------------- growing and pruning
    def _in_grow_window(self, step: int) -> bool:
        c = self.cfg
        return c.grow_every > 0 and c.grow_from <= step + 1 <= c.grow_until

    @torch.no_grad()
    def _collect_growth(self, scene, si, o, d, out) -> None:
        c = self.cfg
        if c.grow_every <= 0:
            return
        a = out["alpha_s"].detach()
        if a.numel() == 0:
            return
        amax, j = a.max(1)
        t = out["t"]
        tm = (t.gather(1, j[:, None]) + t.gather(1, j[:, None] + 1))[:, 0] / 2
        near = torch.minimum(out["nearest"].gather(1, j[:, None]), out["nearest"].gather(1, j[:, None] + 1))[:, 0]
        sel = (amax > c.grow_opacity) & (near > c.grow_dist * scene.spacing) & torch.isfinite(near)
        if bool(sel.any()):
            p = o[sel] + tm[sel, None] * d[sel]
            self._grow_buf.append(torch.cat([p, torch.full((p.shape[0], 1), float(si))], 1))
            if sum(b.shape[0] for b in self._grow_buf) > 4 * c.grow_max:
                self._grow_buf = [torch.cat(self._grow_buf)[-2 * c.grow_max:]]

    @torch.no_grad()
    def post_step(self, optimizer, step: int) -> dict | None:
        c = self.cfg
        s = step + 1
        moved = None
        if c.lr_pos > 0 and s % int(c.pos_every) == 0:
            moved = max(sc.fold_offsets() for sc in self.scenes)
        if not (self._in_grow_window(step) and s % c.grow_every == 0):
            return None if moved is None else {"moved": moved}
        buf = torch.cat(self._grow_buf) if self._grow_buf else torch.zeros(0, 4)
        self._grow_buf = []
        res = {"grown": 0, "pruned": 0}
        for si, scene in enumerate(self.scenes):
            cand = buf[buf[:, 3] == si, :3]
            conf = torch.sigmoid(scene.point_conf.detach())
            keep = conf >= c.prune_conf
            if int(keep.sum()) < 16:     # never prune a scene away
                keep = torch.ones_like(keep)
            new_pts = torch.zeros(0, 3)
            if cand.shape[0] and scene.num_points < c.max_total_points:
                vox = torch.floor(cand / scene.spacing).long()
                _, first = np.unique(vox.numpy(), axis=0, return_index=True)
                cand = cand[torch.as_tensor(np.sort(first))]
                room = max(0, min(int(c.grow_max), int(c.max_total_points) - scene.num_points))
                new_pts = cand[:room]
            if bool(keep.all()) and new_pts.shape[0] == 0:
                continue
            self._edit_points(optimizer, si, scene, keep, new_pts)
            res["grown"] += int(new_pts.shape[0])
            res["pruned"] += int((~keep).sum())
        if moved is not None:
            res["moved"] = moved
        return res if (res["grown"] or res["pruned"] or moved is not None) else None

    def _edit_points(self, optimizer, si, scene, keep, new_pts) -> None:
        """Drop points ``~keep``, append ``new_pts``; Adam state of the per-point parameters follows."""
        from shaders.knn import knn_query

        c = self.cfg
        nf, ncf = torch.zeros(0, scene.point_feat.shape[1]), torch.zeros(0)
        nsh = torch.zeros(0, scene.point_sh.shape[1])
        ncol = torch.zeros(0, 3)
        if new_pts.shape[0]:
            idx, _ = knn_query(scene.grid(c), new_pts, int(c.k_neighbors), scene.radius(c))
            idx = idx.long()
            v = (idx >= 0).float()
            cnt = v.sum(1, keepdim=True).clamp_min(1)
            safe = idx.clamp_min(0)
            nf = (scene.point_feat.detach()[safe] * v[..., None]).sum(1) / cnt
            nsh = (scene.point_sh.detach()[safe] * v[..., None]).sum(1) / cnt
            conf = (torch.sigmoid(scene.point_conf.detach()[safe]) * v).sum(1) / cnt[:, 0]
            ncf = torch.logit((0.4 * conf).clamp(1e-3, 1 - 1e-3))
            ncol = (scene.colors[safe] * v[..., None]).sum(1) / cnt
        noff = torch.zeros(new_pts.shape[0], 3)
        names = {f"point_feat_{si}": nf, f"point_conf_{si}": ncf, f"point_sh_{si}": nsh, f"point_off_{si}": noff}
        attr = {f"point_feat_{si}": "point_feat", f"point_conf_{si}": "point_conf", f"point_sh_{si}": "point_sh",
                f"point_off_{si}": "point_off"}
        edited = set()
        for group in optimizer.param_groups:
            name = group.get("name")
            if name not in names:
                continue
            old = group["params"][0]
            add = names[name]

            def edit(t, fill):
                return torch.cat([t[keep], fill.to(t)], 0).contiguous()

            new = nn.Parameter(edit(old.detach(), add))
            state = optimizer.state.pop(old, None)
            if state:
                for key in ("exp_avg", "exp_avg_sq"):
                    if key in state:
                        state[key] = edit(state[key], torch.zeros_like(add))
                optimizer.state[new] = state
            group["params"][0] = new
            setattr(scene, attr[name], new)
            edited.add(attr[name])
        for a, add in (("point_feat", nf), ("point_conf", ncf), ("point_sh", nsh), ("point_off", noff)):
            if a not in edited:      # not optimised (e.g. point_sh with no columns): edit it all the same
                old = getattr(scene, a)
                setattr(scene, a, nn.Parameter(torch.cat([old.detach()[keep], add.to(old)], 0).contiguous()))
        scene.points = torch.cat([scene.points[keep], new_pts.to(scene.points)], 0).contiguous()
        scene.colors = torch.cat([scene.colors[keep], ncol.to(scene.colors)], 0).contiguous()
        scene.grown_total += int(new_pts.shape[0])
        scene.pruned_total += int((~keep).sum())
        scene.invalidate()

    # ---------------------------------------------------------------- inference
    @torch.no_grad()
    def render(self, cameras, index: int, background=None, scene: int = 0) -> dict:
        c = self.cfg
        sc = self.scenes[scene]
        if sc.point_off.numel() and bool(sc.point_off.detach().abs().amax() > 0):
            sc.fold_offsets()        # render where the points are now (as a checkpoint of them would)
        cams = cameras.to("cpu")
        cam = cams[index]
        H, W = int(cam.height[0]), int(cam.width[0])
        o, d = cams.generate_rays(index)
        o, d = o.reshape(-1, 3), d.reshape(-1, 3)
        d1, d2 = sc.depth_layers(cam, c)
        tc = ray_center_depth(d1[0], torch.arange(H * W), d, cam.c2w[0])
        tc2 = None if d2 is None else ray_center_depth(d2[0], torch.arange(H * W), d, cam.c2w[0])
        views = sc.nearest_views(cams, index, c.source_views)
        ctx = encode_views(self.nets.encoder, sc, c, views, target=cam.c2w[0, :3, 3])
        bg = None if background is None else torch.as_tensor(background, dtype=torch.float32)
        keys = ("rgb", "opacity", "depth_sum", "cost")
        acc = {k: [] for k in keys}
        for a in range(0, o.shape[0], int(c.render_chunk)):
            sl = slice(a, a + int(c.render_chunk))
            out = render_rays(self.nets.agg, sc, c, ctx, o[sl], d[sl], tc[sl], self.nets.log_s, bg,
                              t_center2=None if tc2 is None else tc2[sl])
            for k in keys:
                acc[k].append(out[k])
        cat = {k: torch.cat(v, 0) for k, v in acc.items()}
        alpha = cat["opacity"].reshape(H, W)
        dsum = cat["depth_sum"].reshape(H, W)
        from ..base import finish_depth

        res = {"rgb": cat["rgb"].reshape(H, W, 3), "alpha": alpha, "cost": cat["cost"].reshape(H, W),
               "point_depth": torch.where(torch.isfinite(tc), tc, torch.zeros_like(tc)).reshape(H, W)}
        res.update(finish_depth(alpha, dsum))
        return res

    @property
    def num_primitives(self) -> int:
        return sum(s.num_points for s in self.scenes)

    def progress_label(self) -> str:
        g = sum(s.grown_total for s in self.scenes)
        p = sum(s.pruned_total for s in self.scenes)
        return f"{self.num_primitives} points (+{g} grown, -{p} pruned)"

    def bounds(self) -> torch.Tensor:
        p = self.scenes[0].points
        return torch.stack([p.amin(0), p.amax(0)]).detach().clone()

    def points(self) -> torch.Tensor:
        return self.scenes[0].points.detach().clone()

    # ---------------------------------------------------------------- export
    @torch.no_grad()
    def point_feature_table(self, scene: int = 0, chunk: int = 20000) -> torch.Tensor:
        """``(N, 2F)`` features of every point with all source views as candidates (top ``top_views``)."""
        sc = self.scenes[scene]
        views = torch.arange(sc.num_views)
        out = []
        ctx = encode_views(self.nets.encoder, sc, self.cfg, views)
        for a in range(0, sc.num_points, chunk):
            pidx = torch.arange(a, min(a + chunk, sc.num_points))
            out.append(point_features(self.nets.agg, sc, self.cfg, ctx, pidx))
        return torch.cat(out, 0) if out else torch.zeros(0, 2 * self.cfg.feature_dim)

    def export(self, format: str, out) -> list:
        if format != "ply":
            return super().export(format, out)
        from ...io.ply import write_ply

        out = Path(out)
        if out.suffix.lower() != ".ply":
            out = out / "points.ply" if out.suffix == "" else out.with_suffix(".ply")
        sc = self.scenes[0]
        f = self.point_feature_table(0).numpy().astype(np.float32)
        p = sc.points.numpy().astype(np.float32)
        c8 = np.clip(np.round(sc.colors.numpy() * 255), 0, 255).astype(np.uint8)
        vert = {"x": p[:, 0], "y": p[:, 1], "z": p[:, 2], "red": c8[:, 0], "green": c8[:, 1], "blue": c8[:, 2],
                "confidence": torch.sigmoid(sc.point_conf.detach()).numpy().astype(np.float32)}
        for i in range(f.shape[1]):
            vert[f"f_{i}"] = f[:, i]
        sh = sc.point_sh.detach().numpy().astype(np.float32)
        for i in range(sh.shape[1]):             # channel-major: red's B coefficients, then green's, blue's
            vert[f"sh_{i}"] = sh[:, i]
        out.parent.mkdir(parents=True, exist_ok=True)
        return [write_ply(out, vert, comments=[f"kernelight pointfield scene {sc.name}",
                                               f"f_0..f_{self.cfg.feature_dim - 1} geometry, "
                                               f"f_{self.cfg.feature_dim}.. colour features",
                                               f"sh_0..: explicit colour logit SH (degree {self.cfg.point_sh_degree}; "
                                               "red's coefficients, then green's, then blue's)"])]

    def default_export_path(self, format: str, run_dir: Path) -> Path:
        return Path(run_dir) / "export" / "points.ply"

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {"nets": {k: v.detach().clone() for k, v in self.nets.state_dict().items()},
                "scenes": [s.state() for s in self.scenes], "gen": self.gen.get_state(),
                "view_angle_power": float(self.cfg.view_angle_power), "depth_fill": int(self.cfg.depth_fill),
                "depth_layers": int(self.cfg.depth_layers)}

    @classmethod
    def from_state_dict(cls, cfg: PointFieldConfig, st: dict) -> "PointFieldMethod":
        if not isinstance(st, dict) or "nets" not in st or "scenes" not in st:
            raise CheckpointError("not a pointfield model state (no 'nets' / 'scenes')")
        nets = PointFieldNets(cfg)
        try:
            nets.load_state_dict(st["nets"])
        except RuntimeError:
            raise CheckpointError("checkpoint networks do not match the config (feature_dim / hidden differ from "
                                  "training)") from None
        scenes = [PointScene.from_state(s, cfg.feature_dim, sh_dim(cfg)) for s in st["scenes"]]
        notes = []
        if ("view_angle_power" not in st and cfg.view_angle_power != 0
                and "view_angle_power" not in getattr(cfg, "given_options", ())):
            # trained before the option existed, with GPF's score (visibility alone): render it that way
            cfg.view_angle_power = 0.0
            notes.append("view_angle_power 0 (GPF's view score): the checkpoint predates the option")
        if "depth_fill" not in st and cfg.depth_fill != 0 and "depth_fill" not in getattr(cfg, "given_options", ()):
            cfg.depth_fill = 0       # trained with gaps left empty: render it that way
            notes.append("depth_fill 0 (gaps of the splatted depth are background): the checkpoint predates the option")
        if ("depth_layers" not in st and cfg.depth_layers != 1
                and "depth_layers" not in getattr(cfg, "given_options", ())):
            cfg.depth_layers = 1     # trained around the first layer only: render it that way
            notes.append("depth_layers 1 (samples around the nearest point only): the checkpoint predates the option")
        if cfg.scene_data:
            from ...data import load_dataset

            p = Path(cfg.scene_data)
            if not p.exists():
                raise ConfigError(f"option scene_data: {p}: dataset folder not found")
            scenes = [build_scene(load_dataset(p), cfg, notes)]
        m = cls(cfg, nets, scenes)
        m.notes = notes
        if st.get("gen") is not None:
            m.gen.set_state(st["gen"].cpu())
        return m
