"""RayGauss: differentiable ray casting of volumetric Gaussians, slab by slab through a BVH.

Public API: :class:`RayGaussConfig`, :func:`build_M`, :func:`gaussian_aabbs`,
:func:`render_rays`. The pure-torch twin is :func:`shaders.raygauss_ref.render_rays_reference`;
both implement exactly the math below (tests hold them within 1e-5 in float32).

Gaussians
---------
``means (N,3)``, ``log_scale (N,3)``, ``quat (N,4)`` (wxyz, normalised on use), ``response (N,)``
and ``rgb (N,3)``. Shape: ``phi_l(x) = exp(-0.5 ||M_l (x - mu_l)||^2)`` with
``M = (R S^-1)^T = S^-1 R^T`` (:func:`build_M`). ``rgb`` is the per-Gaussian colour for ONE view
(SH / SG lobes are evaluated by the caller in torch, per view): every ray of one call shares that
colour table. ``response`` is, by ``cfg.mode``:

* ``"density"`` (RayGauss): ``s >= 0`` (not activated; a Gaussian with ``s < sigma_thr`` never
  contributes);
* ``"opacity"`` (3DGS ``.ply``): ``o`` in [0, 1], already activated (sigmoid of the ply logit).

Rays
----
``rays_o (R,3)``, unit ``rays_d (R,3)``, clipped to ``[t_near, t_far]`` (the caller passes the
scene-box intersection). With ``S = samples_per_slab``, slab ``j`` covers
``[t_near + j S dt, t_near + (j+1) S dt)``; its samples are ``t = t_near + (j S + k + 0.5) dt``,
``k = 0..S-1``, only those ``< t_far``. For each slab the Gaussians whose (float32, conservative)
AABB meets the slab segment ``[t_near + j S dt, min(t_near + (j+1) S dt, t_far)]`` and whose
(padded) truncation ellipsoid the ray reaches within it are collected (the ellipsoid clip of
:mod:`shaders.raygauss_fwd`, skipped where a group of slabs overflows the cap; at most ``cap``; slabs with more hits are counted in ``n_capped`` and only ``cap`` of them are
used -- results then depend on the collect order and differ from the reference).

Density mode
    Gaussian l contributes at a sample x iff it was collected and ``g_l = s_l phi_l(x) >=
    sigma_thr`` (truncation rule; the AABBs contain the whole truncation ellipsoid, so results do
    not depend on box looseness or on the BVH). ``sigma(x) = sum g_l``, ``c(x) = sum c_l g_l /
    sigma(x)`` (0 if sigma = 0), ``alpha = 1 - exp(-sigma dt)``; front-to-back compositing
    ``C += T alpha c``, ``D += T alpha t``, ``T *= 1 - alpha``; the ray stops after the first
    sample where ``T < t_stop``. ``n_evals`` = number of (sample, collected Gaussian) pairs over
    the composited samples.

Opacity mode
    With ``x_o = o + t_near d``, ``a = M d``, ``b = M (x_o - mu)``, the response along the ray is
    largest at ``u* = -(a.b)/(a.a)``, i.e. ``t* = t_near + u*``; ``alpha_raw = o_l
    exp(-0.5 ||b + u* a||^2)``. A Gaussian is composited iff ``alpha_raw >= alpha_min`` and
    ``t*`` lies in ``[t_near, t_far)``, once, in the slab containing ``t*``, with ``alpha =
    min(alpha_raw, 0.99)``; inside a slab in increasing ``(t*, index)`` order (hence globally
    sorted by ``t*``). Compositing as above with ``t*`` for the depth; stop after the Gaussian
    that makes ``T < t_stop``. ``n_evals`` = collected Gaussians over the slabs processed.

Outputs per ray: ``rgb = C + T_final * background`` (black if no background), ``alpha = 1 -
T_final``, ``depth = D = sum T_i alpha_i t_i`` (not normalised), ``n_evals`` (int32) and the
scalar ``n_capped``. ``rgb``, ``alpha`` and ``depth`` are differentiable w.r.t. ``means``,
``log_scale``, ``quat``, ``response``, ``rgb`` (and ``background``). Truncation and the alpha_min
cut make the outputs piecewise smooth: gradients are those of the current piece.

Implementation: one thread per ray (rays processed in chunks sharing a reused ``hits`` scratch
buffer); the BVH is queried once per group of slabs and each slab takes the group's hits whose
box interval overlaps it -- the same set as a per-slab query (see ``shaders.raygauss_fwd``,
"Grouped collect"). Gradients to ``means``, ``M``, ``response`` and ``rgb`` come from the
hand-written backward kernel (:mod:`shaders.raygauss_bwd`); those to ``log_scale`` and ``quat``
from torch autograd through :func:`build_M`. Float32 and float64 are supported (all inputs of
one call share the dtype).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from shaders import runtime
from shaders.rotations import quat_to_rotmat  # noqa: F401 (re-exported: shaders.raygauss.quat_to_rotmat)

__all__ = ["RayGaussConfig", "build_M", "gaussian_aabbs", "render_rays", "MODES"]

MODES = ("density", "opacity")

#: Entries (rows x cap) of the per-ray hit scratch buffer, by arch; rays are processed in chunks
#: of ``SCRATCH_ENTRIES // cap`` rows (each entry holds 2 int32 ids + 3 reals: 40 MB at 2^21 in
#: float32). A GPU needs many rays per launch to fill up, a CPU only a few per thread.
SCRATCH_ENTRIES = {"cpu": 1 << 21, "cuda": 1 << 24, "vulkan": 1 << 23}

# Conservative padding of the AABBs (relative to the half extent, plus one float32 ulp outward)
# so that every point the float32/float64 kernels judge inside the truncation ellipsoid is in its
# box.
_BOX_PAD_REL = 1e-4


@dataclass
class RayGaussConfig:
    """Ray-casting settings; defaults are the RayGauss paper's (REFERENCES.md)."""

    dt: float = 0.0025              # spacing of the samples along a ray (scene units)
    samples_per_slab: int = 8       # S: samples per slab (BUFFER_SIZE in the paper's code)
    cap: int = 1024                 # most Gaussians collected per slab
    sigma_thr: float = 0.1          # density truncation: g = s phi >= sigma_thr
    alpha_min: float = 1 / 255      # opacity mode: Gaussians with o phi_max < alpha_min skipped
    t_stop: float = 0.003           # stop once the transmittance falls under this
    mode: str = "density"           # "density" (RayGauss) or "opacity" (3DGS .ply)

    def validate(self) -> "RayGaussConfig":
        """Raise ValueError naming the bad field; return self."""
        if self.mode not in MODES:
            raise ValueError(f"RayGaussConfig.mode={self.mode!r} is not one of {MODES}")
        if not (self.dt > 0 and math.isfinite(self.dt)):
            raise ValueError(f"RayGaussConfig.dt={self.dt!r} must be a positive finite number")
        sps = self.samples_per_slab
        if int(sps) != sps or not 1 <= sps <= 64:
            raise ValueError(
                f"RayGaussConfig.samples_per_slab={sps!r} must be an int in 1..64")
        if int(self.cap) != self.cap or self.cap < 1:
            raise ValueError(f"RayGaussConfig.cap={self.cap!r} must be a positive int")
        if not self.sigma_thr > 0:
            raise ValueError(f"RayGaussConfig.sigma_thr={self.sigma_thr!r} must be > 0")
        if not 0 < self.alpha_min < 1:
            raise ValueError(f"RayGaussConfig.alpha_min={self.alpha_min!r} must be in (0, 1)")
        if not 0 <= self.t_stop < 1:
            raise ValueError(f"RayGaussConfig.t_stop={self.t_stop!r} must be in [0, 1)")
        return self


