"""The `make demo` script: train RayGauss on the bundled CC-0 mic scene, then render and evaluate.

Runs on 2 CPU cores in about 10 minutes: training is bounded by a wall-clock budget
(``--minutes``, default 7) and a step cap; then test renders, a turntable video and eval.json are
written, and their locations are printed.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=7.0, help="training wall-clock budget (default 7)")
    ap.add_argument("--max-steps", type=int, default=3000)
    ap.add_argument("--output", default=str(REPO / "outputs"))
    ap.add_argument("--eval-views", type=int, default=50, help="test views to evaluate (of 200)")
    args = ap.parse_args(argv)

    from engine.cli import main as cli

    t0 = time.time()
    scene = REPO / "scenes" / "mic.toml"
    from engine.train.trainer import TrainSettings, train
    from engine.config import load_scene

    from engine.methods import get_method, get_preset

    sc = load_scene(scene)
    base = get_preset(sc.method, sc.preset) if sc.preset else {}
    settings = TrainSettings(method=get_method(sc.method), data=sc.data, output=Path(args.output), scene_name=sc.name,
                             background=sc.background,
                             options={**base, **sc.method_options, "max_steps": args.max_steps,
                                      "time_budget_s": args.minutes * 60.0})
    run_dir = train(settings)
    rc = cli(["render", str(run_dir), "--max-views", "8", "--depth", "--alpha", "--frames", "48",
              "--video", "turntable.mp4"])
    if rc:
        return rc
    rc = cli(["eval", str(run_dir), "--max-views", str(args.eval_views)])
    if rc:
        return rc
    print()
    print(f"demo finished in {(time.time() - t0) / 60:.1f} min. Outputs:")
    print(f"  run folder     {run_dir}")
    print(f"  test renders   {run_dir / 'renders' / 'test'}")
    print(f"  turntable      {run_dir / 'renders' / 'turntable.mp4'}")
    print(f"  metrics        {run_dir / 'eval.json'}  and  {run_dir / 'metrics.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
