"""A tiny synthetic GVGEN training set for the model tests (no rendering, no fitting, no text model).

Objects are spheres and boxes in two colours on an N^3 grid: the volume's active slots are the
grid points near the shape's surface (coloured, opaque), its GDF the distance from each grid
point to the nearest active one; images are RGBA discs/squares of the colour on a transparent
background, seen from two training and one test camera (Blender format). ``install_stub_encoder``
registers a deterministic bag-of-words text encoder (``"stub"``, 32 dimensions) with the same
interface as the MiniLM one.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch

SH_C0 = 0.28209479177387814
COLOURS = {"red": (0.9, 0.1, 0.1), "blue": (0.1, 0.2, 0.9)}
SHAPES = ("sphere", "box")


def _inside(shape, p, r):
    if shape == "sphere":
        return np.linalg.norm(p, axis=-1) <= r
    return np.abs(p).max(-1) <= r * 0.8


def make_volume(shape: str, colour: str, n: int, box=((-0.5,) * 3, (0.5,) * 3)) -> dict:
    from scipy.spatial import cKDTree

    lo, hi = np.array(box[0]), np.array(box[1])
    ax = [np.linspace(lo[a], hi[a], n) for a in range(3)]
    p = np.stack(np.meshgrid(*ax, indexing="ij"), -1).reshape(-1, 3)
    cell = (hi - lo) / (n - 1)
    r = 0.3
    inside = _inside(shape, p, r)
    inner = _inside(shape, p, r - 1.2 * cell[0])
    active = inside & ~inner
    grid = np.zeros((n ** 3, 14), np.float32)
    grid[:, 13] = -10.0
    grid[active, 3:6] = (np.array(COLOURS[colour]) - 0.5) / SH_C0
    grid[active, 6:9] = math.log(0.8 * cell[0])
    grid[active, 9] = 1.0
    grid[active, 13] = 3.0
    d, _ = cKDTree(p[active]).query(p, k=1)
    return {"N": n, "grid": torch.from_numpy(grid.reshape(n, n, n, 14)),
            "gdf": torch.from_numpy(d.astype(np.float32).reshape(n, n, n)),
            "box": torch.tensor([list(lo), list(hi)], dtype=torch.float32), "psnr": 30.0, "fit_seconds": 0.0}


def _views():
    rot_y = np.array([[0, 0, 1], [0, 1, 0], [-1, 0, 0]], float)
    mats = []
    for R, t in ((np.eye(3), (0, 0, 2.5)), (rot_y, (2.5, 0, 0)), (np.eye(3), (0, 0, 2.5))):
        m = np.eye(4)
        m[:3, :3] = R
        m[:3, 3] = t
        mats.append(m)
    return mats


def _image(shape, colour, size):
    yy, xx = np.mgrid[0:size, 0:size]
    c = (size - 1) / 2
    rr = size * 0.3
    mask = ((xx - c) ** 2 + (yy - c) ** 2 <= rr ** 2) if shape == "sphere" else \
        (np.maximum(abs(xx - c), abs(yy - c)) <= rr * 0.8)
    img = np.zeros((size, size, 4), np.uint8)
    img[mask, :3] = (np.array(COLOURS[colour]) * 255).astype(np.uint8)
    img[mask, 3] = 255
    return img


def make_set(root, n: int = 8, size: int = 16, heldout=(("blue", "box"),), missing: tuple = ()) -> Path:
    """Write the set to ``root``; objects whose id is in ``missing`` get no volume.pt."""
    import imageio.v3 as iio

    root = Path(root)
    objects = []
    mats = _views()
    for shape in SHAPES:
        for colour in COLOURS:
            oid = f"{shape}-{colour}"
            caps = [f"a {colour} {shape}", f"a {shape} in {colour}"]
            split = "heldout" if (colour, shape) in heldout else "train"
            objects.append({"id": oid, "shape": shape, "colour": colour, "size": "large", "caption": caps[0],
                            "captions": caps, "split": split, "status": "done"})
            folder = root / "objects" / oid
            for which, idx in (("train", (0, 1)), ("test", (2,))):
                (folder / which).mkdir(parents=True, exist_ok=True)
                frames = []
                for k, i in enumerate(idx):
                    iio.imwrite(folder / which / f"r_{k}.png", _image(shape, colour, size))
                    frames.append({"file_path": f"./{which}/r_{k}", "transform_matrix": mats[i].tolist()})
                (folder / f"transforms_{which}.json").write_text(json.dumps({"camera_angle_x": 0.7,
                                                                             "frames": frames}))
            if oid not in missing:
                torch.save(make_volume(shape, colour, n), folder / "volume.pt")
    doc = {"format": "kernelight-gvgen", "version": 1, "N": n, "sh_degree": 0,
           "box": [[-0.5] * 3, [0.5] * 3], "image_size": size, "views": {"train": 2, "test": 1},
           "colours": {k: list(v) for k, v in COLOURS.items()}, "shapes": list(SHAPES), "sizes": ["large"],
           "heldout": [list(h) for h in heldout], "objects": objects}
    (root / "dataset.json").write_text(json.dumps(doc))
    return root


class StubEncoder:
    """Bag of words: each word a fixed pseudo-random vector (from its hash); pooled = their
    normalised mean, tokens = the word vectors."""

    name = "stub"
    dim = 32

    def __init__(self, cache=None):
        self.calls = 0

    def _vec(self, w):
        seed = int(hashlib.sha1(w.encode()).hexdigest()[:8], 16)
        return torch.randn(self.dim, generator=torch.Generator().manual_seed(seed))

    def encode(self, captions, pad_to=None):
        from engine.methods.gvgen.text import caption_words, validate_caption

        if isinstance(captions, str):
            captions = [captions]
        caps = [validate_caption(c) for c in captions]
        self.calls += 1
        words = [caption_words(c) or ["?"] for c in caps]
        L = max(len(w) for w in words)
        tokens = torch.zeros(len(caps), L, self.dim)
        mask = torch.zeros(len(caps), L, dtype=torch.bool)
        for i, ws in enumerate(words):
            for j, w in enumerate(ws):
                tokens[i, j] = self._vec(w)
                mask[i, j] = True
        pooled = torch.nn.functional.normalize(tokens.sum(1), dim=-1)
        return {"pooled": pooled, "tokens": tokens, "mask": mask}


def install_stub_encoder():
    from engine.methods.gvgen import text

    text.register_encoder("stub", lambda cache=None, **kw: StubEncoder(cache))
