"""GVGEN's Candidate Pool Strategy: 3DGS densification on a fixed set of N^3 slots.

A :class:`~engine.methods.gvolume.model.GaussianVolume` holds one slot per grid point (its
*anchor*); a slot is either active (a Gaussian at ``anchor + offset``) or free (its anchor is in the
*pool*). The strategy never changes a tensor's shape, so the optimizer keeps its parameters; it edits
rows and zeroes their Adam state. The trainer calls::

    strategy.after_backward(volume, view)              # every step: screen-space gradient statistics
    changes = strategy.step(volume, optimizer, step)   # every step, after the optimizer step

Rules (REFERENCES.md, GVGEN / 3DGS), every ``densify_every`` steps in ``[densify_from, densify_until)``:

* active Gaussians whose mean screen-space (NDC) position gradient reaches ``densify_grad_thr`` are
  cloned (max scale <= ``clone_scale_frac`` x box half-diagonal: one child at the parent's position)
  or split (two children sampled from the parent Gaussian, scales / ``split_scale_div``; the parent's
  anchor returns to the pool first). Children copy the parent's other attributes.
* each child takes the **nearest free anchor within** ``pool_radius_cells`` **cells** of its
  position (distances in cell units per axis), its offset becoming ``position - anchor``; children
  are served strongest parent gradient first: a child whose nearest free anchor went to a stronger
  child tries its next nearest. A child with no free anchor in range is dropped. A split parent none
  of whose children found an anchor stays as it was when its anchor is still free.
* then active slots with opacity below ``prune_opacity`` are freed (their anchors join the pool).
* at ``densify_until`` every free anchor is re-activated (offset 0, opacity ``reactivate_opacity``,
  grey, isotropic initial scale): from then on exactly N^3 Gaussians are active and stay so.

The slot count is N^3 at every moment (active + pool); :func:`nearest_free_anchors` is the matching.
"""
from __future__ import annotations

import math

import torch

from shaders.rotations import quat_to_rotmat

from .model import PARAMS


def nearest_free_anchors(pos: torch.Tensor, free: torch.Tensor, n: int, radius: float) -> torch.Tensor:
    """Assign children to free anchors of an ``n^3`` grid.

    Args:
        pos: (C, 3) child positions in grid coordinates (anchor ``(i, j, k)`` sits at ``(i, j, k)``;
            slot index ``(i n + j) n + k``), in priority order (row 0 is served first).
        free: (n^3,) bool, the pool.
        radius: largest child-anchor distance, in cells.
    Returns:
        (C,) long on the CPU (the greedy matching runs there, once per densification round): the
        slot each child takes, or -1. Each child gets its nearest free anchor within
        ``radius``; when several want the same anchor the earliest row gets it and the others try
        their next nearest (ties in distance: the lower slot index).
    """
    C = pos.shape[0]
    out = torch.full((C,), -1, dtype=torch.long, device="cpu")
    if C == 0:
        return out
    pos = pos.detach().float().cpu()
    free = free.detach().cpu().clone()
    r = int(math.ceil(radius))
    d = torch.arange(-r, r + 1, device="cpu")
    offs = torch.stack(torch.meshgrid(d, d, d, indexing="ij"), -1).reshape(-1, 3)      # (M, 3)
    cand = pos.round().long()[:, None, :] + offs[None]                                 # (C, M, 3)
    inside = ((cand >= 0) & (cand < n)).all(-1)
    dist = (cand.float() - pos[:, None, :]).norm(dim=-1)
    ok = inside & (dist <= radius + 1e-6)
    slot = (cand[..., 0] * n + cand[..., 1]) * n + cand[..., 2]
    slot = torch.where(ok, slot, torch.zeros_like(slot))
    key = torch.where(ok, dist, torch.full_like(dist, float("inf")))
    key, order = torch.sort(key + slot.float() * 1e-9, dim=1)   # nearest first, ties by slot index
    slot, ok = slot.gather(1, order), ok.gather(1, order)
    pending = torch.ones(C, dtype=torch.bool, device="cpu")
    rows = torch.arange(C, device="cpu")
    while True:
        avail = ok & free[slot] & pending[:, None]
        has = avail.any(1)
        if not bool(has.any()):
            break
        kids = rows[has]
        want = slot[kids, avail[kids].float().argmax(1)]
        winner = torch.full((free.shape[0],), C, dtype=torch.long, device="cpu")
        winner.scatter_reduce_(0, want, kids, reduce="amin")
        won = winner[want] == kids
        out[kids[won]] = want[won]
        free[want[won]] = False
        pending[kids[won]] = False
    return out


def zero_adam_rows(optimizer, params: dict, rows: torch.Tensor) -> None:
    """Forget the Adam moments of ``rows`` (slots that now hold another Gaussian or none)."""
    if optimizer is None or rows.numel() == 0:
        return
    ids = {id(p) for p in params.values()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) in ids and p in optimizer.state:
                st = optimizer.state[p]
                for key in ("exp_avg", "exp_avg_sq"):
                    if key in st:
                        st[key][rows.to(st[key].device)] = 0