# --------------------------------------------------------------------------- torch helpers


def build_M(log_scale: torch.Tensor, quat: torch.Tensor) -> torch.Tensor:
    """Shape matrices ``M = (R S^-1)^T = S^-1 R^T`` (N,3,3), differentiable.

    ``log_scale (N,3)``, ``quat (N,4)`` wxyz (normalised here). ``M (x - mu)`` are the
    Gaussian's local coordinates divided by its scales, so ``phi = exp(-0.5 ||M (x - mu)||^2)``.
    """
    R = quat_to_rotmat(quat)
    return R.transpose(-1, -2) * torch.exp(-log_scale).unsqueeze(-1)


@torch.no_grad()
def gaussian_aabbs(means, log_scale, quat, response, mode: str = "density",
                   cfg: RayGaussConfig | None = None):
    """Conservative float32 boxes ``lo, hi (N,3)`` of the Gaussians' truncation ellipsoids.

    Density mode: the ellipsoid ``s phi >= sigma_thr``, radius ``scale * sqrt(2 ln(s /
    sigma_thr))`` along each local axis; opacity mode: ``o phi >= alpha_min``. The box is the tight
    AABB of the rotated ellipsoid (half extent ``sqrt(sum_k (R_ik r_k)^2)``), padded by a relative
    1e-4 and rounded outward to float32. A Gaussian whose response is under the threshold gets
    an empty box (``lo > hi`` by one ulp around its mean) that is never hit.
    """
    cfg = cfg or RayGaussConfig()
    if mode not in MODES:
        raise ValueError(f"gaussian_aabbs: mode={mode!r} is not one of {MODES}")
    thr = cfg.sigma_thr if mode == "density" else cfg.alpha_min
    means = means.detach().double()
    resp = response.detach().double().reshape(-1)
    R = quat_to_rotmat(quat.detach().double())
    scale = torch.exp(log_scale.detach().double())
    valid = resp >= thr
    k = torch.sqrt(2.0 * torch.log(torch.where(valid, resp, torch.full_like(resp, thr)) / thr))
    radii = scale * k.unsqueeze(-1)                                # (N,3) along local axes
    half = torch.sqrt(((R * radii.unsqueeze(-2)) ** 2).sum(-1))    # (N,3) world half extents
    half = half * (1 + _BOX_PAD_REL)
    inf = torch.tensor(float("inf"), dtype=torch.float32, device=means.device)
    lo = torch.nextafter((means - half).float(), -inf)
    hi = torch.nextafter((means + half).float(), inf)
    m32 = means.float()
    empty = ~valid
    if bool(empty.any()):
        lo[empty] = torch.nextafter(m32[empty], inf)
        hi[empty] = torch.nextafter(m32[empty], -inf)
    return lo.contiguous(), hi.contiguous()    # on the caller's device, like means


