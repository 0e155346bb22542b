"""Datasets bigger than memory (issue 17, part 5): a 2,000-image copy of lego_200 (its 100 training
images listed 20 times: 1.2 GB decoded) trains with a 32 MB image cache in a subprocess whose peak
RSS stays far below what eager loading needs, for a ray method (working sets) and an image method
(prefetch of the next step's image). The method is a tiny probe (:mod:`.stream_probe`) so the test
measures the data path, not a renderer."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require

ROOT = Path(__file__).resolve().parents[3]
PROBE = Path(__file__).with_name("stream_probe.py")


def many_copies(src: Path, dst: Path, copies: int, test_frames: int = 4) -> Path:
    """A blender folder whose train split lists ``src``'s training frames ``copies`` times (the
    image folders are symlinks): ``copies`` x the decoded size, no extra disk."""
    dst.mkdir(parents=True, exist_ok=True)
    for d in ("train", "test"):
        (dst / d).symlink_to(src / d)
    for split, n, k in (("train", None, copies), ("test", test_frames, 1)):
        meta = json.loads((src / f"transforms_{split}.json").read_text())
        frames = meta["frames"][:n] if n else meta["frames"]
        meta["frames"] = [dict(f) for _ in range(k) for f in frames]
        (dst / f"transforms_{split}.json").write_text(json.dumps(meta))
    return dst


@pytest.fixture(scope="module")
def lego_x20(shared_data, tmp_path_factory) -> Path:
    src = require(shared_data / "nerf_synthetic" / "lego_200" / "transforms_train.json").parent
    return many_copies(src, tmp_path_factory.mktemp("lego_x20") / "lego_x20", 20)


@pytest.mark.parametrize("mode,steps", [("rays", 60), ("image", 12)])
def test_training_streams_under_a_memory_bound(lego_x20, tmp_path, mode, steps):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(PROBE), str(lego_x20), "32MB", mode, str(steps), str(tmp_path)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    meta, cache = res["meta"], res["cache"]
    assert meta["streaming"] and meta["decoded_mb"] > 1200          # eager loading would hold 1.2 GB
    grew = res["rss_peak_mb"] - res["rss_base_mb"]
    # 32 MB of images + training; the same run on lego_100 loaded eagerly (61 MB) grows by ~160 MB
    assert grew < 300, f"peak RSS grew by {grew:.0f} MB with a 32 MB image cache: {res}"
    assert cache["resident_mb"] <= 32.0 + 1.0 and cache["prefetched"] > 0
    if mode == "rays":
        assert res["working_set"] == 26                              # half of the 52 images that fit
        # each image decoded once per working set: 60 steps = 3 sets of 26 + the next one prefetched (+ the
        # 4 test views); uniform batches over 2,000 images would decode ~500 images per step
        assert cache["misses"] + cache["prefetched"] <= 4 * 26 + 8, cache
    else:
        assert res["working_set"] is None


def test_bad_image_cache_is_one_line(capsys, tmp_path, lego_x20):
    from engine.cli import main

    rc = main(["train", "raygauss", "--data", str(lego_x20), "--image-cache", "lots", "--output", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--image-cache 'lots': expected auto, all, a size in MB" in err[0], err
    assert not list(tmp_path.iterdir())
