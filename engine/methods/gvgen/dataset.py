"""The GVGEN training set: objects rendered with the engine and fitted as GaussianVolumes.

``kernelight gvgen dataset --out DIR`` (:mod:`engine.commands.gvgen`) calls :func:`build`. The folder
layout and ``volume.pt`` contents are the ones the generator reads (``dataset.json`` +
``objects/<id>/``, see :func:`build`). Each object is

1. a mesh from :mod:`.primitives` (a trimesh primitive or a licensed mesh), normalised into the
   dataset's box, in one colour;
2. rendered from ``views_train`` + ``views_test`` cameras on a sphere (:mod:`.data_render`: the BVH
   closest hit, Lambert + ambient shading, RGBA) and written in the Blender format, so
   ``kernelight train gvolume --data DIR/objects/<id>`` reads it;
3. fitted as a GaussianVolume (the ``gvolume`` method: Candidate Pool Strategy, offset loss) whose
   grid spans exactly the dataset's box, so every object's volume lives in the same coordinates;
4. saved as ``volume.pt`` (written atomically; its presence marks the object complete).

Resumable: objects with a readable ``volume.pt`` are skipped, any other object folder is rebuilt
from scratch; ``dataset.json`` is rewritten atomically after every object.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ...errors import ConfigError, DataError
from . import primitives as P

FORMAT = "kernelight-gvgen"
VERSION = 1
BOX = [[-0.5, -0.5, -0.5], [0.5, 0.5, 0.5]]


@dataclass
class BuildOptions:
    """What a dataset build makes. The fields that define the data (``N`` .. ``seed``) are stored
    in ``dataset.json`` and must match when a build resumes; ``shapes``/``colours``/``sizes`` may grow."""

    N: int = 16
    image_size: int = 64
    views_train: int = 24
    views_test: int = 8
    supersample: int = 2
    steps: int = 300
    sh_degree: int = 0
    seed: int = 0
    shapes: list = field(default_factory=lambda: ["box", "sphere", "cylinder", "cone", "torus", "capsule", "pyramid"])
    colours: list = field(default_factory=lambda: ["red", "orange", "yellow", "green", "blue", "purple"])
    sizes: list = field(default_factory=lambda: ["small", "large"])
    heldout: list = field(default_factory=list)        # [(colour, shape), ...]
    meshes_dir: str | None = None

    def fit_options(self) -> dict:
        """The gvolume options of one fit: the grid spans the dataset's box (``volume_box=scene``),
        slots start inside the visual hull, densification scaled to the step budget."""
        s = int(self.steps)
        every = max(30, s // 10)
        # short fits: start from larger, half-opaque Gaussians (the defaults suit 3,000+ steps; at 300
        # steps they left a speckled torus at 19.6 dB, these 26.7 dB on the same views). Densifying
        # every 20 steps instead of 30 (300 steps, 16 views) measured 21.7 vs 27.4 dB on a torus.
        return {"grid_size": int(self.N), "volume_box": "scene", "init": "visual_hull", "max_steps": s,
                "sh_degree": int(self.sh_degree), "seed": int(self.seed),
                "init_opacity": 0.5, "init_scale_cells": 1.2,
                "densify_from": 2 * every, "densify_until": max(2 * every, int(0.8 * s)),
                "densify_every": every, "sh_unlock_every": max(1, s // 4), "eval_every": 0}

    def defining(self) -> dict:
        return {"N": self.N, "image_size": self.image_size, "views": {"train": self.views_train, "test": self.views_test},
                "supersample": self.supersample, "steps": self.steps, "sh_degree": self.sh_degree, "seed": self.seed}

    def validate(self) -> None:
        if not 2 <= self.N <= 128:
            raise ConfigError(f"--N must be in [2, 128], got {self.N}")
        if not 8 <= self.image_size <= 1024:
            raise ConfigError(f"--image-size must be in [8, 1024], got {self.image_size}")
        if self.views_train < 1 or self.views_test < 1:
            raise ConfigError("--views and --test-views must be >= 1")
        if self.steps < 1:
            raise ConfigError(f"--steps must be >= 1, got {self.steps}")
        if not 1 <= self.supersample <= 8:
            raise ConfigError(f"--supersample must be in [1, 8], got {self.supersample}")
        for what, names, known in (("shape", self.shapes, P.available_shapes()), ("colour", self.colours, P.COLOURS),
                                   ("size", self.sizes, P.SIZES)):
            if not names:
                raise ConfigError(f"no {what} given")
            bad = [n for n in names if n not in known]
            if bad:
                raise ConfigError(f"unknown {what}(s) {', '.join(bad)}; available: {', '.join(known)}")
        for shape in self.shapes:   # a licensed mesh must be on disk before any worker starts
            if shape in P.MESHES:
                path = Path(self.meshes_dir or P.shared_meshes_dir()) / P.MESHES[shape].file
                if not path.is_file():
                    raise DataError(path, f"mesh of shape {shape!r} not found (--meshes-dir DIR, or KERNELIGHT_DATA)")

    def heldout_warnings(self) -> list[str]:
        """Held-out pairs whose colour or shape never appears in training (the generator could not
        know that word from any training object)."""
        held = {tuple(p) for p in self.heldout}
        train = [(c, s) for s in self.shapes for c in self.colours if (c, s) not in held]
        out = []
        for c, s in sorted(held):
            if s not in self.shapes or c not in self.colours:
                continue
            if not any(tc == c for tc, _ in train):
                out.append(f"held-out pair '{c} {s}': no training object is {c}")
            if not any(ts == s for _, ts in train):
                out.append(f"held-out pair '{c} {s}': no training object is a {s}")
        return out


def object_id(shape: str, colour: str, size: str) -> str:
    return f"{shape}-{colour}-{size}"


def plan(opts: BuildOptions) -> list[dict]:
    """The objects of a build, in a fixed order (shape, colour, size)."""
    held = {tuple(p) for p in opts.heldout}
    out = []
    for shape in opts.shapes:
        for colour in opts.colours:
            for size in opts.sizes:
                caps = P.captions(shape, colour, size)
                out.append({"id": object_id(shape, colour, size), "shape": shape, "colour": colour, "size": size,
                            "caption": caps[0], "captions": caps,
                            "split": "heldout" if (colour, shape) in held else "train", "status": "pending"})
    return out


# ---------------------------------------------------------------------------------------- volume.pt
def read_volume(path) -> dict:
    """A ``volume.pt`` (``torch.load(weights_only=True)``), checked: N, grid (N, N, N, C >= 14), gdf
    (N, N, N), box (2, 3). Raises :class:`DataError` naming the file."""
    path = Path(path)
    try:
        st = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(path, f"unreadable volume ({type(exc).__name__}: {exc})") from None
    if not isinstance(st, dict) or not {"N", "grid", "gdf", "box"} <= set(st):
        raise DataError(path, "not a GVGEN volume (needs N, grid, gdf, box)")
    n = int(st["N"])
    g, d = st["grid"], st["gdf"]
    if g.ndim != 4 or tuple(g.shape[:3]) != (n, n, n) or g.shape[3] < 14 or tuple(d.shape) != (n, n, n):
        raise DataError(path, f"grid {tuple(g.shape)} / gdf {tuple(d.shape)} do not match N = {n}")
    return st


def _volume_ok(path: Path, n: int) -> bool:
    if not path.is_file():
        return False
    try:
        return int(read_volume(path)["N"]) == n
    except DataError:
        return False


# ---------------------------------------------------------------------------------------- one object
def _gvolume():
    """The gvolume method class, through the registry (a method package does not import another)."""
    from .. import get_method

    return get_method("gvolume")


def fit_volume(folder: Path, opts: BuildOptions, box=BOX) -> tuple:
    """Fit a GaussianVolume to the Blender-format renders in ``folder`` with the gvolume method's own
    steps (one training image per step, the trainer's order of calls). Returns (method, stats)."""
    from ...data import blender

    GVolumeMethod = _gvolume()

    ds = blender.load(folder)
    ds.scene_box = torch.as_tensor(box, dtype=torch.float32)
    cfg = GVolumeMethod.config_cls.from_options(opts.fit_options(), "gvolume")
    torch.manual_seed(cfg.seed)
    m = GVolumeMethod.create(cfg, ds)
    optim = m.make_optimizer()
    split = ds.splits["train"]
    bg = ds.background
    n = len(split.cameras)
    gen = torch.Generator().manual_seed(cfg.seed)
    order: list[int] = []
    t0 = time.perf_counter()
    for step in range(cfg.max_steps):
        if not order:
            order = torch.randperm(n, generator=gen).tolist()
        i = order.pop()
        optim.zero_grad(set_to_none=True)
        loss, stats, _ = m.train_step(step, split.images[i], split.cameras, i, bg)
        loss.backward()
        if not math.isfinite(float(loss.detach())):
            raise RuntimeError(f"{folder}: the fit's loss became {float(loss)} at step {step}")
        m.after_backward()
        m.update_learning_rates(optim, step, progress=step / cfg.max_steps)
        optim.step()
        m.post_step(optim, step)
    fit_s = time.perf_counter() - t0
    test = ds.splits.get("test") or split
    psnrs = []
    with torch.no_grad():
        for i in range(len(test.cameras)):
            rgb = m.render(test.cameras, i, background=bg)["rgb"]
            mse = ((rgb - test.images[i]) ** 2).mean().clamp_min(1e-12)
            psnrs.append(float(-10 * torch.log10(mse)))
    return m, {"psnr": float(np.mean(psnrs)), "fit_seconds": fit_s, "test_views": len(psnrs),
               "active": m.vol.num_active}


OPAQUE = 0.05


@torch.no_grad()
def opaque_gdf(vol, threshold: float = OPAQUE) -> torch.Tensor:
    """(N, N, N) distance from each grid point to the nearest centre of a Gaussian with opacity >=
    ``threshold`` (inf when there is none). The plain GDF counts every active slot, and the Candidate
    Pool Strategy re-activates all free anchors (opacity 1e-4, on their anchor), so after a full fit
    it is ~0 away from the object; this one keeps the shape."""
    from scipy.spatial import cKDTree

    n = vol.grid_size
    keep = vol.active & (torch.sigmoid(vol.opacity) >= threshold)
    c = vol.means()[keep].detach().cpu().double().numpy()
    if len(c) == 0:
        return torch.full((n, n, n), float("inf"))
    d, _ = cKDTree(c).query(vol.anchors.cpu().double().numpy(), k=1)
    return torch.from_numpy(np.asarray(d, np.float32)).reshape(n, n, n)


def volume_from_grid(grid: torch.Tensor, box):
    """A :class:`~engine.methods.gvolume.model.GaussianVolume` holding an (N, N, N, C) grid in GVGEN's
    channel order (``volume.pt``'s ``grid`` or a generated one): free slots (opacity logit exactly
    -10) stay inactive. Renders like the volume the grid came from (``render_camera``)."""
    GaussianVolume = _gvolume().volume_cls

    n, C = int(grid.shape[0]), int(grid.shape[-1])
    K = 1 + (C - 14) // 3
    deg = int(round(math.sqrt(K))) - 1
    if C < 14 or (deg + 1) ** 2 != K or 14 + 3 * (K - 1) != C:
        raise ValueError(f"a GaussianVolume grid has 14 + 3 ((d + 1)^2 - 1) channels, got {C}")
    g = grid.detach().float().reshape(-1, C).cpu()
    params = {"offset": g[:, 0:3], "sh_dc": g[:, 3:6][:, None], "sh_rest": g[:, 14:].reshape(len(g), K - 1, 3),
              "log_scales": g[:, 6:9], "quats": g[:, 9:13], "opacity": g[:, 13]}
    vol = GaussianVolume(torch.as_tensor(box, dtype=torch.float32), n, deg, params=params, active=g[:, 13] != -10.0)
    vol.active_sh_degree = deg
    return vol


@torch.no_grad()
def gdf_from_grid(grid: torch.Tensor, box, min_opacity: float = OPAQUE) -> torch.Tensor:
    """The distance field of an (N, N, N, C) grid in GVGEN's channel order (a fitted volume's
    ``as_grid()`` or a generated one): per grid point, the distance to the nearest centre
    ``anchor + offset`` of a Gaussian with opacity >= ``min_opacity`` (with 0: every slot but the
    free ones, whose opacity logit is exactly -10, i.e. :meth:`GaussianVolume.gdf`)."""
    from scipy.spatial import cKDTree

    grid_points = _gvolume().grid_points

    n = int(grid.shape[0])
    flat = grid.reshape(-1, grid.shape[-1]).detach().cpu().double()
    anchors = grid_points(torch.as_tensor(box, dtype=torch.float32).reshape(2, 3), n).double()
    logit = flat[:, 13]
    keep = torch.sigmoid(logit) >= min_opacity
    if min_opacity <= 0:
        keep &= logit != -10.0
    c = (anchors + flat[:, :3])[keep].numpy()
    if len(c) == 0:
        return torch.full((n, n, n), float("inf"))
    d, _ = cKDTree(c).query(anchors.numpy(), k=1)
    return torch.from_numpy(np.asarray(d, np.float32)).reshape(n, n, n)


def build_object(out: Path, obj: dict, opts: BuildOptions) -> dict:
    """Render, fit and save one object (``out/objects/<id>``), from scratch. Returns its record
    (psnr, fit_seconds, render_seconds, cpu_seconds)."""
    from ...io.atomic import atomic_path
    from . import data_render as R

    cpu0, t0 = time.process_time(), time.perf_counter()
    folder = out / "objects" / obj["id"]
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    box = np.asarray(BOX, float)
    mesh = P.normalised_mesh(obj["shape"], obj["size"], box, opts.meshes_dir)
    colour = P.COLOURS[obj["colour"]]
    for split, nv, off in (("train", opts.views_train, 0.0), ("test", opts.views_test, 0.5)):
        c2w, fov = R.camera_rig(box, nv, off)
        imgs = R.render_rgba(mesh, colour, c2w, fov, opts.image_size, opts.supersample)
        R.write_blender_split(folder, split, imgs, c2w, fov)
    render_s = time.perf_counter() - t0
    m, stats = fit_volume(folder, opts, BOX)
    vol = m.vol
    st = {"N": int(opts.N), "grid": vol.as_grid().float().cpu().contiguous(),
          "gdf": vol.gdf().float().cpu().contiguous(), "gdf_opaque": opaque_gdf(vol),
          "box": torch.tensor(BOX, dtype=torch.float32),
          "psnr": stats["psnr"], "fit_seconds": stats["fit_seconds"], "id": obj["id"],
          "caption": obj["caption"], "steps": int(opts.steps)}
    with atomic_path(folder / "volume.pt") as tmp:
        torch.save(st, tmp)
    return {"id": obj["id"], "psnr": round(stats["psnr"], 3), "fit_seconds": round(stats["fit_seconds"], 2),
            "render_seconds": round(render_s, 2), "seconds": round(time.perf_counter() - t0, 2),
            "cpu_seconds": round(time.process_time() - cpu0, 2), "active": stats["active"]}


def _worker_init() -> None:
    os.environ.setdefault("KERNELIGHT_TORCH_THREADS", "1")
    torch.set_num_threads(1)


def _worker(out: str, obj: dict, opts_d: dict) -> dict:
    opts = BuildOptions(**opts_d)
    try:
        return build_object(Path(out), obj, opts)
    except Exception as exc:  # reported by the parent with the object's id; the build goes on
        return {"id": obj["id"], "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:400]}


# ---------------------------------------------------------------------------------------- the folder
def _write_json(out: Path, doc: dict) -> None:
    from ...io.atomic import atomic_write

    with atomic_write(out / "dataset.json", "w") as fh:
        json.dump(doc, fh, indent=1)


def open_dataset(out: Path, opts: BuildOptions) -> tuple[dict, list[str]]:
    """``dataset.json`` for a build into ``out``: new, or the existing one checked and extended with
    ``opts``' objects. A non-empty folder without a GVGEN ``dataset.json`` is refused. Returns the
    document and notes (objects marked done whose ``volume.pt`` is missing, ...)."""
    notes: list[str] = []
    jpath = out / "dataset.json"
    if out.exists() and not out.is_dir():
        raise DataError(out, "exists and is not a folder")
    if jpath.exists():
        try:
            doc = json.loads(jpath.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(jpath, f"unreadable dataset.json ({exc}); move the folder away to start over") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise DataError(jpath, f"not a GVGEN dataset (format {doc.get('format') if isinstance(doc, dict) else None!r}, "
                                   f"expected {FORMAT!r}); choose another --out")
        if int(doc.get("version", 0)) != VERSION:
            raise DataError(jpath, f"GVGEN dataset version {doc.get('version')}, this build writes {VERSION}")
        old = doc.get("build", {})
        new = opts.defining()
        diff = [k for k in new if k in old and old[k] != new[k]]
        if diff:
            raise ConfigError(f"{jpath}: this dataset was built with " + ", ".join(f"{k}={old[k]}" for k in diff)
                              + "; the options ask for " + ", ".join(f"{k}={new[k]}" for k in diff)
                              + ": give the same options to resume it, or another --out")
    elif out.exists() and any(out.iterdir()):
        raise DataError(out, "is not empty and has no dataset.json: not a GVGEN dataset folder; "
                             "choose a new or empty --out")
    else:
        doc = {"format": FORMAT, "version": VERSION, "objects": []}
    wanted = plan(opts)
    want_ids = {o["id"] for o in wanted}
    have = {o["id"]: o for o in doc.get("objects", [])}
    objects = []
    missing, dropped = [], []
    for o in doc.get("objects", []):   # earlier builds' objects: kept when finished or asked for again
        done = _volume_ok(out / "objects" / o["id"] / "volume.pt", opts.N)
        if o.get("status") == "done" and not done:
            missing.append(o["id"])
        o["status"] = "done" if done else "pending"
        if done or o["id"] in want_ids:
            objects.append(o)
        else:
            dropped.append(o["id"])
    for o in wanted:
        if o["id"] in have:
            have[o["id"]]["split"] = o["split"]
            have[o["id"]]["captions"] = o["captions"]
        else:
            objects.append(o)
    if dropped:
        notes.append(f"{len(dropped)} unfinished object(s) of an earlier build are not asked for now and are "
                     "left out: " + ", ".join(dropped[:8]) + (" ..." if len(dropped) > 8 else ""))
    missing = [i for i in missing if i in want_ids]
    if missing:
        notes.append(f"{len(missing)} object(s) marked done have no readable volume.pt and are rebuilt: "
                     + ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else ""))
    colours = sorted({o["colour"] for o in objects}, key=list(P.COLOURS).index)
    shapes = list(dict.fromkeys(o["shape"] for o in objects))
    sizes = sorted({o["size"] for o in objects}, key=list(P.SIZES).index)
    held = sorted({(o["colour"], o["shape"]) for o in objects if o["split"] == "heldout"})
    doc.update({"format": FORMAT, "version": VERSION, "N": opts.N, "sh_degree": opts.sh_degree, "box": BOX,
                "image_size": opts.image_size, "views": {"train": opts.views_train, "test": opts.views_test},
                "colours": {c: list(P.COLOURS[c]) for c in colours}, "shapes": shapes, "sizes": sizes,
                "heldout": [list(p) for p in held], "build": opts.defining(),
                "meshes": {s: {"file": P.MESHES[s].file, "licence": P.MESHES[s].licence}
                           for s in shapes if s in P.MESHES},
                "objects": objects})
    return doc, notes


def encode_captions(out: Path, doc: dict, encoder: str = "minilm") -> int:
    """Embed every caption of the dataset's objects into ``out/text_cache.pt`` (the text encoder's
    disk cache, :mod:`.text`). Returns the number of captions."""
    from .text import get_encoder

    caps = sorted({c for o in doc["objects"] for c in o["captions"]})
    enc = get_encoder(encoder, cache=out / "text_cache.pt")
    for i in range(0, len(caps), 64):
        enc.encode(caps[i:i + 64])
    enc.save_cache()
    return len(caps)


def build(out, opts: BuildOptions, workers: int = 1, progress: bool = True, console=None, limit: int | None = None,
          encoder: str | None = "minilm") -> dict:
    """Build (or resume) the dataset in ``out``. ``workers`` > 1 fits objects in that many processes.
    ``limit``: build at most this many pending objects (then stop; a later call resumes). ``encoder``:
    when every object is done, embed all captions into ``out/text_cache.pt`` with this text encoder
    (None: skip). Returns a summary: objects built / skipped / failed, wall and CPU seconds,
    per-object records."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    opts.validate()
    out = Path(out)
    console = console or Console(stderr=True)
    doc, notes = open_dataset(out, opts)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out, doc)
    for n in notes:
        console.print(f"[yellow]{n}[/yellow]")
    by_id = {o["id"]: o for o in doc["objects"]}
    todo = [o for o in doc["objects"] if o["status"] != "done"]
    skipped = len(doc["objects"]) - len(todo)
    if limit is not None:
        todo = todo[:max(0, int(limit))]
    records, failed = [], []
    t0, cpu0 = time.perf_counter(), time.process_time()
    opts_d = asdict(opts)

    def finish(rec: dict) -> None:
        o = by_id[rec["id"]]
        if "error" in rec:
            failed.append(rec)
            o["status"] = "pending"
            o.pop("psnr", None)
            console.print(f"[red]{rec['id']}: {rec['error']}[/red]")
        else:
            records.append(rec)
            o.update(status="done", psnr=rec["psnr"], fit_seconds=rec["fit_seconds"])
        _write_json(out, doc)

    with Progress(TextColumn("[bold]gvgen dataset[/bold]"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[last]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=console, disable=not progress) as bar:
        task = bar.add_task("objects", total=len(todo), last=f"{skipped} already built")
        if workers <= 1 or len(todo) <= 1:
            for o in todo:
                rec = _worker(str(out), o, opts_d)
                finish(rec)
                bar.update(task, advance=1, last=_last(rec))
        else:
            import concurrent.futures as cf
            import multiprocessing as mp

            with cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                        initializer=_worker_init) as pool:
                futs = {pool.submit(_worker, str(out), o, opts_d): o["id"] for o in todo}
                try:
                    for f in cf.as_completed(futs):
                        rec = f.result()
                        finish(rec)
                        bar.update(task, advance=1, last=_last(rec))
                except BaseException:
                    for f in futs:
                        f.cancel()
                    raise
    encoded = 0
    if encoder and not failed and all(o["status"] == "done" for o in doc["objects"]):
        encoded = encode_captions(out, doc, encoder)
    wall = time.perf_counter() - t0
    # CPU time of this process plus its finished workers
    import resource

    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"out": str(out), "built": len(records), "skipped": skipped, "failed": failed,
            "pending": sum(o["status"] != "done" for o in doc["objects"]), "total": len(doc["objects"]),
            "wall_seconds": round(wall, 2), "cpu_seconds_parent": round(time.process_time() - cpu0, 2),
            "cpu_seconds_children": round(ch.ru_utime + ch.ru_stime, 2), "workers": workers,
            "captions_encoded": encoded,
            "objects": records}


def _last(rec: dict) -> str:
    if "error" in rec:
        return f"{rec['id']}: failed"
    return f"{rec['id']}: {rec['psnr']:.1f} dB, fit {rec['fit_seconds']:.0f} s"
