"""nerfstudio camera_path.json: interpolation, writer, reader (engine/camera_paths_json.py)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from engine.camera_paths import look_at
from engine.camera_paths_json import (focal_from_fov, fov_from_focal, interpolate_keyframes, read_camera_path,
                                      write_camera_path)
from engine.errors import DataError


def _keys():
    eyes = [(3.0, 0.0, 1.0), (0.0, 3.0, 1.5), (-3.0, 0.0, 1.0), (0.0, -3.0, 0.5)]
    return torch.stack([look_at(e, (0, 0, 0), (0, 0, 1)) for e in eyes]), torch.tensor([50.0, 40.0, 60.0, 50.0])


def test_interpolation_passes_through_keyframes():
    c2w, fov = _keys()
    n = 31  # 3 segments of 10 frames: keyframes at frames 0, 10, 20, 30
    mats, fovs = interpolate_keyframes(c2w, fov, n)
    for k, f in enumerate((0, 10, 20, 30)):
        assert torch.allclose(mats[f], c2w[k], atol=1e-5), k
        assert float(fovs[f]) == pytest.approx(float(fov[k]), abs=1e-4)
    R = mats[:, :3, :3].double()
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(n, 3, 3), atol=1e-5)
    # smooth: no jump between consecutive positions larger than 3x the mean step
    steps = (mats[1:, :3, 3] - mats[:-1, :3, 3]).norm(dim=1)
    assert float(steps.max()) < 3 * float(steps.mean())
    assert float(fovs[5]) == pytest.approx(45.0, abs=1e-4)  # linear fov between 50 and 40


def test_loop_returns_towards_start_and_single_keyframe():
    c2w, fov = _keys()
    mats, _ = interpolate_keyframes(c2w, fov, 40, loop=True)
    assert torch.allclose(mats[0], c2w[0], atol=1e-5) and torch.allclose(mats[30], c2w[3], atol=1e-5)
    assert (mats[39, :3, 3] - c2w[0, :3, 3]).norm() < (mats[35, :3, 3] - c2w[0, :3, 3]).norm()
    one, f1 = interpolate_keyframes(c2w[:1], fov[:1], 5)
    assert torch.allclose(one, c2w[:1].expand(5, 4, 4)) and torch.allclose(f1, fov[:1].expand(5))
    with pytest.raises(ValueError):
        interpolate_keyframes(c2w, fov[:2], 5)


def test_write_read_roundtrip_nerfstudio_fields(tmp_path):
    c2w, fov = _keys()
    p = write_camera_path(tmp_path / "camera_path.json", c2w, fov, width=64, height=48, fps=10, seconds=3.1)
    doc = json.loads(p.read_text())
    for key in ("camera_type", "render_height", "render_width", "fps", "seconds", "camera_path", "keyframes"):
        assert key in doc
    assert doc["camera_type"] == "perspective" and doc["render_width"] == 64 and doc["render_height"] == 48
    assert len(doc["camera_path"]) == 31 and len(doc["keyframes"]) == 4
    fr = doc["camera_path"][0]
    assert len(fr["camera_to_world"]) == 16 and fr["aspect"] == pytest.approx(64 / 48)
    # OpenGL axes, row-major: the third column is the camera's backward axis (-look direction)
    m = np.array(fr["camera_to_world"]).reshape(4, 4)
    look = -m[:3, 2]
    assert np.allclose(look, -c2w[0, :3, 3].numpy() / np.linalg.norm(c2w[0, :3, 3].numpy()), atol=1e-5)
    assert np.allclose(m[:3, 3], c2w[0, :3, 3].numpy(), atol=1e-6)
    cams, fps = read_camera_path(p)
    assert fps == 10 and len(cams) == 31 and int(cams.width[0]) == 64 and int(cams.height[0]) == 48
    assert torch.allclose(cams.c2w[0], c2w[0], atol=1e-5) and torch.allclose(cams.c2w[30], c2w[3], atol=1e-5)
    assert float(cams.fy[0]) == pytest.approx(focal_from_fov(50.0, 48), rel=1e-5)
    # the scene origin, looked at by every keyframe, projects to the image centre
    uv, z = cams.project(torch.zeros(1, 3), 10)
    assert torch.allclose(uv.reshape(2), torch.tensor([32.0, 24.0]), atol=1e-3) and float(z) > 0


def test_reader_errors_name_file_and_field(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="bad.json"):
        read_camera_path(bad)
    with pytest.raises(DataError, match="not found"):
        read_camera_path(tmp_path / "missing.json")
    doc = {"camera_type": "perspective", "render_height": 10, "render_width": 10, "fps": 5,
           "camera_path": [{"camera_to_world": [1, 0, 0], "fov": 50}]}
    bad.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"camera_path\[0\]"):
        read_camera_path(bad)
    doc["camera_type"] = "fisheye"
    bad.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="fisheye"):
        read_camera_path(bad)


def test_focal_fov_inverse():
    assert fov_from_focal(focal_from_fov(37.0, 480), 480) == pytest.approx(37.0)
    assert focal_from_fov(90.0, 100) == pytest.approx(50.0)
    assert math.isclose(focal_from_fov(60.0, 2), 1 / math.tan(math.radians(30)))
