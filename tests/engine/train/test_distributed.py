"""Data-parallel training (issue 17): ranks are real processes (``python -m engine.cli train``) joined
by gloo through a file store (no TCP store; gloo on the loopback), the single-rank references run
in this process. Scenes are the bundled mic at 25x25 px, a few steps each.

* 2 ranks x half the batch hold the same parameters as 1 rank x the whole batch after K steps,
  across a densification (RayGauss) and the shells extraction (shells);
* a 2-rank checkpoint resumes with 1 rank and a 1-rank checkpoint with 2, and both reach the
  same parameters;
* a rank killed mid-run makes the other stop with one line, without hanging;
* bad inputs (``--nproc`` above the cores, a world size that does not divide the batch, ``--device
  cuda`` without a GPU, a checkpoint resumed by a world size that does not divide its batch) are
  one-line ConfigErrors, and the runtime refuses CUDA Taichi with a CPU-only torch (and the reverse).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[3]
MIC = ROOT / "scenes" / "mic" / "mic_100"
TIMEOUT = 240           # one multi-rank run, all ranks together

RAYGAUSS = ["raygauss", "--data", str(MIC), "--downscale", "4", "--init-points", "300", "--batch-images", "2",
            "--densify-from", "2", "--densify-every", "2", "--densify-until", "2", "--densify-grad-thr", "0", "--lr-quat", "0",
            "--eval-every", "0", "--log-every", "1", "--checkpoint-every", "2", "--sh-unlock-steps", "1", "3"]
SHELLS = ["shells", "--data", str(MIC), "--downscale", "4", "--hash-levels", "4", "--hash-log2-size", "10",
          "--hash-max-res", "64", "--sdf-hidden", "16", "--color-hidden", "16", "--geo-features", "7",
          "--occ-res", "16", "--occ-warmup", "1", "--occ-update-every", "2", "--march-steps", "64",
          "--max-samples", "16", "--rays-per-batch", "64", "--lr-warmup", "1", "--shell-finetune-from", "3",
          "--shell-finetune-params", "all", "--shell-grid-res", "32", "--shell-target-faces", "0",
          "--shell-probe-grid", "32", "--eval-every", "0", "--eval-views", "1", "--log-every", "1",
          "--checkpoint-every", "3", "--render-chunk", "4096"]


def _env(rank: int, world: int, store: Path) -> dict:
    env = dict(os.environ)
    env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), PYTHONPATH=str(ROOT),
               KERNELIGHT_DIST_INIT=f"file://{store}", KERNELIGHT_DIST_BACKEND="gloo",
               GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    return env


def _spawn(world: int, args: list[str], tmp: Path, tag: str) -> list[subprocess.Popen]:
    store = tmp / f"store-{tag}"
    store.unlink(missing_ok=True)
    procs = []
    for r in range(world):
        log = open(tmp / f"{tag}-rank{r}.log", "w")
        procs.append(subprocess.Popen([sys.executable, "-m", "engine.cli", "train", *args, "--no-progress"],
                                      cwd=ROOT, env=_env(r, world, store), stdout=log, stderr=subprocess.STDOUT))
    return procs


def _wait(procs, tmp: Path, tag: str, timeout: float = TIMEOUT) -> list[int]:
    t0 = time.monotonic()
    rcs = []
    for p in procs:
        try:
            rcs.append(p.wait(timeout=max(1.0, timeout - (time.monotonic() - t0))))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            logs = "\n".join((tmp / f"{tag}-rank{r}.log").read_text()[-2000:] for r in range(len(procs)))
            pytest.fail(f"{tag}: ranks still running after {timeout} s (a hang)\n{logs}")
    return rcs


def _run_ranks(world: int, args: list[str], tmp: Path, tag: str) -> None:
    rcs = _wait(_spawn(world, args, tmp, tag), tmp, tag)
    if any(rcs):
        logs = "\n".join((tmp / f"{tag}-rank{r}.log").read_text()[-3000:] for r in range(world))
        pytest.fail(f"{tag}: exit codes {rcs}\n{logs}")


def _cli(args: list[str]) -> int:
    from engine.cli import main

    return main(["train", *args, "--no-progress"])


def _run_dir(out: Path) -> Path:
    runs = sorted(p for p in out.glob("*/*/*") if (p / "config.toml").is_file())
    assert len(runs) == 1, runs
    return runs[0]


def _tensors(obj, prefix=""):
    if torch.is_tensor(obj):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            yield from _tensors(obj[k], f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}[{i}]")


def _assert_same_model(ck_a: Path, ck_b: Path, rtol=1e-4, atol=1e-5) -> int:
    a = torch.load(ck_a, weights_only=True)
    b = torch.load(ck_b, weights_only=True)
    assert a["step"] == b["step"] if "step" in a else True
    ta, tb = dict(_tensors(a["model"])), dict(_tensors(b["model"]))
    assert ta.keys() == tb.keys()
    n = 0
    for k in ta:
        x, y = ta[k], tb[k]
        assert x.shape == y.shape, f"{k}: {tuple(x.shape)} vs {tuple(y.shape)}"
        if x.dtype == torch.uint8 and k.endswith("gen"):
            assert torch.equal(x, y), f"{k}: generator states differ"
        elif x.is_floating_point():
            err = (x - y).abs().max().item() if x.numel() else 0.0
            assert torch.allclose(x, y, rtol=rtol, atol=atol), f"{k}: max abs difference {err:.3g}"
            n += x.numel()
        else:
            assert torch.equal(x, y), k
    return n


def _metrics(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def test_raygauss_two_ranks_match_one_rank_across_densify_and_resume(tmp_path, monkeypatch, capsys):
    """RayGauss, batch_images=2: 2 ranks x 1 image == 1 rank x 2 images after 4 steps with a
    densification at step 2 (clones/splits change the set); then the 2-rank checkpoint resumed by
    1 rank and the 1-rank checkpoint resumed by 2 ranks reach the same step-6 parameters.

    lr_quat 0: the initial Gaussians are isotropic, so their quaternion gradient is rounding noise
    that Adam (eps 1e-15) turns into +-lr steps in either run; densify_grad_thr 0: every Gaussian a
    ray reached is grown, so no choice sits on the threshold."""
    two = _spawn(2, RAYGAUSS + ["--max-steps", "4", "--output", str(tmp_path / "two")], tmp_path, "rg2")
    assert _cli(RAYGAUSS + ["--max-steps", "4", "--output", str(tmp_path / "one")]) == 0
    rcs = _wait(two, tmp_path, "rg2")
    assert rcs == [0, 0], (tmp_path / "rg2-rank0.log").read_text()[-3000:]
    one, two = _run_dir(tmp_path / "one"), _run_dir(tmp_path / "two")
    ck = "checkpoints/step-000004.pt"
    _assert_same_model(one / ck, two / ck)
    m2 = _metrics(two)
    dens = [r for r in m2 if "cloned" in r]
    assert dens and dens[0]["cloned"] + dens[0]["split"] > 0, m2     # the set changed at step 2
    assert all(r.get("world_size") == 2 for r in m2 if not r.get("final"))
    assert "world_size = 2" in (two / "config.toml").read_text()
    assert torch.load(two / ck, weights_only=True)["world_size"] == 2
    assert not list((tmp_path / "two").glob("*/*/*/checkpoints/*.tmp*"))
    # resume across world sizes: 2-rank run with 1 rank, 1-rank run with 2 ranks
    res2 = _spawn(2, ["--resume", str(one), "--max-steps", "6"], tmp_path, "rg-res2")
    assert _cli(["--resume", str(two), "--max-steps", "6"]) == 0
    assert _wait(res2, tmp_path, "rg-res2") == [0, 0], (tmp_path / "rg-res2-rank0.log").read_text()[-3000:]
    assert "written by 1 rank(s), resuming with 2" in (tmp_path / "rg-res2-rank0.log").read_text()
    _assert_same_model(one / "checkpoints/step-000006.pt", two / "checkpoints/step-000006.pt")
    # a world size that does not divide the checkpoint's batch: one line, before any rank waits
    capsys.readouterr()
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    msg = _one_line_error(capsys, ["--resume", str(one), "--max-steps", "8"])
    assert "step-000006.pt was written by 2 rank(s); 3 ranks do not divide the batch" in msg, msg


def test_shells_two_ranks_match_one_rank_across_extraction(tmp_path):
    """Shells, rays_per_batch=64: 2 ranks x 32 rays == 1 rank x 64 rays after 5 steps: volumetric
    steps with occupancy refreshes, the shells extraction after step 3, then in-band steps."""
    args = SHELLS + ["--max-steps", "5"]
    two = _spawn(2, args + ["--output", str(tmp_path / "two")], tmp_path, "sh2")
    assert _cli(args + ["--output", str(tmp_path / "one")]) == 0
    assert _wait(two, tmp_path, "sh2") == [0, 0], (tmp_path / "sh2-rank0.log").read_text()[-3000:]
    one, two = _run_dir(tmp_path / "one"), _run_dir(tmp_path / "two")
    ck = "checkpoints/step-000005.pt"
    # networks agree to ~1e-7; the hash table to ~3e-5: Adam divides each gradient by its own RMS,
    # so rounding-level differences in tiny table gradients become that fraction of a 1e-2 step
    _assert_same_model(one / ck, two / ck, atol=1e-4)
    st = torch.load(two / ck, weights_only=True)["model"]
    assert st["shells"] is not None       # the extraction happened (and was broadcast)
    assert any("shell_faces_outer" in r for r in _metrics(two))


def test_killed_rank_stops_the_other_with_one_line(tmp_path):
    """SIGKILL rank 1 mid-run: rank 0 stops with a one-line error naming the step, well within its
    timeout, instead of hanging in the next all-reduce."""
    args = SHELLS + ["--max-steps", "100000", "--checkpoint-every", "0", "--shell-finetune-from", "0",
                     "--dist-timeout", "60", "--output", str(tmp_path / "out")]
    procs = _spawn(2, args, tmp_path, "kill")
    t0 = time.monotonic()
    metrics = None
    while time.monotonic() - t0 < TIMEOUT:
        runs = list((tmp_path / "out").glob("*/*/*/metrics.jsonl"))
        if runs and len(runs[0].read_text().splitlines()) >= 2:
            metrics = runs[0]
            break
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.5)
    if metrics is None:
        for p in procs:
            p.kill()
        pytest.fail("the 2-rank run did not start training:\n" + (tmp_path / "kill-rank0.log").read_text()[-3000:])
    procs[1].send_signal(signal.SIGKILL)
    t_kill = time.monotonic()
    try:
        rc = procs[0].wait(timeout=90)
    except subprocess.TimeoutExpired:
        procs[0].kill()
        pytest.fail("rank 0 still running 90 s after rank 1 was killed")
    assert time.monotonic() - t_kill < 60
    procs[1].wait(timeout=10)
    log = (tmp_path / "kill-rank0.log").read_text()
    assert rc == 2, log[-3000:]
    lines = [ln for ln in log.splitlines() if "error" in ln]
    assert len(lines) == 1 and "lost contact with the other ranks" in lines[0] and "at step" in lines[0], log[-3000:]
    assert "Traceback" not in log


# ------------------------------------------------------------------------------------ bad input


def _one_line_error(capsys, args, monkeypatch=None) -> str:
    rc = _cli(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, (rc, err)
    return err[0]


def test_nproc_larger_than_the_cores(capsys, tmp_path):
    """More ranks than cores (gloo) or GPUs (NCCL, KERNELIGHT_ARCH=cuda on a GPU machine)."""
    from shaders import runtime

    gpu = runtime.check_device("auto").type == "cuda"
    have = torch.cuda.device_count() if gpu else (os.cpu_count() or 1)
    n = have + 1
    msg = _one_line_error(capsys, RAYGAUSS + ["--batch-images", str(2 * n), "--nproc", str(n),
                                              "--output", str(tmp_path)])
    assert f"--nproc {n}: this machine has {have} {'GPU(s)' if gpu else 'CPU core(s)'}" in msg
    assert not list(tmp_path.iterdir())


def test_world_size_must_divide_the_batch(capsys, tmp_path):
    msg = _one_line_error(capsys, RAYGAUSS + ["--batch-images", "1", "--nproc", "2", "--output", str(tmp_path)])
    assert "2 ranks do not divide the batch of method raygauss (batch_images = 1)" in msg
    assert "--batch-images" in msg
    msg = _one_line_error(capsys, SHELLS + ["--rays-per-batch", "63", "--nproc", "2", "--output", str(tmp_path)])
    assert "(rays_per_batch = 63)" in msg


def test_world_size_from_torchrun_must_divide_the_batch(capsys, tmp_path, monkeypatch):
    """A rank started by torchrun checks the batch before joining the group: every rank stops at
    once (none waits for the others)."""
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    msg = _one_line_error(capsys, RAYGAUSS + ["--output", str(tmp_path)])
    assert "3 ranks do not divide the batch" in msg


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_device_cuda_without_gpu(capsys, tmp_path):
    msg = _one_line_error(capsys, RAYGAUSS + ["--device", "cuda", "--output", str(tmp_path)])
    assert "--device cuda" in msg and ("CPU-only" in msg or "sees no GPU" in msg)
    if torch.version.cuda is None:
        assert "make setup TORCH=" in msg


def test_runtime_refuses_mismatched_torch_and_taichi(monkeypatch):
    """The refusal logic, with torch's CUDA state and the Taichi arch faked."""
    from shaders import runtime

    monkeypatch.setattr(runtime, "_state", {"initialized": True, "arch": "cpu"})
    # CUDA Taichi with a CPU-only torch: one line with the install hint
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(runtime.DeviceMismatch, match="CPU-only build; install the CUDA build of torch: make setup"):
        runtime._require_cuda_torch("KERNELIGHT_ARCH=cuda")
    # a CUDA torch with a GPU but Taichi already on the CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    with pytest.raises(runtime.DeviceMismatch, match="--device cuda but Taichi runs on cpu"):
        runtime.check_device("cuda")
    assert runtime.check_device("cpu").type == "cpu"
    # Taichi on CUDA and --device cpu: refused (every kernel call would copy)
    monkeypatch.setattr(runtime, "_state", {"initialized": True, "arch": "cuda"})
    with pytest.raises(runtime.DeviceMismatch, match="--device cpu but Taichi runs on CUDA"):
        runtime.check_device("cpu")
    assert runtime.check_device("auto").type == "cuda"
    # Taichi not started, KERNELIGHT_ARCH unset: the device decides the arch
    monkeypatch.setattr(runtime, "_state", {"initialized": False, "arch": None})
    monkeypatch.delenv("KERNELIGHT_ARCH", raising=False)
    assert runtime.check_device("cpu").type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(runtime.DeviceMismatch, match="sees no GPU"):
        runtime.check_device("cuda")
    with pytest.raises(runtime.DeviceMismatch, match="must be auto, cpu or cuda"):
        runtime.check_device("gpu")


