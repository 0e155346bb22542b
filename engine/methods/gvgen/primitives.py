"""The objects of the GVGEN training set: shapes (trimesh primitives and licensed meshes), colours,
sizes and their captions.

Every object is a triangle mesh normalised into the dataset's box (centred, its largest extent a
fixed fraction of the box side: ``SIZES``), z up (Blender's convention), with one flat colour.

Meshes from ``../shared/data/meshes`` are used only where their licence allows redistribution of
renders and models derived from them (``MESHES`` says which and why); the primitives carry no
licence terms and are what the shipped generator is trained on.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import ConfigError, DataError

# sRGB in [0, 1]; names are the words the captions use
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.10, 0.10),
    "orange": (1.00, 0.50, 0.05),
    "yellow": (0.95, 0.85, 0.10),
    "green": (0.12, 0.65, 0.15),
    "cyan": (0.10, 0.78, 0.85),
    "blue": (0.10, 0.22, 0.90),
    "purple": (0.55, 0.15, 0.75),
    "pink": (1.00, 0.50, 0.75),
    "white": (0.95, 0.95, 0.95),
    "gray": (0.50, 0.50, 0.50),
    "black": (0.10, 0.10, 0.10),
    "brown": (0.50, 0.30, 0.12),
}

# largest extent of the object as a fraction of the box side
SIZES: dict[str, float] = {"small": 0.5, "large": 0.85}

# other words a caption may use for a shape
SYNONYMS: dict[str, list[str]] = {
    "box": ["cube", "block"], "sphere": ["ball", "orb"], "cylinder": ["can", "tube"], "cone": ["cone"],
    "torus": ["donut", "ring"], "capsule": ["pill"], "pyramid": ["pyramid"], "ring": ["washer"],
    "octahedron": ["diamond"], "cow": ["cow"], "bunny": ["rabbit"],
}


def _box():
    import trimesh

    return trimesh.creation.box(extents=(1.0, 1.0, 1.0))


def _sphere():
    import trimesh

    return trimesh.creation.icosphere(subdivisions=3, radius=0.5)


def _cylinder():
    import trimesh

    return trimesh.creation.cylinder(radius=0.5, height=1.0, sections=48)


def _cone():
    import trimesh

    return trimesh.creation.cone(radius=0.5, height=1.0, sections=48)


def _torus():
    import trimesh

    return trimesh.creation.torus(major_radius=0.35, minor_radius=0.15, major_sections=48, minor_sections=24)


def _capsule():
    import trimesh

    return trimesh.creation.capsule(height=0.6, radius=0.25, count=(24, 24))


def _pyramid():
    import trimesh

    return trimesh.creation.cone(radius=0.6, height=0.8, sections=4)


def _ring():
    import trimesh

    return trimesh.creation.annulus(r_min=0.3, r_max=0.5, height=0.25, sections=48)


def _octahedron():
    import trimesh

    v = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float) * 0.5
    f = [[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]]
    return trimesh.Trimesh(v, np.array(f), process=True)


PRIMITIVES = {"box": _box, "sphere": _sphere, "cylinder": _cylinder, "cone": _cone, "torus": _torus,
              "capsule": _capsule, "pyramid": _pyramid, "ring": _ring, "octahedron": _octahedron}


@dataclass(frozen=True)
class MeshSource:
    file: str          # under the shared data's meshes/
    licence: str
    why: str
    up: str = "y"      # the file's up axis (turned to z)


# Only meshes whose licence allows redistributing derived renders/models (see ../shared/data/README.md):
MESHES: dict[str, MeshSource] = {
    "cow": MeshSource("spot.obj", "public domain (Keenan Crane, spot/README.txt)",
                      "Spot is released into the public domain by its author"),
    "bunny": MeshSource("bunny_small.ply", "MIT (potpourri3d test data)",
                        "shipped under MIT in potpourri3d; a decimated Stanford bunny"),
}
# left out on purpose: cow.obj (Viewpoint/Sun, terms not stated), stanford-bunny.obj (Stanford
# 3D Scanning Repository: research use, no redistribution licence stated), armadillo.obj (NVIDIA
# Source Code License, non-commercial).
EXCLUDED_MESHES = {"cow.obj": "Viewpoint Animation Engineering / Sun Microsystems: licence terms not stated",
                   "stanford-bunny.obj": "Stanford 3D Scanning Repository: no redistribution licence stated",
                   "armadillo.obj": "NVIDIA Source Code License: non-commercial only"}


def shared_meshes_dir() -> Path:
    """``$KERNELIGHT_DATA/meshes`` or ``../shared/data/meshes`` next to the repository."""
    env = os.environ.get("KERNELIGHT_DATA")
    if env:
        return Path(env) / "meshes"
    return Path(__file__).resolve().parents[3].parent / "shared" / "data" / "meshes"


def available_shapes() -> list[str]:
    return list(PRIMITIVES) + list(MESHES)


def shape_mesh(shape: str, meshes_dir: Path | None = None):
    """The unnormalised trimesh of ``shape`` (a primitive name or a licensed mesh name)."""
    import trimesh

    if shape in PRIMITIVES:
        return PRIMITIVES[shape]()
    if shape in MESHES:
        src = MESHES[shape]
        path = Path(meshes_dir or shared_meshes_dir()) / src.file
        if not path.is_file():
            raise DataError(path, f"mesh for shape {shape!r} not found (set KERNELIGHT_DATA to the shared data "
                                  "folder, or leave the mesh shapes out)")
        m = trimesh.load(path, force="mesh", process=True)
        if not isinstance(m, trimesh.Trimesh) or len(m.faces) == 0:
            raise DataError(path, "not a triangle mesh")
        if src.up == "y":  # y up -> z up: +90 degrees about x
            m.apply_transform(trimesh.transformations.rotation_matrix(math.pi / 2, [1, 0, 0]))
        return m
    raise ConfigError(f"unknown shape {shape!r}; available: {', '.join(available_shapes())}")


def normalised_mesh(shape: str, size: str, box, meshes_dir: Path | None = None):
    """``shape``'s mesh centred in ``box`` (2, 3) with its largest extent ``SIZES[size]`` x the box's
    smallest side; smooth-shaded (vertices split along creases sharper than trimesh's default angle,
    so a box keeps flat faces and a sphere is smooth)."""
    if size not in SIZES:
        raise ConfigError(f"unknown size {size!r}; available: {', '.join(SIZES)}")
    m = shape_mesh(shape, meshes_dir).copy()
    box = np.asarray(box, float).reshape(2, 3)
    lo, hi = m.bounds
    scale = SIZES[size] * float((box[1] - box[0]).min()) / float((hi - lo).max())
    m.apply_translation(-(lo + hi) / 2)
    m.apply_scale(scale)
    m.apply_translation((box[0] + box[1]) / 2)
    return m.smooth_shaded


def captions(shape: str, colour: str, size: str) -> list[str]:
    """Template captions, the first the canonical one ("a small red torus")."""
    names = [shape] + [s for s in SYNONYMS.get(shape, []) if s != shape]
    out = [f"a {size} {colour} {shape}", f"a {colour} {shape}", f"a {shape} in {colour}",
           f"a {size} {shape} that is {colour}"]
    out += [f"a {size} {colour} {n}" for n in names[1:]] + [f"a {colour} {n}" for n in names[1:]]
    return list(dict.fromkeys(out))


def parse_heldout(path) -> list[tuple[str, str]]:
    """Colour-shape pairs of a held-out list: one per line, ``colour shape`` (``a red torus`` and
    ``red torus`` both work; ``#`` starts a comment)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot read the held-out caption list ({exc})") from None
    pairs = []
    for ln, line in enumerate(lines, 1):
        words = line.split("#", 1)[0].lower().split()
        if words and words[0] in ("a", "an"):
            words = words[1:]
        words = [w for w in words if w not in SIZES]
        if not words:
            continue
        if len(words) != 2 or words[0] not in COLOURS or words[1] not in available_shapes():
            raise DataError(path, f"line {ln}: expected 'colour shape' (e.g. 'red torus') with a colour of "
                                  f"{', '.join(COLOURS)} and a shape of {', '.join(available_shapes())}; got {line.strip()!r}")
        pairs.append((words[0], words[1]))
    return list(dict.fromkeys(pairs))


DEFAULT_HELDOUT = Path(__file__).with_name("heldout.txt")
