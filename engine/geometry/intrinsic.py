"""Intrinsic Delaunay triangulation by edge flips, and operators from edge lengths.

An intrinsic triangulation keeps the vertices of a mesh and its surface (the metric), but may
connect vertices by geodesic edges that are not mesh edges. Flipping every non-Delaunay edge
(sum of opposite angles > pi) gives the intrinsic Delaunay triangulation, whose cotan Laplacian
has non-negative weights (a maximum principle), which is what makes the heat method robust on
meshes with obtuse triangles (Sharp & Crane 2020; potpourri3d's ``use_robust=True``).

Representation: ``F`` ``(m, 3)`` vertex indices (a face may repeat a vertex intrinsically),
``lengths`` ``(m, 3)`` where ``lengths[f, c]`` is the length of the edge opposite corner ``c``,
and ``twin`` ``(m, 3)``: ``3 * g + d`` for the face/corner across that edge, ``-1`` on boundary
and non-manifold edges (those are never flipped).

Meshes with a boundary, non-manifold edges or inconsistently oriented neighbours are first
replaced by their *tufted cover* (:func:`tufted_cover`, Sharp & Crane 2020, Sec. 4): two copies
of every face, one per orientation, glued so that every edge of the cover has exactly two
consistently oriented faces. The cover is a closed oriented surface, so every edge of it can be
flipped, including the ones on the input's boundary; operators built on it count each face twice
and are halved. This is what potpourri3d / geometry-central's robust heat method does.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["intrinsic_delaunay", "intrinsic_delaunay_reference", "lengths_from_positions", "cotan_from_lengths", "areas_from_lengths",
           "gradient_from_lengths", "tufted_cover", "needs_cover", "mean_intrinsic_edge_length", "mollify",
           "merge_cover_copies"]


def lengths_from_positions(V: np.ndarray, F: np.ndarray) -> np.ndarray:
    """``(m, 3)`` edge lengths, ``[f, c]`` = length of the edge opposite corner ``c``."""
    return np.stack([np.linalg.norm(V[F[:, (c + 2) % 3]] - V[F[:, (c + 1) % 3]], axis=1) for c in range(3)], axis=1)


def areas_from_lengths(lengths: np.ndarray) -> np.ndarray:
    """Heron's formula (stable ordering), ``(m,)``."""
    a, b, c = np.sort(lengths, axis=1)[:, ::-1].T  # a >= b >= c
    s = (a + (b + c)) * (c - (a - b)) * (c + (a - b)) * (a + (b - c))
    return 0.25 * np.sqrt(np.maximum(s, 0.0))


def _cots(lengths: np.ndarray, areas: np.ndarray) -> np.ndarray:
    l2 = lengths**2
    tot = l2.sum(axis=1, keepdims=True)
    return (tot - 2 * l2) / (4.0 * areas[:, None])  # cot of the angle at each corner


def cotan_from_lengths(F: np.ndarray, lengths: np.ndarray, n: int, weights: np.ndarray | None = None) -> sp.csr_matrix:
    """PSD cotan Laplacian from intrinsic lengths (same convention as ``cotan_laplacian``);
    ``weights`` ``(m,)`` scales each face's contribution (default 1)."""
    w = 0.5 * _cots(lengths, areas_from_lengths(lengths))
    if weights is not None:
        w = w * np.asarray(weights, dtype=np.float64)[:, None]
    I = np.concatenate([F[:, 1], F[:, 2], F[:, 0]])
    J = np.concatenate([F[:, 2], F[:, 0], F[:, 1]])
    w = np.concatenate([w[:, 0], w[:, 1], w[:, 2]])
    return sp.csr_matrix((np.concatenate([-w, -w, w, w]), (np.concatenate([I, J, I, J]), np.concatenate([J, I, I, J]))),
                         shape=(n, n))


