"""--device for render / eval / view and engine.load(device=) (issue 17): on a machine without a
GPU, --device cuda is one line (no traceback) before anything is rendered or served; a method whose
model cannot live on the device is refused for an explicit device and kept on the CPU for auto;
gvolume now declares the GPU (its volume and pool statistics follow Method.to)."""
from __future__ import annotations

import pytest
import torch

from engine.errors import ConfigError
from tests.conftest import require

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")


@pytest.fixture(scope="module")
def ply(shared_data):
    return require(shared_data / "gaussians" / "kacytran_try_iter7000_sh3.ply")


def _one_line(capsys, argv) -> str:
    from engine.cli import main

    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, (rc, err)
    assert "Traceback" not in err[0]
    return err[0]


@pytest.mark.parametrize("cmd", [["render", "{ply}", "--no-views", "--video", "none", "--out", "{tmp}"],
                                 ["eval", "{ply}", "--cameras", "{lego}", "--out", "{tmp}/e.json"],
                                 ["view", "{ply}", "--timeout", "0.1", "--port", "0"]])
def test_device_cuda_without_gpu_is_one_line(capsys, tmp_path, ply, shared_data, cmd):
    lego = shared_data / "nerf_synthetic" / "lego_100"
    argv = [a.format(ply=ply, tmp=tmp_path, lego=lego) for a in cmd] + ["--device", "cuda"]
    msg = _one_line(capsys, argv)
    assert "--device cuda" in msg and ("CPU-only" in msg or "sees no GPU" in msg)
    if torch.version.cuda is None:
        assert "make setup TORCH=" in msg
    assert not (tmp_path / "e.json").exists()


def test_load_on_cpu(ply):
    import engine

    m = engine.load(ply, device="cpu")
    assert m.device.type == "cpu" and all(t.device.type == "cpu" for t in m._tensors())
    assert engine.load(ply).device.type == "cpu"          # default: stays where it loads
    with pytest.raises(ConfigError, match="--device must be auto, cpu or cuda|must be auto, cpu or cuda"):
        engine.load(ply, device="gpu")


def test_method_devices_decide_placement(monkeypatch):
    """With the runtime faked to answer cuda: a CPU-only method is refused for --device cuda and
    kept on the CPU (with a note) for auto; raygauss, gvolume and shells go to the GPU."""
    from engine import api
    from engine.methods import get_method
    from engine.methods.base import Method
    from engine.train import distributed

    monkeypatch.setattr(distributed, "resolve_device", lambda req, start=False: torch.device("cuda"))

    class CpuOnly(Method):
        name = "cpu_only"

    with pytest.raises(ConfigError, match="--device cuda: method cpu_only keeps its model on cpu"):
        api.place_method(CpuOnly, "cuda")
    dev, note = api.place_method(CpuOnly, "auto")
    assert dev.type == "cpu" and "keeps its model on the CPU" in note
    for name in ("raygauss", "gvolume", "shells"):
        assert api.place_method(get_method(name), "cuda") == (torch.device("cuda"), None)


def test_gvolume_to_moves_volume_and_pool_statistics():
    from engine.methods.gvolume.config import GVolumeConfig
    from engine.methods.gvolume.method import GVolumeMethod
    from engine.methods.gvolume.model import GaussianVolume

    cfg = GVolumeConfig.from_options({"grid_size": 4}, "gvolume")
    m = GVolumeMethod(cfg, GaussianVolume(torch.tensor([[-1.0] * 3, [1.0] * 3]), 4))
    m.strategy._reset(64, "cpu")
    opt = m.make_optimizer()
    same = m.to("cpu")
    assert same is m and m.vol.offset is opt.param_groups[0]["params"][0]      # moved in place
    assert m.strategy.grad_accum.device.type == "cpu" and "cuda" in GVolumeMethod.devices


def _pool_round(default_device=None):
    """A densify + prune round, then the end of densification, on a 4^3 CPU volume; with
    ``default_device="meta"`` every tensor made without ``device=`` lands on the meta device, so
    mixing it with the volume's tensors fails: the round must create its tensors on the volume's
    device (or explicitly on the CPU), as it must on a GPU."""
    import contextlib
    import math

    from engine.methods.gvolume.config import GVolumeConfig
    from engine.methods.gvolume.model import GaussianVolume
    from engine.methods.gvolume.pool import CandidatePoolStrategy

    n = 4
    cfg = GVolumeConfig(grid_size=n, densify_grad_thr=1e-3, clone_scale_frac=0.05, prune_opacity=0.005,
                        densify_from=1, densify_until=10, densify_every=1, reactivate_opacity=1e-4)
    vol = GaussianVolume(torch.tensor([[0.0] * 3, [float(n - 1)] * 3]), n, 0, init_scale_cells=0.1)
    A, B, C = 21, 42, 48
    for s in (A, B, C):
        vol.reset_rows(torch.tensor([s]), opacity=0.5)
        vol.active[s] = True
    vol.offset.data[A] = torch.tensor([0.4, 0.0, 0.0])
    vol.log_scales.data[B] = math.log(0.5)                 # split
    vol.opacity.data[C] = math.log(0.001 / 0.999)          # pruned
    opt = torch.optim.Adam([{"name": k, "params": [p]} for k, p in vol.param_dict().items()], lr=0.01)
    for p in vol.param_dict().values():
        p.grad = torch.ones_like(p)
    opt.step()
    st = CandidatePoolStrategy(cfg, extent=vol.extent, seed=0)
    view = (torch.tensor([[1.0, 0, 0, 1.5], [0, 1, 0, 1.5], [0, 0, 1, -4], [0, 0, 0, 1]]), 50.0, 50.0, 64, 64)
    with torch.device(default_device) if default_device else contextlib.nullcontext():
        st.after_backward(vol, view)
        res = st.densify_and_prune(vol, opt)
        end = st.step(vol, opt, step=9)
    return vol, res, end


def test_gvolume_densification_is_device_clean():
    vol, res, end = _pool_round("meta")
    ref_vol, ref_res, ref_end = _pool_round()
    assert res == ref_res and end == ref_end and res["split"] == 1 and res["pruned"] >= 1 and res["cloned"] >= 1
    for k, v in ref_vol.state_dict().items():
        assert v.device.type == "cpu" and torch.equal(vol.state_dict()[k], v), k
