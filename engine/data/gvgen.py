"""Reader of a GVGEN training set (``kernelight gvgen dataset``; ``dataset.json`` with
``"format": "kernelight-gvgen"``) as one :class:`~engine.data.dataset.Dataset`.

A set holds many objects, each a Blender-format folder ``objects/<id>/`` plus its fitted
GaussianVolume ``volume.pt`` (present only once the object is complete). Loaded as one dataset:

* ``train``: the training views of every complete object whose ``split`` is ``train`` (held-out
  colour-shape pairs are never trained on);
* ``test``: the test views of every complete held-out object (the honest test of a text-to-3D model:
  captions it never saw), or of the training objects when the set holds none.

Each split's cameras carry ``gvgen`` (a dict: ``root``, ``objects`` (the object records of
``dataset.json`` in that split), ``view_object`` (per view, the index of its object in ``objects``)),
which the ``gvgen`` method reads to pair a view with its object and caption. ``metadata["gvgen"]``
holds the parsed ``dataset.json`` and the complete / skipped object ids.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..cameras import Cameras
from ..errors import DataError
from .dataset import Dataset, Split, parse_background

FORMAT_NAME = "kernelight-gvgen"


def is_gvgen_set(root) -> bool:
    """Whether folder ``root`` holds a GVGEN training set (``dataset.json`` of this format)."""
    p = Path(root) / "dataset.json"
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text(encoding="utf-8")).get("format") == FORMAT_NAME
    except (OSError, ValueError, AttributeError):
        return False


def read_manifest(root) -> dict:
    """The parsed ``dataset.json`` (DataError naming the file when it is missing or malformed)."""
    p = Path(root) / "dataset.json"
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(p, "missing: not a GVGEN training set (build one with kernelight gvgen dataset)") from None
    except (OSError, ValueError) as exc:
        raise DataError(p, f"unreadable JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise DataError(p, f"not a GVGEN training set (expected \"format\": \"{FORMAT_NAME}\")")
    for key in ("N", "box", "objects"):
        if key not in meta:
            raise DataError(p, f"has no {key!r}")
    if not isinstance(meta["objects"], list):
        raise DataError(p, "'objects' is not a list")
    return meta


def complete_objects(root, meta: dict) -> tuple[list[dict], list[str]]:
    """(objects whose ``volume.pt`` exists, ids of the others)."""
    done, missing = [], []
    for o in meta["objects"]:
        if not isinstance(o, dict) or "id" not in o:
            raise DataError(Path(root) / "dataset.json", f"an object entry without an id: {o!r}")
        (done if (Path(root) / "objects" / o["id"] / "volume.pt").is_file() else missing).append(o)
    return done, [o["id"] for o in missing]


def _split_of(root: Path, objects: list[dict], which: str, downscale: int, background) -> Split | None:
    from . import blender, dataset

    defer = getattr(dataset, "_DEFER", None)    # decode now: the objects' images are joined below
    token = defer.set(False) if defer is not None else None
    try:
        return _join(root, objects, which, downscale, background, blender)
    finally:
        if token is not None:
            defer.reset(token)


def _join(root, objects, which, downscale, background, blender) -> Split | None:
    cams, imgs, paths, alphas, view_object = [], [], [], [], []
    for k, o in enumerate(objects):
        ds = blender.load(root / "objects" / o["id"], downscale=downscale, background=background)
        sp = ds.splits.get(which)
        if sp is None:
            raise DataError(root / "objects" / o["id"], f"has no {which} split (transforms_{which}.json)")
        cams.append(sp.cameras)
        imgs.append(sp.images)
        paths.extend(sp.image_paths)
        alphas.append(sp.alpha)
        view_object.extend([k] * len(sp.cameras))
    if not cams:
        return None
    shapes = {tuple(i.shape[1:]) for i in imgs}
    if len(shapes) != 1:
        raise DataError(root, f"objects' {which} images differ in size ({sorted(shapes)})")
    cameras = Cameras.cat(cams)
    cameras.gvgen = {"root": str(root), "objects": list(objects), "view_object": torch.tensor(view_object)}
    alpha = torch.cat(alphas) if all(a is not None for a in alphas) else None
    return Split(which, cameras, torch.cat(imgs), paths, None, alpha)


def load(root, downscale: int = 1, background=None, **_) -> Dataset:
    """Load a GVGEN set (see the module docstring); objects without ``volume.pt`` are skipped."""
    root = Path(root)
    meta = read_manifest(root)
    done, missing = complete_objects(root, meta)
    train_objs = [o for o in done if o.get("split", "train") == "train"]
    held = [o for o in done if o.get("split") == "heldout"]
    if not train_objs:
        raise DataError(root, f"no complete training object (of {len(meta['objects'])} listed, "
                              f"{len(missing)} have no volume.pt yet: finish the build with kernelight gvgen dataset)")
    bg = parse_background(background, default=(1.0, 1.0, 1.0))
    splits = {"train": _split_of(root, train_objs, "train", downscale, background)}
    test = _split_of(root, held or train_objs, "test", downscale, background)
    if test is not None:
        splits["test"] = test
    box = torch.as_tensor(meta["box"], dtype=torch.float32).reshape(2, 3)
    info = {"manifest": meta, "complete": [o["id"] for o in done], "missing": missing,
            "test_objects": "heldout" if held else "train"}
    return Dataset(format="gvgen", root=root, splits=splits, scene_box=box, background=bg,
                   downscale=int(downscale), metadata={"gvgen": info})
