"""Fixtures for the dataset-reader tests: real data folders and cheap broken copies of them."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import require


@pytest.fixture(scope="session")
def lego_100(shared_data) -> Path:
    return require(shared_data / "nerf_synthetic" / "lego_100" / "transforms_train.json").parent


@pytest.fixture(scope="session")
def fox(shared_data) -> Path:
    return require(shared_data / "real" / "fox_quarter" / "transforms.json").parent


@pytest.fixture(scope="session")
def beer(shared_data) -> Path:
    return require(shared_data / "real" / "beer" / "sparse" / "0" / "images.bin").parents[2]


@pytest.fixture(scope="session")
def dtu(shared_data) -> Path:
    return require(shared_data / "dtu" / "scan24_400" / "cameras_sphere.npz").parent


def link_tree(src: Path, dst: Path, skip: set[str] = frozenset()) -> Path:
    """Mirror ``src`` into ``dst`` with symlinked files (cheap), so tests can break single files."""
    dst.mkdir(parents=True, exist_ok=True)
    for p in src.iterdir():
        if p.name in skip:
            continue
        if p.is_dir():
            link_tree(p, dst / p.name)
        else:
            (dst / p.name).symlink_to(p)
    return dst


def replace_with_copy(path: Path) -> Path:
    """Turn a symlink made by :func:`link_tree` into a real, writable copy."""
    target = path.resolve()
    path.unlink()
    shutil.copyfile(target, path)
    return path


def small_blender_copy(src: Path, dst: Path, n: int = 3) -> Path:
    """A blender folder with the first ``n`` frames of train only (JSON rewritten, images linked)."""
    meta = json.loads((src / "transforms_train.json").read_text())
    meta["frames"] = meta["frames"][:n]
    (dst / "train").mkdir(parents=True)
    for fr in meta["frames"]:
        name = Path(fr["file_path"]).name + ".png"
        (dst / "train" / name).symlink_to(src / "train" / name)
    (dst / "transforms_train.json").write_text(json.dumps(meta))
    return dst