# --------------------------------------------------------------------------- kernels glue

_scratch: dict = {}


def _scratch_rows(rows: int, cap: int, dtype: torch.dtype, dev):
    """Reused scratch (grown on demand, never shrunk): hit ids (rows, 2 cap) int32 and keys
    (rows, 3 cap) of ``dtype`` (layout: ``shaders.raygauss_fwd``, "Grouped collect")."""
    key = (str(dev), dtype)
    cur = _scratch.get(key)
    need = rows * cap
    if cur is None or cur[0].numel() < 2 * need:
        cur = (torch.empty(2 * need, dtype=torch.int32, device=dev),
               torch.empty(3 * need, dtype=dtype, device=dev))
        _scratch[key] = cur
    return cur[0][:2 * need].view(rows, 2 * cap), cur[1][:3 * need].view(rows, 3 * cap)


def _chunk_rows(n_rays: int, cap: int) -> int:
    entries = SCRATCH_ENTRIES.get(runtime.arch_name(), 1 << 21)
    return max(1, min(n_rays, entries // cap))


def _ti_real(dtype):
    import taichi as ti

    return ti.f64 if dtype == torch.float64 else ti.f32


class _Collect:
    """What the kernels scan per slab: BVH arrays, or the raw boxes for the brute-force collect."""

    def __init__(self, use_bvh: bool, node_lo, node_hi, children, box_lo, box_hi):
        dev = runtime.torch_device()
        self.use_bvh = use_bvh
        self.node_lo = node_lo.to(dev, torch.float32).contiguous()
        self.node_hi = node_hi.to(dev, torch.float32).contiguous()
        self.children = children.to(dev, torch.int32).contiguous()
        self.box_lo = box_lo.to(dev, torch.float32).contiguous()
        self.box_hi = box_hi.to(dev, torch.float32).contiguous()


def _forward(means, M, resp, rgb, ro, rd, tn, tf, cfg: RayGaussConfig, col: _Collect):
    from shaders import raygauss_fwd

    dev = runtime.torch_device()
    R, dtype = ro.shape[0], means.dtype
    out_c = torch.zeros(R, 3, dtype=dtype, device=dev)
    out_T = torch.ones(R, dtype=dtype, device=dev)
    out_d = torch.zeros(R, dtype=dtype, device=dev)
    out_ne = torch.zeros(R, dtype=torch.int32, device=dev)
    out_steps = torch.zeros(R, dtype=torch.int32, device=dev)
    capped = torch.zeros(1, dtype=torch.int32, device=dev)
    if R == 0 or means.shape[0] == 0:
        return out_c, out_T, out_d, out_ne, out_steps, 0
    S, cap = int(cfg.samples_per_slab), int(cfg.cap)
    k_den, k_op = raygauss_fwd.kernels(_ti_real(dtype), S, col.use_bvh)
    chunk = _chunk_rows(R, cap)
    with runtime.runtime_lock:
        hits, keys = _scratch_rows(chunk, cap, dtype, dev)
        for r0 in range(0, R, chunk):
            n = min(chunk, R - r0)
            if cfg.mode == "density":
                k_den(means, M, resp, rgb, ro, rd, tn, tf, col.node_lo, col.node_hi,
                      col.children, col.box_lo, col.box_hi, hits, keys, r0, n, cfg.dt,
                      cfg.sigma_thr, cfg.t_stop, cap,
                      out_c, out_T, out_d, out_ne, out_steps, capped)
            else:
                k_op(means, M, resp, rgb, ro, rd, tn, tf, col.node_lo, col.node_hi,
                     col.children, col.box_lo, col.box_hi, hits, keys, r0, n, cfg.dt,
                     cfg.alpha_min, cfg.t_stop, cap,
                     out_c, out_T, out_d, out_ne, out_steps, capped)
    return out_c, out_T, out_d, out_ne, out_steps, int(capped.item())


def _backward(saved, grads, cfg: RayGaussConfig, col: _Collect):
    from shaders import raygauss_bwd

    means, M, resp, rgb, ro, rd, tn, tf, out_c, out_T, out_d, out_steps = saved
    g_c, g_a, g_d = (g.to(means.device, means.dtype).contiguous() for g in grads)
    dev = runtime.torch_device()
    N, R, dtype = means.shape[0], ro.shape[0], means.dtype
    gr_means = torch.zeros(N, 3, dtype=dtype, device=dev)
    gr_M = torch.zeros(N, 3, 3, dtype=dtype, device=dev)
    gr_resp = torch.zeros(N, dtype=dtype, device=dev)
    gr_rgb = torch.zeros(N, 3, dtype=dtype, device=dev)
    if R == 0 or N == 0:
        return gr_means, gr_M, gr_resp, gr_rgb
    S, cap = int(cfg.samples_per_slab), int(cfg.cap)
    k_den, k_op = raygauss_bwd.kernels(_ti_real(dtype), S, col.use_bvh)
    chunk = _chunk_rows(R, cap)
    thr = cfg.sigma_thr if cfg.mode == "density" else cfg.alpha_min
    kern = k_den if cfg.mode == "density" else k_op
    with runtime.runtime_lock:
        hits, keys = _scratch_rows(chunk, cap, dtype, dev)
        for r0 in range(0, R, chunk):
            n = min(chunk, R - r0)
            kern(means, M, resp, rgb, ro, rd, tn, tf, col.node_lo, col.node_hi, col.children,
                 col.box_lo, col.box_hi, hits, keys, r0, n, cfg.dt, thr, cap, out_c, out_T, out_d,
                 out_steps,
                 g_c, g_a, g_d, gr_means, gr_M, gr_resp, gr_rgb)
    return gr_means, gr_M, gr_resp, gr_rgb


class RayGaussFunction(torch.autograd.Function):
    """``(means, M, response, rgb, rays...) -> (C, alpha, depth, n_evals, n_capped)``.

    ``C (R,3)`` is the colour without background, ``alpha = 1 - T_final``. Differentiable w.r.t.
    ``means``, ``M``, ``response`` and ``rgb`` (not the rays); ``n_evals (R,)`` int32 and the
    0-d int64 ``n_capped`` are not differentiable. The kernels run on the Taichi device; outputs
    come back on the device of ``means`` and each gradient on the device of its input.
    """

    @staticmethod
    def forward(ctx, means, M, response, rgb, rays_o, rays_d, t_near, t_far, cfg, collect):
        dev = runtime.torch_device()
        args = [t.detach().to(dev).contiguous() for t in (means, M, response, rgb, rays_o, rays_d,
                                                          t_near, t_far)]
        out_c, out_T, out_d, out_ne, out_steps, n_capped = _forward(*args, cfg, collect)
        ctx.save_for_backward(*args, out_c, out_T, out_d, out_steps)
        ctx.cfg, ctx.collect = cfg, collect
        ctx.homes = [t.device for t in (means, M, response, rgb)]
        home = means.device
        n_capped_t = torch.tensor(n_capped, dtype=torch.int64)
        out_ne = out_ne.to(home)
        ctx.mark_non_differentiable(out_ne, n_capped_t)
        return out_c.to(home), (1.0 - out_T).to(home), out_d.to(home), out_ne, n_capped_t

    @staticmethod
    def backward(ctx, g_c, g_a, g_d, _g_ne, _g_cap):
        saved = [t.detach() for t in ctx.saved_tensors]   # outputs saved here carry grad_fn
        grads = _backward(saved, (g_c, g_a, g_d), ctx.cfg, ctx.collect)
        gm, gM, gr, gc = (g.to(h) for g, h in zip(grads, ctx.homes))
        return gm, gM, gr, gc, None, None, None, None, None, None


# --------------------------------------------------------------------------- public API


def _check_inputs(means, log_scale, quat, response, rgb, rays_o, rays_d, t_near, t_far,
                  background, where: str):
    if isinstance(response, torch.Tensor) and response.dim() == 2 and response.shape[1] == 1:
        response = response[:, 0]
    tensors = dict(means=means, log_scale=log_scale, quat=quat, response=response, rgb=rgb,
                   rays_o=rays_o, rays_d=rays_d, t_near=t_near, t_far=t_far)
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(t).__name__}")
    N = means.shape[0] if means.dim() == 2 else -1
    R = rays_o.shape[0] if rays_o.dim() == 2 else -1
    want = dict(means=(N, 3), log_scale=(N, 3), quat=(N, 4), response=(N,), rgb=(N, 3),
                rays_o=(R, 3), rays_d=(R, 3), t_near=(R,), t_far=(R,))
    for name, shape in want.items():
        if tuple(tensors[name].shape) != shape or N < 0 or R < 0:
            pretty = tuple("N" if s == N and i == 0 and name in ("means", "log_scale", "quat",
                                                                 "response", "rgb")
                           else ("R" if i == 0 else s) for i, s in enumerate(shape))
            raise ValueError(f"{where}: {name} must have shape {pretty}, got "
                             f"{tuple(tensors[name].shape)}")
    dtype = means.dtype
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{where}: means must be float32 or float64, got {dtype}")
    for name in ("log_scale", "quat", "response", "rgb"):
        if tensors[name].dtype != dtype:
            raise ValueError(f"{where}: {name} has dtype {tensors[name].dtype}, means has {dtype}")
    if background is not None and tuple(background.shape) != (3,):
        raise ValueError(f"{where}: background must have shape (3,), got "
                         f"{tuple(background.shape)}")
    for name in ("t_near", "t_far"):
        if R > 0 and not bool(torch.isfinite(tensors[name]).all()):
            raise ValueError(f"{where}: {name} must be finite (clip rays to the scene box; a ray "
                             f"that misses it can use t_far <= t_near)")
    if R > 0:
        norms = rays_d.detach().double().norm(dim=-1)
        if not bool(((norms - 1).abs() < 1e-3).all()):
            bad = int(((norms - 1).abs() >= 1e-3).nonzero()[0, 0])
            raise ValueError(f"{where}: rays_d must be unit vectors (ray {bad} has norm "
                             f"{float(norms[bad]):.6g})")


def render_rays(means, log_scale, quat, response, rgb, rays_o, rays_d, t_near, t_far,
                cfg: RayGaussConfig | None = None, bvh=None, background=None, *,
                use_bvh: bool = True):
    """Ray cast the Gaussians along R rays (see the module docstring for the exact math).

    Args:
        means (N,3), log_scale (N,3), quat (N,4) wxyz, response (N,) or (N,1), rgb (N,3): the
            Gaussians,
            all float32 or all float64; ``rgb`` is this view's per-Gaussian colour.
        rays_o (R,3), rays_d (R,3) unit, t_near (R,), t_far (R,) finite: rays, cast to that
            dtype; a ray with t_far <= t_near renders the background.
        cfg: :class:`RayGaussConfig` (paper defaults if None); ``cfg.mode`` picks the response.
        bvh: an AABB BVH (``shaders.bvh.build_aabb_bvh``) over ``gaussian_aabbs(means, log_scale,
            quat, response, cfg.mode, cfg)`` of the current parameters (refit after each step,
            rebuilt after densification); built here if None.
        background (3,): composited behind (``rgb + (1 - alpha) background``); black if None.
        use_bvh: False scans every box per slab (brute force, for tests and tiny scenes).

    Returns:
        dict ``rgb (R,3)``, ``alpha (R,)``, ``depth (R,)`` (sum T_i alpha_i t_i), ``n_evals (R,)``
        int32, ``n_capped`` (int: slabs whose collected count exceeded ``cfg.cap``).
    """
    cfg = (cfg or RayGaussConfig()).validate()
    _check_inputs(means, log_scale, quat, response, rgb, rays_o, rays_d, t_near, t_far,
                  background, "render_rays")
    response = response.reshape(-1)
    runtime.init()
    home, dtype = means.device, means.dtype     # results come back where the Gaussians live
    M = build_M(log_scale, quat)
    rays = [t.to(dtype=dtype) for t in (rays_o, rays_d, t_near, t_far)]
    if bvh is not None and not use_bvh:
        raise ValueError("render_rays: a bvh was given with use_bvh=False")
    lo, hi = gaussian_aabbs(means, log_scale, quat, response, cfg.mode, cfg)
    if means.shape[0] == 0:
        collect = _Collect(False, lo, hi, torch.zeros(1, 2, dtype=torch.int32), lo, hi)
    elif use_bvh:
        if bvh is None:
            from shaders.bvh import build_aabb_bvh

            bvh = build_aabb_bvh(lo, hi)
        elif getattr(bvh, "num_prims", means.shape[0]) != means.shape[0]:
            raise ValueError(f"render_rays: the bvh has {bvh.num_prims} primitives but there "
                             f"are {means.shape[0]} Gaussians (rebuild it after densification)")
        collect = _Collect(True, bvh.node_lo, bvh.node_hi, bvh.children, lo, hi)
    else:
        collect = _Collect(False, lo, hi, torch.zeros(1, 2, dtype=torch.int32), lo, hi)
    C, alpha, depth, n_evals, n_capped = RayGaussFunction.apply(
        means, M, response.reshape(-1), rgb, *rays, cfg, collect)
    out_rgb = C
    if background is not None:
        bg = background.to(device=home, dtype=dtype)
        out_rgb = C + (1.0 - alpha).unsqueeze(-1) * bg
    return dict(rgb=out_rgb, alpha=alpha, depth=depth, n_evals=n_evals,
                n_capped=int(n_capped))
