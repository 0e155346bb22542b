"""Where a GVGEN generator's training-caption gap comes from: stage 1 (the GDF) or stage 2 (the attributes).

For training objects of a ``kernelight gvgen dataset`` set, renders K test views of

* the object's fitted GaussianVolume (what the benchmark's gap is measured against),
* stage 2 fed the object's *fitted* GDF (``gdf_opaque``): stage 2's own error,
* full generations (stage 1 + stage 2) at each ``--guidance``, with the mean absolute error of the generated
  GDF against the fitted one (normalised units, [-1, 1]),

and writes per-object PSNRs and their means as JSON::

    python tools/diag_gvgen_gap.py --data primitives --max-train 14 --out /tmp/gap.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a GVGEN training set (kernelight gvgen dataset)")
    ap.add_argument("--model", default=None, help="gvgen run / checkpoint (default: the shipped generator)")
    ap.add_argument("--views", type=int, default=4, help="K test views per object")
    ap.add_argument("--max-train", type=int, default=14, help="at most this many training objects (0: all)")
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="JSON path (default: print only)")
    args = ap.parse_args(argv)

    import torch

    from bench_gvgen import load_object, quality, render_grid
    from engine.data.gvgen import complete_objects, read_manifest
    from engine.generate import load_generator
    from engine.io.atomic import atomic_write_text
    from engine.methods.gvgen import attributes as attr
    from engine.methods.gvgen.dataset import read_volume
    from engine.methods.gvgen.diffusion import normalize_gdf

    torch.set_num_threads(args.threads)
    root = Path(args.data)
    gen = load_generator(args.model)
    done, _ = complete_objects(root, read_manifest(root))
    train = [o for o in done if o.get("split", "train") == "train"]
    if args.max_train:
        train = train[:: max(1, len(train) // args.max_train)][: args.max_train]
    rows = []
    for o in train:
        cams, idx, gt, grid_fit = load_object(root, o, args.views)
        cap = o.get("caption") or o["captions"][0]
        vol = read_volume(root / "objects" / o["id"] / "volume.pt")
        key = "gdf_opaque" if "gdf_opaque" in vol else "gdf"
        gdf = normalize_gdf(vol[key].float(), gen.side, gen.cfg.gdf_clamp)[None, None]
        with torch.no_grad():
            cond = gen.encode([cap])
            raw = gen.stage2.eval()(attr.stage2_input(gdf), cond["pooled"], cond["tokens"], cond["mask"])
            grid_t = attr.decode(raw, gen.cell, gen.cfg.max_offset_cells, gen.cfg.init_scale_cells)[0]
        r = {"id": o["id"], "fitted": quality(render_grid(gen, grid_fit, cams, idx), gt)[0],
             "stage2_fitted_gdf": quality(render_grid(gen, grid_t, cams, idx), gt)[0]}
        for g in args.guidance:
            x = gen.generate(cap, seed=args.seed, guidance=g)
            r[f"generated_g{g:g}"] = quality(render_grid(gen, x["grid"], cams, idx), gt)[0]
            gd = normalize_gdf(x["gdf"], gen.side, gen.cfg.gdf_clamp)
            r[f"gdf_abs_error_g{g:g}"] = float((gd - gdf[0, 0]).abs().mean())
        rows.append({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
        print(rows[-1], flush=True)
    keys = [k for k in rows[0] if k != "id"] if rows else []
    means = {k: round(sum(r[k] for r in rows) / len(rows), 4) for k in keys}
    print(json.dumps(means, indent=1))
    if args.out:
        doc = {"data": str(root), "model_step": gen.step, "views": args.views, "seed": args.seed, "means": means,
               "objects": rows}
        atomic_write_text(Path(args.out), json.dumps(doc, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
