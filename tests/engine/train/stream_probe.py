"""A minimal trainable method for the streaming tests: a colour per ray direction (a linear map of
the direction, through a sigmoid). Cheap to train, so a test measures the trainer's data path
(dataset loading, the ray sampler's working sets, prefetching, evaluation), not a renderer.

``python tests/engine/train/stream_probe.py DATA CACHE MODE STEPS`` trains it (MODE ``rays`` or
``image``) and prints one JSON line: the peak RSS after imports and after training (MB), the
image-cache statistics and the final loss.
"""
from __future__ import annotations

import json
import resource
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.methods.base import Method, MethodConfig, option


@dataclass
class ProbeConfig(MethodConfig):
    rays_per_batch: int = option(512, "rays per step")
    lr: float = option(0.05, "Adam learning rate")


class ProbeRays(Method):
    name = "probe_rays"
    config_cls = ProbeConfig
    batch_mode = "rays"

    def __init__(self, cfg, lin: torch.nn.Linear | None = None):
        super().__init__(cfg)
        self.lin = lin or torch.nn.Linear(3, 3)

    @classmethod
    def create(cls, cfg, dataset):
        torch.manual_seed(cfg.seed)
        return cls(cfg)

    def make_optimizer(self):
        return torch.optim.Adam([{"name": "lin", "params": list(self.lin.parameters()), "lr": self.cfg.lr}])

    def _rgb(self, d):
        return torch.sigmoid(self.lin(d))

    def train_step_rays(self, step, batch, background):
        pred = self._rgb(batch.directions)
        mse = ((pred - batch.rgb) ** 2).mean()
        return mse, {"psnr": float(-10 * torch.log10(mse.detach().clamp_min(1e-12)))}

    def train_step(self, step, image, cameras, index, background):
        _, d = cameras.generate_rays(index)
        pred = self._rgb(d)
        mse = ((pred - image) ** 2).mean()
        return mse, {"psnr": float(-10 * torch.log10(mse.detach().clamp_min(1e-12)))}, pred

    @torch.no_grad()
    def render(self, cameras, index, background=None):
        _, d = cameras.generate_rays(index)
        rgb = self._rgb(d)
        one = torch.ones(rgb.shape[:2])
        return {"rgb": rgb, "alpha": one, "depth": one, "depth_sum": one, "cost": one}

    @property
    def num_primitives(self):
        return 1

    def bounds(self):
        return torch.tensor([[-1.0] * 3, [1.0] * 3])

    def state_dict(self):
        return {"lin": {k: v.detach().clone() for k, v in self.lin.state_dict().items()}}

    @classmethod
    def from_state_dict(cls, cfg, st):
        m = cls(cfg)
        m.lin.load_state_dict(st["lin"])
        return m


class ProbeImage(ProbeRays):
    name = "probe_image"
    batch_mode = "image"


def main(data, cache, mode, steps, out):
    from engine.train.trainer import TrainSettings, Trainer

    import engine.data.stream  # noqa: F401 - everything the run imports, before the baseline
    from engine.train import distributed

    distributed.resolve_device("cpu", start=True)     # Taichi started: its memory is in the baseline
    rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # noqa: E731  (KiB on Linux)
    base = rss()
    st = TrainSettings(method=ProbeRays if mode == "rays" else ProbeImage, data=Path(data), output=Path(out),
                       options={"max_steps": int(steps), "eval_every": 0, "checkpoint_every": 0, "log_every": 10},
                       image_cache=cache, progress=False, quiet=True)
    tr = Trainer(st)
    tr.train()
    c = tr.dataset.image_cache
    print(json.dumps({"rss_base_mb": base, "rss_peak_mb": rss(), "meta": tr.dataset.metadata.get("image_cache"),
                      "cache": None if c is None else c.stats(), "notes": tr.notes,
                      "working_set": None if tr.sampler is None else tr.sampler.working_set}))


if __name__ == "__main__":
    main(*sys.argv[1:6])
