"""Batched pinhole cameras with OpenCV distortion, ray generation and convention converters.

Conventions (see DESIGN.md):

* ``c2w`` is a camera-to-world 4x4 matrix in **OpenCV axes**: +x right, +y down, +z forward.
  The camera centre is ``c2w[:3, 3]``.
* Pixel ``(u, v)`` (column, row; integers) covers ``[u, u+1) x [v, v+1)``; its centre is at
  ``(u + 0.5, v + 0.5)``. A principal point ``cx = width / 2`` is the image centre.
* Intrinsics ``fx, fy, cx, cy`` in pixels; ``width, height`` integers.
* Distortion (optional) is OpenCV's ``k1 k2 p1 p2 k3`` model applied to normalised coordinates
  ``x = X/Z, y = Y/Z``::

      r2 = x^2 + y^2;  radial = 1 + k1 r2 + k2 r2^2 + k3 r2^3
      xd = x radial + 2 p1 x y + p2 (r2 + 2 x^2)
      yd = y radial + p1 (r2 + 2 y^2) + 2 p2 x y
      u = fx xd + cx;  v = fy yd + cy

Other conventions and their converters:

* OpenGL / Blender / nerfstudio / instant-ngp ``transform_matrix``: camera-to-world with +x right,
  +y up, +z backward. ``opengl_to_opencv_c2w`` flips the camera's y and z axes.
* COLMAP: world-to-camera rotation as a unit quaternion ``qvec = (w, x, y, z)`` and translation
  ``tvec``, in OpenCV camera axes: ``X_cam = R(q) X_world + t``.
* LLFF ``poses_bounds.npy``: a 3x5 matrix per image whose rotation columns are (down, right,
  backward) and whose last column is ``(height, width, focal)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

__all__ = [
    "Cameras",
    "downscaled_size",
    "distort",
    "undistort",
    "opengl_to_opencv_c2w",
    "opencv_to_opengl_c2w",
    "qvec_to_rotmat",
    "rotmat_to_qvec",
    "colmap_to_c2w",
    "c2w_to_colmap",
    "llff_to_c2w",
    "c2w_to_llff",
]

_GL_FLIP = (1.0, -1.0, -1.0, 1.0)


def downscaled_size(size: int, factor: float) -> int:
    """Image size after resizing by ``factor`` (< 1 shrinks): ``floor(size * factor + 0.5)``, >= 1.

    This is the single rule used both for images (``engine.data.images.area_resize``) and for
    cameras (:meth:`Cameras.scaled`), so they always agree.
    """
    return max(1, int(math.floor(size * factor + 0.5)))


# --------------------------------------------------------------------------------------------
# Distortion
# --------------------------------------------------------------------------------------------
def _split_dist(dist: torch.Tensor):
    d = [c.contiguous() if c.dim() and c.stride(-1) not in (0, 1) else c for c in dist.unbind(-1)]
    return d[0], d[1], d[2], d[3], d[4]


def distort(x: torch.Tensor, y: torch.Tensor, dist: torch.Tensor):
    """Apply OpenCV distortion to normalised coordinates.

    Args:
        x, y: (...) undistorted normalised coordinates.
        dist: (..., 5) ``k1 k2 p1 p2 k3`` broadcastable against ``x``.
    Returns:
        ``(xd, yd)`` with the shape of ``x``.
    """
    k1, k2, p1, p2, k3 = _split_dist(dist)
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return xd, yd


def undistort(xd: torch.Tensor, yd: torch.Tensor, dist: torch.Tensor, iterations: int = 10):
    """Invert :func:`distort` by Newton's method on the 2x2 system (vectorised).

    Starts from ``(xd, yd)`` and runs at most ``iterations`` Newton steps with the analytic
    Jacobian, stopping once every step is below 1e-14; for the lens distortions found in practice
    (|k| < 0.5 inside the image) this reaches machine precision in 3-5 steps. Computation is done
    in float64 and cast back.

    Args:
        xd, yd: (...) distorted normalised coordinates.
        dist: (..., 5) ``k1 k2 p1 p2 k3``.
    Returns:
        ``(x, y)`` undistorted normalised coordinates, same shape and dtype as ``xd``.
    """
    dtype = xd.dtype
    xd64, yd64, d64 = xd.double(), yd.double(), dist.double()
    k1, k2, p1, p2, k3 = _split_dist(d64)
    x, y = xd64.clone(), yd64.clone()
    for _ in range(iterations):
        r2 = x * x + y * y
        radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
        dradial = k1 + r2 * (2 * k2 + 3 * k3 * r2)  # d radial / d r2
        fx = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x) - xd64
        fy = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y - yd64
        # Jacobian of the distorted point with respect to (x, y).
        j_xx = radial + 2 * x * x * dradial + 2 * p1 * y + 6 * p2 * x
        j_xy = 2 * x * y * dradial + 2 * p1 * x + 2 * p2 * y
        j_yx = 2 * x * y * dradial + 2 * p1 * x + 2 * p2 * y
        j_yy = radial + 2 * y * y * dradial + 6 * p1 * y + 2 * p2 * x
        det = j_xx * j_yy - j_xy * j_yx
        det = torch.where(det.abs() < 1e-12, torch.full_like(det, 1e-12), det)
        step_x = (j_yy * fx - j_xy * fy) / det
        step_y = (-j_yx * fx + j_xx * fy) / det
        x = x - step_x
        y = y - step_y
        if x.numel() == 0 or float(torch.maximum(step_x.abs().max(), step_y.abs().max())) < 1e-14:
            break  # converged (Newton converges quadratically; usually 3-5 steps)
    return x.to(dtype), y.to(dtype)


# --------------------------------------------------------------------------------------------
# Convention converters (all batched over leading dims)
# --------------------------------------------------------------------------------------------
def _as_tensor(x, dtype=torch.float32) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(dtype) if dtype is not None and x.dtype != dtype else x
    return torch.as_tensor(x, dtype=dtype)


def _to_4x4(m: torch.Tensor) -> torch.Tensor:
    if m.shape[-2:] == (4, 4):
        return m
    if m.shape[-2:] != (3, 4):
        raise ValueError(f"expected (...,3,4) or (...,4,4) pose matrices, got {tuple(m.shape)}")
    bottom = torch.zeros(*m.shape[:-2], 1, 4, dtype=m.dtype, device=m.device)
    bottom[..., 0, 3] = 1
    return torch.cat([m, bottom], dim=-2)


def opengl_to_opencv_c2w(c2w) -> torch.Tensor:
    """OpenGL/Blender/nerfstudio camera-to-world (..,4,4 or ..,3,4) -> OpenCV axes (..,4,4).

    Multiplies on the right by ``diag(1, -1, -1, 1)`` (flips the camera y and z axes). The
    operation is its own inverse.
    """
    c2w = _to_4x4(_as_tensor(c2w, None).clone())
    flip = torch.tensor(_GL_FLIP, dtype=c2w.dtype, device=c2w.device)
    return c2w * flip  # scales columns 1 and 2


def opencv_to_opengl_c2w(c2w) -> torch.Tensor:
    """Inverse of :func:`opengl_to_opencv_c2w` (the same axis flip)."""
    return opengl_to_opencv_c2w(c2w)


def qvec_to_rotmat(q) -> torch.Tensor:
    """Unit quaternions (..., 4) as ``w, x, y, z`` (normalised here) -> rotation matrices (..., 3, 3)."""
    q = _as_tensor(q, None)
    from shaders.rotations import quat_to_rotmat

    return quat_to_rotmat(q)


def rotmat_to_qvec(R) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) -> unit quaternions (..., 4) ``w, x, y, z`` with ``w >= 0``.

    Uses the largest-diagonal branch (Shepperd's method) so it is stable for every rotation.
    """
    R = _as_tensor(R, None)
    m = R.reshape(-1, 3, 3)
    tr = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    cand = torch.stack([tr, m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]], dim=-1)
    branch = cand.argmax(dim=-1)
    q = torch.empty(m.shape[0], 4, dtype=m.dtype, device=m.device)
    for b in range(4):
        sel = branch == b
        if not sel.any():
            continue
        s = m[sel]
        if b == 0:
            r = torch.sqrt(1 + s[:, 0, 0] + s[:, 1, 1] + s[:, 2, 2]) * 2
            qb = torch.stack([0.25 * r, (s[:, 2, 1] - s[:, 1, 2]) / r,
                              (s[:, 0, 2] - s[:, 2, 0]) / r, (s[:, 1, 0] - s[:, 0, 1]) / r], -1)
        elif b == 1:
            r = torch.sqrt(1 + s[:, 0, 0] - s[:, 1, 1] - s[:, 2, 2]) * 2
            qb = torch.stack([(s[:, 2, 1] - s[:, 1, 2]) / r, 0.25 * r,
                              (s[:, 0, 1] + s[:, 1, 0]) / r, (s[:, 0, 2] + s[:, 2, 0]) / r], -1)
        elif b == 2:
            r = torch.sqrt(1 + s[:, 1, 1] - s[:, 0, 0] - s[:, 2, 2]) * 2
            qb = torch.stack([(s[:, 0, 2] - s[:, 2, 0]) / r, (s[:, 0, 1] + s[:, 1, 0]) / r,
                              0.25 * r, (s[:, 1, 2] + s[:, 2, 1]) / r], -1)
        else:
            r = torch.sqrt(1 + s[:, 2, 2] - s[:, 0, 0] - s[:, 1, 1]) * 2
            qb = torch.stack([(s[:, 1, 0] - s[:, 0, 1]) / r, (s[:, 0, 2] + s[:, 2, 0]) / r,
                              (s[:, 1, 2] + s[:, 2, 1]) / r, 0.25 * r], -1)
        q[sel] = qb
    q = q * torch.where(q[:, :1] < 0, -1.0, 1.0).to(q.dtype)
    q = q / q.norm(dim=-1, keepdim=True)
    return q.reshape(*R.shape[:-2], 4)