def gradient_from_lengths(F: np.ndarray, lengths: np.ndarray, n: int):
    """Face gradient in each face's own 2D layout: ``(G (2m, n), areas (m,))``.

    Corner 0 at the origin, corner 1 on the +x axis, corner 2 above. With face areas ``A``,
    ``G.T @ diag(repeat(A, 2)) @ G`` equals :func:`cotan_from_lengths`.
    """
    m = len(F)
    l0, l1, l2 = lengths.T
    x2 = (l1**2 + l2**2 - l0**2) / (2 * l2)
    y2 = np.sqrt(np.maximum(l1**2 - x2**2, 0.0))
    P = np.zeros((m, 3, 2))
    P[:, 1, 0] = l2
    P[:, 2, 0], P[:, 2, 1] = x2, y2
    areas = 0.5 * l2 * y2
    vals = np.empty((m, 3, 2))
    for c in range(3):
        e = P[:, (c + 2) % 3] - P[:, (c + 1) % 3]  # edge opposite corner c, counter-clockwise
        vals[:, c, 0], vals[:, c, 1] = -e[:, 1], e[:, 0]  # rotate by +90 degrees
    vals /= (2 * areas)[:, None, None]
    rows = np.broadcast_to((2 * np.arange(m))[:, None, None] + np.arange(2)[None, None, :], (m, 3, 2))
    cols = np.broadcast_to(F[:, :, None], (m, 3, 2))
    return sp.csr_matrix((vals.ravel(), (rows.ravel(), cols.ravel())), shape=(2 * m, n)), areas


def _build_twins(F: np.ndarray) -> np.ndarray:
    m = len(F)
    a = np.concatenate([F[:, 1], F[:, 2], F[:, 0]])  # corner c -> edge (c+1, c+2)
    b = np.concatenate([F[:, 2], F[:, 0], F[:, 1]])
    hid = np.concatenate([3 * np.arange(m) + c for c in range(3)])
    n = int(F.max()) + 1
    key = np.minimum(a, b).astype(np.int64) * n + np.maximum(a, b)
    order = np.argsort(key, kind="stable")
    ks = key[order]
    start = np.r_[True, ks[1:] != ks[:-1]]
    grp = np.cumsum(start) - 1
    cnt = np.bincount(grp)
    twin = np.full(3 * m, -1, np.int64)
    first = np.flatnonzero(start)
    pair = first[cnt == 2]
    h1, h2 = hid[order[pair]], hid[order[pair + 1]]
    twin[h1], twin[h2] = h2, h1
    return twin.reshape(m, 3)


def _halfedge_keys(F: np.ndarray):
    """Per halfedge (id ``3 f + c``, the edge opposite corner ``c``, running from corner ``c + 1``
    to corner ``c + 2``): the undirected edge key and the direction (+1 when it runs from the
    lower to the higher vertex index)."""
    a = F[:, [1, 2, 0]].ravel()  # tail of halfedge 3 f + c is corner c + 1
    b = F[:, [2, 0, 1]].ravel()
    n = int(F.max()) + 1
    key = np.minimum(a, b).astype(np.int64) * n + np.maximum(a, b)
    return key, np.where(a < b, 1, -1)


def needs_cover(F: np.ndarray) -> bool:
    """True when the mesh has boundary edges, non-manifold edges or two neighbouring faces with
    opposite orientations, i.e. when some edge cannot be flipped on the mesh itself."""
    key, sign = _halfedge_keys(np.asarray(F, dtype=np.int64))
    order = np.argsort(key, kind="stable")
    ks = key[order]
    start = np.r_[True, ks[1:] != ks[:-1]]
    grp = np.cumsum(start) - 1
    cnt = np.bincount(grp)
    if (cnt != 2).any():
        return True
    return bool((np.bincount(grp, weights=sign[order]) != 0).any())  # two faces running the same way