def test_batch_mean_and_shard_in_one_process():
    """Without a process group: shard() is the whole batch and batch_mean() the plain mean."""
    from engine.methods.base import Method
    from engine.train.distributed import DistContext

    m = Method(Method.config_cls())
    v = torch.arange(6.0)
    assert m.shard(6) == slice(0, 6) and float(m.batch_mean(v)) == 2.5
    assert float(m.batch_mean(torch.zeros(0))) == 0.0
    ctx = DistContext(rank=1, world_size=4)
    assert [ctx.shard(10)] == [slice(2, 5)]
    assert sum((DistContext(rank=r, world_size=3).shard(256).stop - DistContext(rank=r, world_size=3).shard(256).start)
               for r in range(3)) == 256


def test_cpu_only_method_on_a_gpu_machine(monkeypatch, tmp_path):
    """A method whose ``devices`` lack cuda (here shells declared CPU-only by a subclass): --device
    cuda is refused in one line, auto keeps its model on the CPU with a note (the device resolution
    is faked: no GPU here)."""
    from engine.errors import ConfigError
    from engine.methods import get_method
    from engine.train import distributed
    from engine.train.trainer import Trainer, TrainSettings

    class CpuOnlyShells(get_method("shells")):
        devices = ("cpu",)

    assert "cuda" in get_method("raygauss").devices and "cuda" not in CpuOnlyShells.devices
    monkeypatch.setattr(distributed, "resolve_device", lambda *a, **k: torch.device("cuda"))
    settings = TrainSettings(method=CpuOnlyShells, data=MIC, downscale=4, output=tmp_path,
                             options={"max_steps": 1}, progress=False, quiet=True, device="cuda")
    with pytest.raises(ConfigError, match="--device cuda: method shells keeps its model on cpu"):
        Trainer(settings)
    settings.device = "auto"
    tr = Trainer(settings)
    assert tr.device.type == "cpu" and any("keeps its model on the CPU" in n for n in tr.notes)
    assert all(p.device.type == "cpu" for p in tr.method.field.parameters())