def colmap_to_c2w(qvec, tvec) -> torch.Tensor:
    """COLMAP world-to-camera ``qvec`` (..., 4, wxyz) and ``tvec`` (..., 3) -> OpenCV c2w (..., 4, 4)."""
    qvec = _as_tensor(qvec, torch.float64)
    tvec = _as_tensor(tvec, torch.float64)
    R = qvec_to_rotmat(qvec)
    c2w = torch.zeros(*R.shape[:-2], 4, 4, dtype=torch.float64, device=R.device)
    Rt = R.transpose(-1, -2)
    c2w[..., :3, :3] = Rt
    c2w[..., :3, 3] = -(Rt @ tvec.unsqueeze(-1)).squeeze(-1)
    c2w[..., 3, 3] = 1
    return c2w


def c2w_to_colmap(c2w):
    """OpenCV c2w (..., 4, 4) -> COLMAP ``(qvec wxyz (..., 4), tvec (..., 3))`` (float64)."""
    c2w = _to_4x4(_as_tensor(c2w, torch.float64))
    R = c2w[..., :3, :3].transpose(-1, -2)
    t = -(R @ c2w[..., :3, 3:4]).squeeze(-1)
    return rotmat_to_qvec(R), t


def llff_to_c2w(poses) -> torch.Tensor:
    """LLFF poses (..., 3, 5) (columns: down, right, backward, centre, hwf) -> OpenCV c2w (..., 4, 4).

    The ``hwf`` column is ignored here; :meth:`Cameras.from_llff` reads it.
    """
    p = _as_tensor(poses, torch.float64)
    if p.shape[-2:] != (3, 5):
        raise ValueError(f"LLFF poses must be (...,3,5), got {tuple(p.shape)}")
    cols = torch.stack([p[..., :, 1], p[..., :, 0], -p[..., :, 2], p[..., :, 3]], dim=-1)
    return _to_4x4(cols)