def tufted_cover(F: np.ndarray, lengths: np.ndarray):
    """The tufted cover of a triangle mesh: ``(Fc (2m, 3), lc (2m, 3), twin (2m, 3))``.

    Face ``f`` of the cover is the input face ``f`` (front sheet) and face ``m + f`` the same
    triangle with the opposite orientation (back sheet, corners ``(0, 2, 1)``). Around every input
    edge its ``k`` incident faces are taken in face order; the copy of face ``i`` that runs along
    the edge from the lower to the higher vertex index is glued to the copy of face ``i + 1``
    (cyclically) that runs the other way. So a boundary edge (``k = 1``) glues a face's front to
    its back, an interior edge of a consistently oriented mesh glues fronts to fronts and backs to
    backs, and a non-manifold edge becomes a cycle of ``k`` two-face edges. ``twin`` is the flat
    halfedge table of :func:`intrinsic_delaunay` (never ``-1``): every edge of the cover has two
    faces running along it in opposite directions.
    """
    F = np.asarray(F, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.float64)
    m = len(F)
    Fc = np.concatenate([F, F[:, [0, 2, 1]]])
    lc = np.concatenate([lengths, lengths[:, [0, 2, 1]]])
    key, sign = _halfedge_keys(F)  # front halfedges, ids 3 f + c
    # back face m + f, corner c' in (0, 2, 1) order: its halfedge opposite corner c' is the front
    # halfedge opposite corner perm[c'] reversed, id 3 (m + f) + c'
    perm = np.array([0, 2, 1])
    back_of_front = (3 * (m + np.arange(m)))[:, None] + perm[None, :]  # front (f, c) -> back halfedge id
    back_of_front = back_of_front.ravel()
    front = np.arange(3 * m)
    up = np.where(sign > 0, front, back_of_front)  # the copy running low -> high
    down = np.where(sign > 0, back_of_front, front)
    order = np.lexsort((np.arange(3 * m) // 3, key))  # by edge, then by face
    ks = key[order]
    start = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
    cnt = np.diff(np.r_[start, len(ks)])
    grp_start = np.repeat(start, cnt)
    pos = np.arange(len(ks)) - grp_start
    nxt = order[grp_start + (pos + 1) % np.repeat(cnt, cnt)]
    twin = np.empty(6 * m, np.int64)
    twin[up[order]] = down[nxt]
    twin[down[nxt]] = up[order]
    return Fc, lc, twin.reshape(2 * m, 3)


def merge_cover_copies(F: np.ndarray, lengths: np.ndarray, weight: float = 0.5):
    """Merge the front and back copies of a (flipped) tufted cover that are still copies.

    ``F``, ``lengths`` are ``(2m, 3)``, face ``m + f`` having started as the back copy of face
    ``f`` (:func:`tufted_cover`; flips rewrite faces in place). Where face ``m + f`` still has the
    vertices and lengths of face ``f`` in the back order, the two contribute identically to every
    operator built from vertex indices and lengths (Laplacian, mass, gradient / divergence) and
    become face ``f`` with weight ``2 * weight``; the others (the faces flips touched, a band along
    the boundary) stay, with ``weight``. So the per-query gradient and divergence cost about what
    they cost on the mesh itself. Exact equality is required: copies that differ by round-off
    stay separate (still correct). Returns ``(F, lengths, weights)``.
    """
    F = np.asarray(F, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.float64)
    m = len(F) // 2
    perm = [0, 2, 1]
    same = (F[m:] == F[:m][:, perm]).all(axis=1) & (lengths[m:] == lengths[:m][:, perm]).all(axis=1)
    keep_back = m + np.flatnonzero(~same)
    w = np.concatenate([np.where(same, 2.0, 1.0), np.ones(len(keep_back))]) * float(weight)
    return np.concatenate([F[:m], F[keep_back]]), np.concatenate([lengths[:m], lengths[keep_back]]), w


def mean_intrinsic_edge_length(lengths: np.ndarray, twin: np.ndarray) -> float:
    """Mean length over the edges of an intrinsic triangulation: each halfedge pair counts once,
    a halfedge without twin (``-1``) once."""
    t = np.asarray(twin).ravel()
    he = np.arange(len(t))
    once = (t < 0) | (he < t)
    return float(np.asarray(lengths).ravel()[once].mean())


def _not_delaunay(lengths, f, c, g, d, tol):
    lf, lg = lengths[f], lengths[g]
    af, ag = _heron(lf), _heron(lg)
    cf = (lf[(c + 1) % 3] ** 2 + lf[(c + 2) % 3] ** 2 - lf[c] ** 2) / (4 * af)
    cg = (lg[(d + 1) % 3] ** 2 + lg[(d + 2) % 3] ** 2 - lg[d] ** 2) / (4 * ag)
    return cf + cg < -tol


def _heron(l):
    a, b, c = sorted(l, reverse=True)
    s = (a + (b + c)) * (c - (a - b)) * (c + (a - b)) * (a + (b - c))
    return 0.25 * np.sqrt(max(s, 0.0))


def mollify(lengths: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Add one constant to all lengths so every triangle inequality holds with margin
    ``eps * mean length`` (Sharp & Crane 2020, Sec. 4.5)."""
    margin = eps * float(lengths.mean())
    slack = np.min([lengths[:, (c + 1) % 3] + lengths[:, (c + 2) % 3] - lengths[:, c] for c in range(3)])
    return lengths + max(0.0, margin - slack)


def intrinsic_delaunay_reference(F: np.ndarray, lengths: np.ndarray, tol: float = 1e-12,
                                 max_flips: int | None = None, twin: np.ndarray | None = None):
    """Sequential (one flip at a time, stack-driven) version of :func:`intrinsic_delaunay`.

    Slow (a Python loop over flips: ~2 s on armadillo); kept as the reference that tests
    compare the batched version against. Same arguments and return value.
    """
    F = np.array(F, dtype=np.int64)
    lengths = np.array(lengths, dtype=np.float64)
    m = len(F)
    twin = (_build_twins(F) if twin is None else np.array(twin, dtype=np.int64)).ravel()
    max_flips = 50 * m if max_flips is None else max_flips
    # vectorised first pass: candidate halfedges whose edge is not Delaunay
    cots = _cots(lengths, areas_from_lengths(lengths)).ravel()
    has = twin >= 0
    h = np.flatnonzero(has)
    bad = h[(cots[h] + cots[twin[h]]) < -tol]
    stack = list(bad[bad < twin[bad]])
    flips = 0
    T = twin  # flat, indexed by halfedge id 3 * f + c
    while stack:
        he = int(stack.pop())
        tw = int(T[he])
        if tw < 0:
            continue
        f, c = divmod(he, 3)
        g, d = divmod(tw, 3)
        if f == g or not _not_delaunay(lengths, f, c, g, d, tol):
            continue
        c1, c2 = (c + 1) % 3, (c + 2) % 3
        a, p, q = F[f, c], F[f, c1], F[f, c2]
        b = F[g, d]
        d1, d2 = (d + 1) % 3, (d + 2) % 3
        # g traverses the shared edge q -> p: corner d1 holds q, d2 holds p (consistent orientation)
        if not (F[g, d1] == q and F[g, d2] == p):
            continue  # inconsistently oriented pair: leave this edge alone
        l_pq = lengths[f, c]
        l_qa, l_ap = lengths[f, c1], lengths[f, c2]
        l_bq, l_bp = lengths[g, d2], lengths[g, d1]  # opposite p: edge b-q; opposite q: edge b-p
        xa = (l_ap**2 + l_pq**2 - l_qa**2) / (2 * l_pq)
        ya = np.sqrt(max(l_ap**2 - xa**2, 0.0))
        xb = (l_bp**2 + l_pq**2 - l_bq**2) / (2 * l_pq)
        yb = -np.sqrt(max(l_bp**2 - xb**2, 0.0))
        l_ab = float(np.hypot(xa - xb, ya - yb))
        # outer twins before overwriting
        t_ap, t_qa = T[3 * f + c2], T[3 * f + c1]
        t_bq, t_pb = T[3 * g + d2], T[3 * g + d1]  # g corner d2 (p) is opposite edge b-q
        # new faces f' = (a, p, b), g' = (b, q, a)
        F[f] = (a, p, b)
        lengths[f] = (l_bp, l_ab, l_ap)
        F[g] = (b, q, a)
        lengths[g] = (l_qa, l_ab, l_bq)
        # halfedges: f'0 opp a = p-b, f'1 opp p = a-b (new edge), f'2 opp b = a-p
        #            g'0 opp b = q-a, g'1 opp q = a-b (new edge), g'2 opp a = b-q
        links = ((3 * f + 0, t_pb), (3 * f + 2, t_ap), (3 * g + 0, t_qa), (3 * g + 2, t_bq))
        for hnew, tout in links:
            T[hnew] = tout
            if tout >= 0:
                T[tout] = hnew
        T[3 * f + 1], T[3 * g + 1] = 3 * g + 1, 3 * f + 1
        flips += 1
        if flips > max_flips:
            raise RuntimeError(f"intrinsic Delaunay flipping did not converge after {max_flips} flips")
        for hnew, _ in links:
            stack.append(hnew)
    return F, lengths, flips


def _corner_cots(lengths: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``(k,)`` cotangent of the angle at corner ``c[i]`` of the triangles ``lengths (k, 3)``."""
    k = np.arange(len(c))
    l0, l1, l2 = lengths[k, c], lengths[k, (c + 1) % 3], lengths[k, (c + 2) % 3]
    return (l1 * l1 + l2 * l2 - l0 * l0) / (4.0 * areas_from_lengths(lengths))


def intrinsic_delaunay(F: np.ndarray, lengths: np.ndarray, tol: float = 1e-12, max_flips: int | None = None,
                       twin: np.ndarray | None = None, return_twin: bool = False):
    """Flip non-Delaunay interior manifold edges until none remain.

    Returns ``(F, lengths, n_flips)`` (new arrays), and the final twin table as a fourth item
    when ``return_twin``. Boundary and non-manifold edges are fixed, and so are edges whose two
    faces are oriented inconsistently. ``twin`` (``(m, 3)``, see the module docstring) gives the
    gluing explicitly (e.g. from :func:`tufted_cover`); by default it is found from ``F``.

    Batched: each round takes every edge still in question, keeps those that are not Delaunay
    (sum of the cotangents of the two opposite angles ``< -tol``), picks a set of them that
    share no face (an edge claims its two faces; the lowest halfedge id wins a face, so each
    round flips at least one edge) and flips them all with array operations. The edges next to
    a flip are the candidates of the next round. The result is the same intrinsic Delaunay
    triangulation as :func:`intrinsic_delaunay_reference` (unique up to co-circular ties).
    """
    F = np.array(F, dtype=np.int64)
    lengths = np.array(lengths, dtype=np.float64)
    m = len(F)
    T = (_build_twins(F) if twin is None else np.array(twin, dtype=np.int64)).ravel()  # flat, id 3 * f + c
    max_flips = 50 * m if max_flips is None else max_flips
    he = np.flatnonzero(T >= 0)
    cand = he[he < T[he]]
    flips = 0
    claim = np.full(m, np.iinfo(np.int64).max)
    while len(cand):
        tw = T[cand]
        f, c = np.divmod(cand, 3)
        g, d = np.divmod(tw, 3)
        c1, c2, d1, d2 = (c + 1) % 3, (c + 2) % 3, (d + 1) % 3, (d + 2) % 3
        a, p, q, b = F[f, c], F[f, c1], F[f, c2], F[g, d]
        ok = (f != g) & (F[g, d1] == q) & (F[g, d2] == p)
        ok &= _corner_cots(lengths[f], c) + _corner_cots(lengths[g], d) < -tol
        cand, f, c, g, d, c1, c2, d1, d2, a, p, q, b = (x[ok] for x in (cand, f, c, g, d, c1, c2, d1, d2, a, p, q, b))
        if not len(cand):
            break
        # independent set: an edge flips when it holds the lowest claim on both of its faces
        np.minimum.at(claim, f, cand)
        np.minimum.at(claim, g, cand)
        win = (claim[f] == cand) & (claim[g] == cand)
        claim[f] = claim[g] = np.iinfo(np.int64).max
        rest = cand[~win]
        f, c, g, d, c1, c2, d1, d2, a, p, q, b = (x[win] for x in (f, c, g, d, c1, c2, d1, d2, a, p, q, b))
        k = len(f)
        flips += k
        if flips > max_flips:
            raise RuntimeError(f"intrinsic Delaunay flipping did not converge after {max_flips} flips")
        lf, lg = lengths[f], lengths[g]
        r = np.arange(k)
        l_pq, l_qa, l_ap = lf[r, c], lf[r, c1], lf[r, c2]
        l_bq, l_bp = lg[r, d2], lg[r, d1]  # opposite p: edge b-q; opposite q: edge b-p
        # lay both triangles out in the plane, the shared edge p -> q on the x axis
        xa = (l_ap**2 + l_pq**2 - l_qa**2) / (2 * l_pq)
        ya = np.sqrt(np.maximum(l_ap**2 - xa**2, 0.0))
        xb = (l_bp**2 + l_pq**2 - l_bq**2) / (2 * l_pq)
        yb = -np.sqrt(np.maximum(l_bp**2 - xb**2, 0.0))
        l_ab = np.hypot(xa - xb, ya - yb)
        # old outer halfedges -> their ids after the flip; faces become f' = (a, p, b), g' = (b, q, a)
        old = np.concatenate([3 * g + d1, 3 * f + c2, 3 * f + c1, 3 * g + d2])  # edges p-b, a-p, q-a, b-q
        new = np.concatenate([3 * f + 0, 3 * f + 2, 3 * g + 0, 3 * g + 2])
        outer = T[old]
        remap = np.arange(3 * m)
        remap[old] = new
        F[f] = np.stack([a, p, b], axis=1)
        lengths[f] = np.stack([l_bp, l_ab, l_ap], axis=1)
        F[g] = np.stack([b, q, a], axis=1)
        lengths[g] = np.stack([l_qa, l_ab, l_bq], axis=1)
        T[3 * f + 1], T[3 * g + 1] = 3 * g + 1, 3 * f + 1
        has = outer >= 0
        tout = np.where(has, remap[np.maximum(outer, 0)], -1)
        T[new] = tout
        T[tout[has]] = new[has]
        # next round: the four edges around each flip, plus this round's losers (ids unchanged
        # unless a winner rewrote their face, in which case they are among the four edges)
        nxt = np.concatenate([rest[(remap[rest] == rest)], new])
        nxt = nxt[T[nxt] >= 0]
        cand = np.unique(np.minimum(nxt, T[nxt]))
    if return_twin:
        return F, lengths, flips, T.reshape(m, 3)
    return F, lengths, flips
