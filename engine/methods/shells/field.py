"""The Adaptive Shells field: hash-grid SDF, spatially varying kernel size, colour network, NeuS opacity.

Coordinates
-----------
The scene box is made cubic: centre ``c``, half-size ``a`` (largest half extent). The hash
encoding sees ``u = (x - c) / (2 a) + 1/2`` in ``[0, 1]^3``. The SDF ``f(x)`` is in world units.

Networks
--------
* SDF network: ``[hash(u) (L F), (x - c)/a (3)] -> softplus hidden -> (1 + 1 + G)``: an SDF
  residual, a kernel-size residual and ``G`` geometry features. ``f(x) = |x - c| - r0 a +
  residual`` (sphere prior of radius ``init_radius``; the residual starts at zero).
* Kernel size: ``log s(x) = log_s + residual_s(x)`` clamped to ``max_log_s - log a`` (``log_s`` a
  learned scalar, initialised to ``log(init_s / a)``). ``s`` is the inverse width of the logistic
  in NeuS: density ``~ s e^{-s f} / (1 + e^{-s f})^2``, which falls below ``eps`` of its peak at
  ``|f| = ln(4/eps) / s`` -- the band half-width of the shells.
* Colour network: ``[n (3), SH(view dir), geometry features] -> ReLU -> ReLU -> sigmoid rgb``.

Normals (``normals``, :meth:`ShellField.geometry_grad`) are either analytic or finite differences.

* ``analytic``: one evaluation per point. The hash kernel returns the encoding with its Jacobian
  w.r.t. the point (:func:`shaders.hashgrid.hash_encode_jacobian`, both linear in the table and
  differentiable w.r.t. it), and the chain rule through the SDF network is written out:
  ``grad f = p / |p| + (0.5 J_enc, I) W0^T (sigmoid(100 z) * W1[0])`` with ``z`` the hidden
  pre-activation (softplus, beta 100). The eikonal loss and the NeuS ``cos`` then train the table,
  the SDF network and the kernel size in the same single backward pass. The gradient is that of the
  trilinear interpolation: continuous along a cell's own axis, not across its faces.
* ``fd``: a tetrahedral finite difference (as in Neuralangelo): the network runs at
``x + h k_i`` for the 4 tetrahedron corners ``k_i`` (``(1,-1,-1), (-1,-1,1), (-1,1,-1),
(1,1,1)``); ``grad f ~ sum_i k_i f(x + h k_i) / (4 h)`` and the value/features/kernel size at
``x`` are the mean over the 4 corners (exact for linear fields; the value is off by ``O(h^2)``, the
gradient by ``O(h)`` through the mixed second derivatives, ``h`` = ``fd_step`` a, about half a cell
of the finest hash level by default).

NeuS opacity of an interval (:func:`neus_alpha`)
-----------------------------------------------
With ``f`` the SDF at the interval midpoint, ``cos = d . grad f`` and interval length ``delta``,
the SDF at the interval ends is estimated as ``f -+ c delta / 2`` where ``c = -(relu(-cos)) `` (or
NeuS's annealed mix ``-(relu(-cos/2 + 1/2)(1-r) + relu(-cos) r)``), and
``alpha = max(0, (Phi(s f_prev) - Phi(s f_next)) / Phi(s f_prev))`` with ``Phi`` the logistic
sigmoid and ``s = s(x)`` the local kernel size. Computed stably as
``-expm1(min(0, logsigmoid(s f_next) - logsigmoid(s f_prev)))``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as Fn

from shaders.hashgrid import hash_encode, hash_encode_jacobian, level_resolutions

from ...render.volume import composite  # noqa: F401 (the shared compositor; re-exported for tests)

_TETRA = torch.tensor([[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, 1.0, 1.0]])


def neus_alpha(sdf: torch.Tensor, cos: torch.Tensor, delta: torch.Tensor, s: torch.Tensor,
               anneal: float = 1.0) -> torch.Tensor:
    """NeuS opacity of intervals (see the module docstring). All inputs broadcast; returns alpha."""
    if anneal >= 1.0:
        icos = -Fn.relu(-cos)
    else:
        icos = -(Fn.relu(-cos * 0.5 + 0.5) * (1.0 - anneal) + Fn.relu(-cos) * anneal)
    f_next = sdf + icos * delta * 0.5
    f_prev = sdf - icos * delta * 0.5
    return neus_alpha_ends(f_prev, f_next, s)


def neus_alpha_ends(f_prev: torch.Tensor, f_next: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """NeuS opacity of an interval from the SDF at its two ends: ``max(0, 1 - Phi(s f_next) / Phi(s f_prev))``."""
    log_ratio = Fn.logsigmoid(s * f_next) - Fn.logsigmoid(s * f_prev)
    return -torch.expm1(torch.clamp(log_ratio, max=0.0))


def descent_alpha(f: torch.Tensor, log_s: torch.Tensor, owner: torch.Tensor, last: torch.Tensor,
                  n: int) -> torch.Tensor:
    """Opacity of ``n`` descents from the SDF and log kernel size at their probe points.

    ``f, log_s (P,)`` at the points of all descents, concatenated in order along each descent;
    ``owner (P,)`` long: the descent of each point; ``last (P,)`` bool: the descent's last point
    (which starts no segment). A segment from point ``i`` to ``i + 1`` has the NeuS opacity
    ``1 - Phi(s_i f_{i+1}) / Phi(s_i f_i)`` (clamped to [0, 1], ``s_i`` at its start); a descent's
    opacity is ``1 - prod (1 - alpha_segment)`` -- the probe sampler's crossing opacity
    (:mod:`shaders.band_probe`), here differentiable w.r.t. ``f`` and ``log_s``. Returns ``(n,)``.
    """
    nxt = torch.cat([f[1:], f[:1]])                   # the next point's SDF (unused at a descent's end)
    s = torch.exp(log_s)
    lr = torch.clamp(Fn.logsigmoid(s * nxt) - Fn.logsigmoid(s * f), max=0.0)
    lr = torch.where(last, torch.zeros_like(lr), lr)
    log_t = torch.zeros(n, dtype=f.dtype, device=f.device).index_add(0, owner, lr)
    return -torch.expm1(log_t)


class ShellField(torch.nn.Module):
    """SDF + kernel size + colour networks over a hash encoding (see the module docstring).

    Args:
        scene_box: (2, 3) min / max corners of the region to model (made cubic).
        cfg: a :class:`~engine.methods.shells.config.ShellsConfig`.
    """

    def __init__(self, scene_box, cfg, seed: int = 0):
        super().__init__()
        box = torch.as_tensor(scene_box, dtype=torch.float32).reshape(2, 3)
        self.register_buffer("center", (box[0] + box[1]) / 2)
        self.register_buffer("half_size", ((box[1] - box[0]) / 2).max().reshape(()))
        self.cfg = cfg
        g = torch.Generator().manual_seed(seed)
        self.resolutions = level_resolutions(cfg.hash_levels, cfg.hash_base_res, cfg.hash_max_res)
        # the same, as a tensor that follows the module's device (no host-device copy per encoding)
        self.register_buffer("resolution_t", torch.tensor(self.resolutions, dtype=torch.int32), persistent=False)
        T = 2 ** int(cfg.hash_log2_size)
        self.table = torch.nn.Parameter(
            (torch.rand(cfg.hash_levels, T, cfg.hash_features, generator=g) * 2 - 1) * 1e-4)
        n_in = cfg.hash_levels * cfg.hash_features + 3
        self.sdf_l0 = torch.nn.Linear(n_in, cfg.sdf_hidden)
        self.sdf_l1 = torch.nn.Linear(cfg.sdf_hidden, 2 + cfg.geo_features)
        self.n_sh = (cfg.view_sh_degree + 1) ** 2
        self.col_l0 = torch.nn.Linear(3 + self.n_sh + cfg.geo_features, cfg.color_hidden)
        self.col_l1 = torch.nn.Linear(cfg.color_hidden, cfg.color_hidden)
        self.col_l2 = torch.nn.Linear(cfg.color_hidden, 3)
        with torch.no_grad():
            for lin in (self.sdf_l0, self.col_l0, self.col_l1, self.col_l2):
                lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * math.sqrt(2.0 / lin.in_features))
                lin.bias.zero_()
            self.sdf_l1.weight.zero_()      # SDF = sphere prior, s = exp(log_s) at the start
            self.sdf_l1.bias.zero_()
            self.sdf_l1.weight[2:].copy_(torch.randn(cfg.geo_features, cfg.sdf_hidden, generator=g) * 0.1)
        self.log_s = torch.nn.Parameter(torch.tensor(math.log(cfg.init_s) - math.log(float(self.half_size))))

    # ------------------------------------------------------------------ pieces
    @property
    def max_log_s(self) -> float:
        return float(self.cfg.max_log_s) - math.log(float(self.half_size))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """World points (N, 3) -> ``(x - c) / a`` (the box is ``[-1, 1]^3``)."""
        return (x - self.center) / self.half_size

    def geometry(self, x: torch.Tensor):
        """SDF (N,), log kernel size (N,) and geometry features (N, G) at world points ``x (N, 3)``."""
        p = self.normalise(x)
        # the table's gradient goes straight into table.grad (one dense buffer per step, not one per call)
        enc = hash_encode((p * 0.5 + 0.5).contiguous(), self.table, self.resolution_t, accumulate_grad=True)
        h = Fn.softplus(self.sdf_l0(torch.cat([enc, p], -1)), beta=100.0)
        out = self.sdf_l1(h)
        sdf = (p.norm(dim=-1) - self.cfg.init_radius + out[:, 0]) * self.half_size
        log_s = torch.clamp(self.log_s + out[:, 1], max=self.max_log_s)
        return sdf, log_s, out[:, 2:]

    def sdf(self, x: torch.Tensor) -> torch.Tensor:
        return self.geometry(x)[0]

    def descent_opacity(self, x0: torch.Tensor, dirs: torch.Tensor, step: torch.Tensor, n_seg: torch.Tensor):
        """Differentiable opacity of descents along rays: ``n_seg (N,)`` segments of length ``step
        (N,)`` from ``x0 (N, 3)`` along unit ``dirs (N, 3)``; the field (SDF network, kernel size) is
        evaluated at the ``n_seg + 1`` points of each (:func:`descent_alpha`). Returns ``alpha (N,)``
        and the number of points evaluated."""
        n = x0.shape[0]
        k = (n_seg.long() + 1).clamp_min(2)               # a descent has at least one segment
        owner = torch.repeat_interleave(torch.arange(n, device=x0.device), k)
        first = torch.cumsum(k, 0) - k
        j = torch.arange(owner.numel(), device=x0.device) - first[owner]
        pts = x0[owner] + (j.to(x0.dtype) * step[owner].to(x0.dtype))[:, None] * dirs[owner]
        f, log_s, _ = self.geometry(pts)
        last = j == (k - 1)[owner]
        return descent_alpha(f, log_s, owner, last, n), int(owner.numel())

    def geometry_fd(self, x: torch.Tensor, h: float | None = None):
        """Tetrahedral finite differences: sdf (N,), grad (N, 3), log_s (N,), features (N, G)."""
        h = float(self.cfg.fd_step if h is None else h) * float(self.half_size)
        k = _TETRA.to(x)
        n = x.shape[0]
        pts = (x[:, None, :] + h * k[None]).reshape(-1, 3)
        sdf, log_s, feat = self.geometry(pts)
        sdf = sdf.reshape(n, 4)
        grad = (sdf[..., None] * k[None]).sum(1) / (4.0 * h)
        return sdf.mean(1), grad, log_s.reshape(n, 4).mean(1), feat.reshape(n, 4, -1).mean(1)

    def geometry_analytic(self, x: torch.Tensor):
        """Analytic normals: sdf (N,), grad (N, 3), log_s (N,), features (N, G) from one evaluation
        of the field per point (see the module docstring). ``x`` must not require grad."""
        p = self.normalise(x)
        enc, jac = hash_encode_jacobian((p * 0.5 + 0.5).contiguous(), self.table, self.resolution_t,
                                        accumulate_grad=True)
        z = self.sdf_l0(torch.cat([enc, p], -1))
        out = self.sdf_l1(Fn.softplus(z, beta=100.0))
        pn = p.norm(dim=-1)
        sdf = (pn - self.cfg.init_radius + out[:, 0]) * self.half_size
        log_s = torch.clamp(self.log_s + out[:, 1], max=self.max_log_s)
        # d out0 / d [enc, p]: the softplus' derivative is sigmoid(beta z), and 1 where torch's softplus
        # is linear (beta z > 20, its threshold)
        dz = torch.where(z * 100.0 > 20.0, torch.ones_like(z), torch.sigmoid(100.0 * z))
        g_in = (dz * self.sdf_l1.weight[0]) @ self.sdf_l0.weight
        n_enc = enc.shape[1]
        # d enc / d p = 0.5 d enc / d u; f = (|p| - r0 + out0) a with p = (x - c) / a: grad_x f = grad_p (...)
        grad = torch.bmm(g_in[:, None, :n_enc], jac)[:, 0] * 0.5 + g_in[:, n_enc:] \
            + p / pn.clamp_min(1e-12)[:, None]
        return sdf, grad, log_s, out[:, 2:]

    def geometry_grad(self, x: torch.Tensor):
        """sdf (N,), grad f (N, 3), log_s (N,), features (N, G) at ``x (N, 3)``, with the normals
        of ``cfg.normals`` (``analytic`` or ``fd``)."""
        mode = self.cfg.normals
        if mode == "analytic":
            return self.geometry_analytic(x)
        if mode == "fd":
            return self.geometry_fd(x)
        raise ValueError(f"shells: normals must be 'analytic' or 'fd', got {mode!r}")

    def view_encoding(self, dirs: torch.Tensor) -> torch.Tensor:
        from ...geometry.sh import sh_basis

        return sh_basis(dirs, self.cfg.view_sh_degree)

    def color(self, normals: torch.Tensor, view_enc: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        n = Fn.normalize(normals, dim=-1)
        h = Fn.relu(self.col_l0(torch.cat([n, view_enc, feat], -1)))
        h = Fn.relu(self.col_l1(h))
        return torch.sigmoid(self.col_l2(h))

    def kernel_halfwidth(self, log_s: torch.Tensor, eps: float, lo: float, hi: float) -> torch.Tensor:
        """Band half-width ``clamp(ln(4/eps) / s, lo a, hi a)`` (world units) from ``log s``."""
        a = float(self.half_size)
        return torch.clamp(math.log(4.0 / eps) * torch.exp(-log_s), lo * a, hi * a)

    # ------------------------------------------------------------------ samples
    def shade_samples(self, x: torch.Tensor, dirs: torch.Tensor, delta: torch.Tensor,
                      view_enc: torch.Tensor, anneal: float = 1.0) -> dict:
        """Everything compositing needs at sample points.

        x (N, 3), unit dirs (N, 3), interval lengths delta (N,), view_enc (N, n_sh).
        Returns alpha, rgb (N, 3), sdf, grad (N, 3), log_s, s.
        """
        sdf, grad, log_s, feat = self.geometry_grad(x)
        s = torch.exp(log_s)
        cos = (dirs * grad).sum(-1)
        alpha = neus_alpha(sdf, cos, delta, s, anneal)
        rgb = self.color(grad, view_enc, feat)
        return {"alpha": alpha, "rgb": rgb, "sdf": sdf, "grad": grad, "log_s": log_s, "s": s}

    @torch.no_grad()
    def sdf_and_log_s_grid(self, lo, hi, res: int, chunk: int = 65536):
        """SDF and log kernel size on a ``res^3`` grid of points spanning [lo, hi] (corners included).

        Returns two (res, res, res) float32 tensors indexed ``[i, j, k]`` = x, y, z.
        """
        dev = self.center.device
        lo = [float(v) for v in torch.as_tensor(lo, dtype=torch.float32).reshape(3)]
        hi = [float(v) for v in torch.as_tensor(hi, dtype=torch.float32).reshape(3)]
        axes = [torch.linspace(lo[i], hi[i], res, device=dev) for i in range(3)]
        pts = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
        f = torch.empty(pts.shape[0], device=dev)
        ls = torch.empty(pts.shape[0], device=dev)
        for i in range(0, pts.shape[0], chunk):
            a, b, _ = self.geometry(pts[i:i + chunk])
            f[i:i + chunk] = a
            ls[i:i + chunk] = b
        return f.reshape(res, res, res), ls.reshape(res, res, res)