def c2w_to_llff(c2w, height, width, focal) -> torch.Tensor:
    """OpenCV c2w (..., 4, 4) and hwf -> LLFF poses (..., 3, 5) (inverse of :func:`llff_to_c2w`)."""
    c = _to_4x4(_as_tensor(c2w, torch.float64))
    hwf = torch.stack(torch.broadcast_tensors(_as_tensor(height, torch.float64),
                                              _as_tensor(width, torch.float64),
                                              _as_tensor(focal, torch.float64)), -1)
    hwf = hwf.expand(*c.shape[:-2], 3)
    return torch.stack([c[..., :3, 1], c[..., :3, 0], -c[..., :3, 2], c[..., :3, 3], hwf], dim=-1)


# --------------------------------------------------------------------------------------------
# Cameras
# --------------------------------------------------------------------------------------------
@dataclass
class Cameras:
    """A batch of N pinhole cameras (see the module docstring for conventions).

    Fields:
        fx, fy, cx, cy: (N,) float32, pixels.
        width, height: (N,) int64, pixels.
        c2w: (N, 4, 4) float32 camera-to-world, OpenCV axes.
        dist: (N, 5) float32 OpenCV ``k1 k2 p1 p2 k3``, or ``None`` for no distortion.

    Scalars and (N,)-broadcastable values are accepted by the constructor; everything is
    converted to tensors of the dtypes above on ``c2w``'s device.
    """

    fx: torch.Tensor
    fy: torch.Tensor
    cx: torch.Tensor
    cy: torch.Tensor
    width: torch.Tensor
    height: torch.Tensor
    c2w: torch.Tensor
    dist: torch.Tensor | None = None

    def __post_init__(self):
        c2w = _to_4x4(_as_tensor(self.c2w, torch.float32))
        if c2w.dim() == 2:
            c2w = c2w[None]
        if c2w.dim() != 3:
            raise ValueError(f"c2w must be (N,4,4), got {tuple(c2w.shape)}")
        n, dev = c2w.shape[0], c2w.device

        def vec(v, dtype, name):
            t = _as_tensor(v, dtype).to(dev)
            if t.dim() == 0:
                t = t.expand(n)
            t = t.reshape(-1)
            if t.shape[0] == 1 and n != 1:
                t = t.expand(n)
            if t.shape[0] != n:
                raise ValueError(f"Cameras.{name} has {t.shape[0]} values for {n} cameras")
            return t.contiguous()

        self.c2w = c2w.contiguous()
        self.fx = vec(self.fx, torch.float32, "fx")
        self.fy = vec(self.fy, torch.float32, "fy")
        self.cx = vec(self.cx, torch.float32, "cx")
        self.cy = vec(self.cy, torch.float32, "cy")
        self.width = vec(_as_tensor(self.width, torch.float64).round(), torch.int64, "width")
        self.height = vec(_as_tensor(self.height, torch.float64).round(), torch.int64, "height")
        if self.dist is not None:
            d = _as_tensor(self.dist, torch.float32).to(dev)
            if d.dim() == 1:
                d = d[None]
            if d.shape[-1] == 4:  # k1 k2 p1 p2 without k3
                d = torch.cat([d, torch.zeros_like(d[:, :1])], -1)
            if d.shape[-1] != 5:
                raise ValueError(f"Cameras.dist must be (N,5) k1 k2 p1 p2 k3, got {tuple(d.shape)}")
            d = d.expand(n, 5).contiguous()
            self.dist = None if bool((d == 0).all()) else d

    # -- construction from other conventions -------------------------------------------------
    @classmethod
    def from_opengl_c2w(cls, c2w, fx, fy, cx, cy, width, height, dist=None) -> "Cameras":
        """From OpenGL/Blender/nerfstudio/instant-ngp camera-to-world matrices (N, 3|4, 4)."""
        return cls(fx, fy, cx, cy, width, height, opengl_to_opencv_c2w(_as_tensor(c2w, torch.float64)), dist)

    @classmethod
    def from_colmap(cls, qvec, tvec, fx, fy, cx, cy, width, height, dist=None) -> "Cameras":
        """From COLMAP world-to-camera quaternions (N, 4) wxyz and translations (N, 3)."""
        return cls(fx, fy, cx, cy, width, height, colmap_to_c2w(qvec, tvec), dist)

    @classmethod
    def from_llff(cls, poses) -> "Cameras":
        """From LLFF poses (N, 3, 5); principal point at the image centre, fx = fy = focal."""
        p = _as_tensor(poses, torch.float64)
        h, w, f = p[:, 0, 4], p[:, 1, 4], p[:, 2, 4]
        return cls(f, f, w / 2, h / 2, w.round(), h.round(), llff_to_c2w(p))

    def to_opengl_c2w(self) -> torch.Tensor:
        """(N, 4, 4) camera-to-world in OpenGL axes (Blender/nerfstudio)."""
        return opencv_to_opengl_c2w(self.c2w)

    def to_colmap(self):
        """``(qvec (N,4) wxyz, tvec (N,3))`` world-to-camera, float64."""
        return c2w_to_colmap(self.c2w)

    def to_llff(self) -> torch.Tensor:
        """(N, 3, 5) LLFF poses; uses ``fx`` as the focal (LLFF has a single focal, centred pp)."""
        return c2w_to_llff(self.c2w, self.height, self.width, self.fx)

    # -- container protocol ---------------------------------------------------------------
    def __len__(self) -> int:
        return self.c2w.shape[0]

    def __getitem__(self, idx) -> "Cameras":
        if isinstance(idx, int):
            if not -len(self) <= idx < len(self):
                raise IndexError(f"camera index {idx} out of range for {len(self)} cameras")
            idx = slice(idx, idx + 1 if idx != -1 else None)
        return Cameras(self.fx[idx], self.fy[idx], self.cx[idx], self.cy[idx], self.width[idx],
                       self.height[idx], self.c2w[idx], None if self.dist is None else self.dist[idx])

    def to(self, device) -> "Cameras":
        return Cameras(*(t.to(device) for t in (self.fx, self.fy, self.cx, self.cy, self.width,
                                                 self.height, self.c2w)),
                       None if self.dist is None else self.dist.to(device))

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    @property
    def has_distortion(self) -> bool:
        return self.dist is not None

    @staticmethod
    def cat(cams: list["Cameras"]) -> "Cameras":
        """Concatenate camera batches."""
        dist = None
        if any(c.dist is not None for c in cams):
            dist = torch.cat([c.dist if c.dist is not None else torch.zeros(len(c), 5, device=c.device)
                              for c in cams])
        f = lambda name: torch.cat([getattr(c, name) for c in cams])  # noqa: E731
        return Cameras(f("fx"), f("fy"), f("cx"), f("cy"), f("width"), f("height"), f("c2w"), dist)

    # -- derived quantities -------------------------------------------------------------
    def K(self) -> torch.Tensor:
        """(N, 3, 3) intrinsic matrices."""
        K = torch.zeros(len(self), 3, 3, dtype=self.fx.dtype, device=self.device)
        K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = self.fx, self.fy, self.cx, self.cy, 1
        return K

    def centers(self) -> torch.Tensor:
        """(N, 3) camera centres in world coordinates."""
        return self.c2w[:, :3, 3]

    def w2c(self) -> torch.Tensor:
        """(N, 4, 4) world-to-camera matrices (rigid inverse of ``c2w``)."""
        R = self.c2w[:, :3, :3].transpose(1, 2)
        out = torch.zeros_like(self.c2w)
        out[:, :3, :3] = R
        out[:, :3, 3] = -(R @ self.c2w[:, :3, 3:]).squeeze(-1)
        out[:, 3, 3] = 1
        return out

    def scaled(self, factor: float) -> "Cameras":
        """Cameras for images resized by ``factor`` (< 1 shrinks).

        New sizes follow :func:`downscaled_size`; intrinsics are scaled by the *actual* size ratio
        per axis (``W'/W``, ``H'/H``), which is exact for pixel centres at +0.5 (pixel edges map to
        pixel edges). Distortion acts on normalised coordinates and is unchanged.
        """
        w = torch.tensor([downscaled_size(int(x), factor) for x in self.width.tolist()], dtype=torch.int64,
                         device=self.device)
        h = torch.tensor([downscaled_size(int(x), factor) for x in self.height.tolist()], dtype=torch.int64,
                         device=self.device)
        return self.resized(w, h)

    def resized(self, width, height) -> "Cameras":
        """Cameras for images resized to exactly ``width x height`` ((N,) or scalars)."""
        w = _as_tensor(width, torch.int64).to(self.device).expand(len(self))
        h = _as_tensor(height, torch.int64).to(self.device).expand(len(self))
        sx = w.to(torch.float64) / self.width.to(torch.float64)
        sy = h.to(torch.float64) / self.height.to(torch.float64)
        return replace(self, fx=(self.fx.double() * sx), fy=(self.fy.double() * sy),
                       cx=(self.cx.double() * sx), cy=(self.cy.double() * sy), width=w, height=h)

    def downscaled(self, n: int) -> "Cameras":
        """Cameras for images downscaled by an integer factor ``n`` (``width / n`` rounded)."""
        if int(n) != n or n < 1:
            raise ValueError(f"downscale factor must be a positive integer, got {n!r}")
        return self if n == 1 else self.scaled(1.0 / n)

    # -- projection and rays -----------------------------------------------------------
    def project(self, points: torch.Tensor, index: int | None = None):
        """Project world points to pixels, applying distortion.

        Args:
            points: (M, 3) world points.
            index: camera index, or ``None`` for all cameras.
        Returns:
            ``(uv, depth)``: uv (M, 2) and depth (M,) (camera-space z; <= 0 means behind) for one
            camera, or (N, M, 2) and (N, M) for all.
        """
        cams = self if index is None else self[index]
        pts = _as_tensor(points, None).to(self.device)
        w2c = cams.w2c().to(pts.dtype)
        pc = torch.einsum("nij,mj->nmi", w2c[:, :3, :3], pts) + w2c[:, None, :3, 3]
        z = pc[..., 2]
        x = pc[..., 0] / z
        y = pc[..., 1] / z
        if cams.dist is not None:
            x, y = distort(x, y, cams.dist[:, None, :].to(pts.dtype))
        u = cams.fx[:, None].to(pts.dtype) * x + cams.cx[:, None].to(pts.dtype)
        v = cams.fy[:, None].to(pts.dtype) * y + cams.cy[:, None].to(pts.dtype)
        uv = torch.stack([u, v], -1)
        if index is not None:
            return uv[0], z[0]
        return uv, z

    def pixel_rays(self, cam_index: torch.Tensor, uv: torch.Tensor):
        """Rays through continuous pixel coordinates, undistorting where the camera has distortion.

        Args:
            cam_index: (R,) int64 camera index per ray.
            uv: (R, 2) pixel coordinates (use ``u + 0.5, v + 0.5`` for pixel centres).
        Returns:
            ``(origins (R, 3), directions (R, 3))`` in world coordinates, directions unit length,
            dtype float32.
        """
        cam_index = cam_index.to(self.device).long()
        uv = uv.to(self.device, torch.float32)
        x = (uv[:, 0] - self.cx[cam_index]) / self.fx[cam_index]
        y = (uv[:, 1] - self.cy[cam_index]) / self.fy[cam_index]
        if self.dist is not None:
            x, y = undistort(x, y, self.dist[cam_index])
        d_cam = torch.stack([x, y, torch.ones_like(x)], -1)
        if len(self) == 1:      # one camera (a whole image): one (R, 3) x (3, 3) product, no per-ray gather
            d = d_cam @ self.c2w[0, :3, :3].T
            o = self.c2w[0, :3, 3].expand(d.shape[0], 3).clone()
        else:
            R = self.c2w[cam_index, :3, :3]
            d = (R @ d_cam.unsqueeze(-1)).squeeze(-1)
            o = self.c2w[cam_index, :3, 3].clone()
        d = d / d.norm(dim=-1, keepdim=True)
        return o, d

    def generate_rays(self, index: int, downscale: int = 1):
        """All rays of camera ``index`` through pixel centres ``(u + 0.5, v + 0.5)``.

        Args:
            index: camera index.
            downscale: optionally generate for the camera downscaled by this integer factor.
        Returns:
            ``(origins (H, W, 3), directions (H, W, 3))`` float32, world coordinates, unit dirs.
        """
        cams = self[index] if downscale == 1 else self[index].downscaled(downscale)
        W, H = int(cams.width[0]), int(cams.height[0])
        v, u = torch.meshgrid(torch.arange(H, device=self.device, dtype=torch.float32) + 0.5,
                              torch.arange(W, device=self.device, dtype=torch.float32) + 0.5, indexing="ij")
        uv = torch.stack([u.reshape(-1), v.reshape(-1)], -1)
        o, d = cams.pixel_rays(torch.zeros(H * W, dtype=torch.long, device=self.device), uv)
        return o.reshape(H, W, 3), d.reshape(H, W, 3)

    def __repr__(self) -> str:
        n = len(self)
        if n == 0:
            return "Cameras(0)"
        return (f"Cameras(n={n}, size={int(self.width[0])}x{int(self.height[0])}, "
                f"fx={float(self.fx.min()):.2f}..{float(self.fx.max()):.2f}, "
                f"distortion={'yes' if self.dist is not None else 'no'})")