class CandidatePoolStrategy:
    """Clone / split / prune on a fixed set of N^3 slots (see the module docstring)."""

    def __init__(self, cfg, extent: float, seed: int = 0):
        self.cfg = cfg
        self.extent = float(extent)
        self.grad_accum = None
        self.count = None
        self.ended = False
        self.gen = torch.Generator().manual_seed(seed + 4321)

    # ------------------------------------------------------------------ statistics
    def _reset(self, n: int, device) -> None:
        self.grad_accum = torch.zeros(n, device=device)
        self.count = torch.zeros(n, device=device)

    @torch.no_grad()
    def after_backward(self, vol, view) -> None:
        """Accumulate each active slot's screen-space position gradient for the view just rendered.

        ``view = (c2w (4, 4), fx, fy, width, height)``. The NDC gradient 3DGS thresholds is
        ``dL/d(u, v) x (W/2, H/2)``; with ``u = fx x / z + cx`` in camera axes that is the
        camera-frame position gradient times ``z W / (2 fx)`` (resp. ``z H / (2 fy)``), the
        covariance's share of the mean's gradient left out."""
        g = vol.offset.grad
        if g is None or view is None:
            return
        if self.grad_accum is None or self.grad_accum.shape[0] != g.shape[0]:
            self._reset(g.shape[0], g.device)
        c2w, fx, fy, W, H = view
        R, t = c2w[:3, :3].to(g), c2w[:3, 3].to(g)
        z = ((vol.means().detach() - t) @ R)[:, 2]
        gc = g.detach() @ R
        n = torch.sqrt((gc[:, 0] * z * W / (2 * fx)) ** 2 + (gc[:, 1] * z * H / (2 * fy)) ** 2)
        seen = (n > 0) & vol.active
        self.grad_accum += torch.where(seen, n, torch.zeros_like(n))
        self.count += seen.float()

    def state_dict(self) -> dict:
        return {"grad_accum": self.grad_accum, "count": self.count, "ended": self.ended,
                "gen": self.gen.get_state()}

    def load_state_dict(self, st: dict) -> None:
        self.grad_accum, self.count = st.get("grad_accum"), st.get("count")
        self.ended = bool(st.get("ended", False))
        if st.get("gen") is not None:
            self.gen.set_state(st["gen"])

    # ------------------------------------------------------------------ the schedule
    @torch.no_grad()
    def step(self, vol, optimizer, step: int, progress: float | None = None) -> dict | None:
        """Structural changes due at ``step`` (0-based, after its optimizer step). ``progress`` in
        [0, 1] (training progress by steps or time budget) ends densification at the same fraction
        of ``max_steps`` when a time budget runs out before the steps do."""
        c = self.cfg
        s = step + 1          # steps done
        if progress is not None:
            s = max(s, int(progress * c.max_steps))
        if self.ended:
            return None
        if s >= c.densify_until or (progress is not None and progress >= 1.0):
            n = self.finish(vol, optimizer)
            # (cloned/split/pruned keys: the trainer logs every step whose result has them)
            return {"cloned": 0, "split": 0, "pruned": 0, "reactivated": n, "active": vol.num_active, "pool": 0}
        res = None
        if s >= c.densify_from and (step + 1) % c.densify_every == 0:
            res = self.densify_and_prune(vol, optimizer)
        if c.opacity_reset_every and (step + 1) % c.opacity_reset_every == 0:
            cap = math.log(0.01 / 0.99)
            vol.opacity.data.clamp_(max=cap)
            zero_adam_rows(optimizer, {"opacity": vol.opacity}, torch.arange(vol.num_slots, device=vol.opacity.device))
            res = {"cloned": 0, "split": 0, "pruned": 0, **(res or {}), "opacity_reset": True,
                   "active": vol.num_active, "pool": vol.num_slots - vol.num_active}
        return res

    def densify_and_prune(self, vol, optimizer) -> dict:
        """One densify + prune round (module docstring); returns its counts."""
        c = self.cfg
        S = vol.num_slots
        act = vol.active.clone()
        if self.grad_accum is None or self.grad_accum.shape[0] != S:
            self._reset(S, vol.offset.device)
        avg = self.grad_accum / self.count.clamp_min(1)
        cand = act & (self.count > 0) & (avg >= c.densify_grad_thr)
        max_scale = torch.exp(vol.log_scales.detach()).amax(1)
        clone = cand & (max_scale <= c.clone_scale_frac * self.extent)
        split = cand & ~clone
        stats = self.grow(vol, optimizer, torch.nonzero(clone)[:, 0], torch.nonzero(split)[:, 0], avg)
        op = torch.sigmoid(vol.opacity.detach())
        prune = vol.active & (op < c.prune_opacity)
        if bool(prune.all()):
            prune[:] = False              # never empty the volume; leave it to the loss
        stats["pruned"] = int(prune.sum())
        self.free_slots(vol, optimizer, torch.nonzero(prune)[:, 0])
        stats["active"] = vol.num_active
        stats["pool"] = int((~vol.active).sum())
        self._reset(S, vol.offset.device)
        return stats

    def grow(self, vol, optimizer, ci: torch.Tensor, si: torch.Tensor, priority: torch.Tensor) -> dict:
        """Clone slots ``ci`` and split slots ``si`` into free anchors (module docstring)."""
        c = self.cfg
        dev = vol.offset.device
        means = vol.means().detach()
        # the children: clones at their parent, split pairs sampled from the parent Gaussian
        scales = torch.exp(vol.log_scales.detach()[si])
        R = quat_to_rotmat(vol.quats.detach()[si])
        # drawn on the CPU generator (the same children on every device), then moved: once per round
        z = torch.randn(2, si.shape[0], 3, generator=self.gen, device="cpu").to(scales) * scales
        split_pos = means[si][None] + (R[None] @ z[..., None])[..., 0]                 # (2, k, 3)
        parent = torch.cat([ci, si, si])
        pos = torch.cat([means[ci], split_pos[0], split_pos[1]])
        is_split = torch.cat([torch.zeros(ci.shape[0], dtype=torch.bool, device=dev),
                              torch.ones(2 * si.shape[0], dtype=torch.bool, device=dev)])
        # serve children strongest parent gradient first (a split pair together)
        order = torch.argsort(-priority[parent], stable=True)
        parent, pos, is_split = parent[order], pos[order], is_split[order]
        # split parents give their anchors back to the pool; keep their rows to restore
        saved = {k: getattr(vol, k).detach()[si].clone() for k in PARAMS}
        vol.active[si] = False
        slots = nearest_free_anchors(vol.to_grid(pos), ~vol.active, vol.grid_size, c.pool_radius_cells).to(dev)
        placed = slots >= 0
        if c.split_needs_both and si.numel():
            placed = _undo_lone_split_children(parent, slots, placed, is_split, vol.num_slots)
        src, dst = parent[placed], slots[placed]
        dpos = pos[placed]
        new = {k: getattr(vol, k).detach()[src].clone() for k in PARAMS}
        new["offset"] = dpos - vol.anchors[dst]
        shrink = math.log(c.split_scale_div)
        new["log_scales"] = torch.where(is_split[placed][:, None], new["log_scales"] - shrink, new["log_scales"])
        # split parents with no child placed whose anchor is still free stay as they were
        got = torch.zeros(vol.num_slots, dtype=torch.bool, device=dev)
        got[src[is_split[placed]]] = True
        taken = torch.zeros(vol.num_slots, dtype=torch.bool, device=dev)
        taken[dst] = True
        restore = ~got[si] & ~taken[si]
        for k in PARAMS:
            getattr(vol, k).data[dst] = new[k]
        vol.active[dst] = True
        zero_adam_rows(optimizer, vol.param_dict(), dst)
        keep = si[restore]
        for k in PARAMS:
            getattr(vol, k).data[keep] = saved[k][restore]
        vol.active[keep] = True
        lost = si[~restore & ~taken[si]]      # split parents whose anchors nobody took: now free
        self.clear_rows(vol, optimizer, lost)
        n_split_kids = int(is_split[placed].sum())
        return {"cloned": int((~is_split[placed]).sum()), "split": int(si.shape[0] - int(restore.sum())),
                "split_children": n_split_kids, "dropped": int((~placed).sum()),
                "pool": int((~vol.active).sum())}

    def free_slots(self, vol, optimizer, rows: torch.Tensor) -> None:
        """Deactivate ``rows``: their anchors join the pool."""
        vol.active[rows] = False
        self.clear_rows(vol, optimizer, rows)

    @staticmethod
    def clear_rows(vol, optimizer, rows: torch.Tensor) -> None:
        if rows.numel() == 0:
            return
        vol.reset_rows(rows)
        zero_adam_rows(optimizer, vol.param_dict(), rows)

    def finish(self, vol, optimizer) -> int:
        """End of densification: every free anchor is re-activated (offset 0, opacity
        ``reactivate_opacity``); from now on all N^3 slots are active. Returns how many."""
        rows = torch.nonzero(~vol.active)[:, 0]
        vol.reset_rows(rows, opacity=self.cfg.reactivate_opacity)
        zero_adam_rows(optimizer, vol.param_dict(), rows)
        vol.active[rows] = True
        self.ended = True
        return int(rows.numel())


def _undo_lone_split_children(parent, slots, placed, is_split, S: int) -> torch.Tensor:
    """``split_needs_both``: a split parent only one of whose two children found an anchor keeps
    its place instead (the child is not placed) when its own anchor is then still free."""
    placed, dev = placed.clone(), parent.device
    cnt = torch.zeros(S, dtype=torch.long, device=dev).index_add_(
        0, parent[placed & is_split], torch.ones(int((placed & is_split).sum()), dtype=torch.long, device=dev))
    lone = placed & is_split & (cnt[parent] == 1)
    undo = lone.clone()
    for _ in range(8):           # a kept child may sit on another parent's anchor: settle
        taken = torch.zeros(S, dtype=torch.bool, device=dev)
        taken[slots[placed & ~undo]] = True
        new = undo & ~taken[parent]
        if torch.equal(new, undo):
            break
        undo = new
    return placed & ~undo

