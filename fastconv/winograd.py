"""Winograd minimal filtering F(m x m, 3 x 3): the transform matrices, once.

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks"
(arXiv 1509.09308). One output tile ``Y`` (m x m) of the correlation of an
input tile ``d`` (alpha x alpha, alpha = m + r - 1) with a filter ``g`` (r x r) is

    Y = A^T [ (G g G^T) (.) (B^T d B) ] A

with ``(.)`` the elementwise product: alpha^2 multiplications instead of
m^2 r^2. Every backend reads ``G``, ``B^T`` and ``A^T`` from :data:`TRANSFORMS`.

The matrices come from the Cook-Toom construction on ``alpha - 1`` finite
interpolation points ``p_i`` and the point at infinity. Correlation is the
transpose of polynomial multiplication ``s(x) = g(x) h(x)``, computed by
evaluating both factors at the points, multiplying, and interpolating:

- ``A^T[k, i] = p_i^k`` evaluates the m-tap output polynomial; the column of
  the point at infinity picks the leading coefficient, ``e_{m-1}``;
- ``G[i, j] = p_i^j / f_i`` evaluates the filter, scaled by
  ``f_i = prod_{j != i} (p_i - p_j)``; its row at infinity is ``e_{r-1}``;
- ``B^T[i, :]`` holds the coefficients of ``M_i(x) = prod_{j != i} (x - p_j)``
  (the Lagrange numerators, whose ``1/f_i`` moved into ``G``), and its last row
  those of ``M(x) = prod_j (x - p_j)``, which restores the leading term.

The points decide the float32 accuracy. Small points keep the powers in
``A^T`` and the coefficients of ``B^T`` close to 1: for F(4x4) the points
``0, +-sqrt(2)/2, +-sqrt(2)`` (as in ncnn) are several times more accurate
than ``0, +-1, +-2``; F(6x6) uses ``0, +-1/2, +-1, +-2`` (Lavin & Gray).
"""

import math

import numpy as np

R = 3  # filter size: these algorithms are for 3x3 kernels

POINTS = {
    2: (0.0, 1.0, -1.0),
    4: (0.0, math.sqrt(2) / 2, -math.sqrt(2) / 2, math.sqrt(2), -math.sqrt(2)),
    6: (0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -2.0),
}


def cook_toom(points, m, r=R):
    """``(G, B^T, A^T)`` of F(m, r) for the finite ``points`` (and infinity), in float64."""
    points = np.asarray(points, dtype=np.float64)
    alpha = m + r - 1
    if points.size != alpha - 1:
        raise ValueError(f"cook_toom: F({m},{r}) needs {alpha - 1} finite points, got {points.size}")
    at = np.zeros((m, alpha))
    g = np.zeros((alpha, r))
    bt = np.zeros((alpha, alpha))
    for i, p in enumerate(points):
        others = np.delete(points, i)
        f_i = np.prod(p - others)
        at[:, i] = p ** np.arange(m)
        g[i] = p ** np.arange(r) / f_i
        # np.poly gives the coefficients of prod (x - root), highest power first.
        bt[i, :alpha - 1] = np.poly(others)[::-1]
    at[m - 1, alpha - 1] = 1.0
    g[alpha - 1, r - 1] = 1.0
    bt[alpha - 1] = np.poly(points)[::-1]
    return g, bt, at


class Transforms:
    """The matrices of F(m x m, 3 x 3) in both float dtypes."""

    def __init__(self, m):
        self.m = m
        self.alpha = m + R - 1
        g, bt, at = cook_toom(POINTS[m], m)
        self._matrices = {
            np.dtype(np.float64): (g, bt, at),
            np.dtype(np.float32): tuple(a.astype(np.float32) for a in (g, bt, at)),
        }
        for matrices in self._matrices.values():
            for a in matrices:
                a.setflags(write=False)

    def matrices(self, dtype):
        """``(G, B^T, A^T)`` in ``dtype``."""
        return self._matrices[np.dtype(dtype)]


TRANSFORMS = {m: Transforms(m) for m in POINTS}


# ---------------------------------------------------------------------------
# Filter transform U = G g G^T, cached
# ---------------------------------------------------------------------------

def rotated_weights(w, groups):
    """The weights of a convolution's data gradient: each group's input and output
    channels swapped, the kernel rotated 180 degrees: (K, C/g, r, r) -> (C, K/g, r, r)."""
    k, c_per_group = w.shape[:2]
    wg = w.reshape(groups, k // groups, c_per_group, *w.shape[2:])
    return np.ascontiguousarray(np.swapaxes(wg, 1, 2)[:, :, :, ::-1, ::-1]
                                .reshape(groups * c_per_group, k // groups, *w.shape[2:]))


def filter_transform(w, m, groups, rotated=False, panel=0):
    """``U[g, a*alpha + b, k, c] = (G w[g*Kg + k, c] G^T)[a, b]``, as (groups, alpha^2, Kg, Cg).

    With ``rotated``, the weights of the data gradient instead: each group's
    input and output channels swapped and the kernel rotated 180 degrees, so
    that ``dL/dX`` is a Winograd forward pass over ``dL/dY``.

    With a ``panel`` width, packed for the compiled kernels' register tiles:
    (groups, alpha^2, panels*Cg, panel), panel p holding ``U[g, ab, p*panel + j, c]``
    at row ``p*Cg + c``, column j, the last panel padded with zeros.
    """
    if rotated:
        w = rotated_weights(w, groups)
    k, c_per_group = w.shape[:2]
    g_mat = TRANSFORMS[m].matrices(w.dtype)[0]
    alpha = m + R - 1
    # (G g G^T)[a, b] = sum_ij G[a, i] G[b, j] g[i, j]: one matrix product of
    # kron(G, G) (alpha^2 x 9) with every filter as a column, which BLAS does
    # an order of magnitude faster than 2 x K x C small products
    u = np.kron(g_mat, g_mat) @ w.reshape(k * c_per_group, R * R).T
    u = u.reshape(alpha * alpha, groups, k // groups, c_per_group).transpose(1, 0, 2, 3)
    if not panel:
        return np.ascontiguousarray(u)
    panels = -(-(k // groups) // panel)
    packed = np.zeros((groups, alpha * alpha, panels, c_per_group, panel), w.dtype)
    for p in range(panels):
        block = u[:, :, p * panel:(p + 1) * panel]
        packed[:, :, p, :, :block.shape[2]] = block.transpose(0, 1, 3, 2)
    return packed.reshape(groups, alpha * alpha, panels * c_per_group, panel)


class FilterCache:
    """Filter transforms of recently used weights.

    A layer in inference runs the same weights again and again; their
    transform is computed once. An entry is found by the weight array's
    identity and used only if the array still holds exactly the values it was
    computed from (a compare against a saved copy, far cheaper than the
    transform; the compiled backends compare bytes on their threads), so a
    weight changed in place never meets a stale transform.
    """

    def __init__(self, size=64):
        self.size = size
        self._entries = {}

    def get(self, w, m, groups, rotated=False, panel=0, same=np.array_equal):
        """``filter_transform(w, m, groups, rotated, panel)``, computed or reused where
        ``same(saved copy, w)``."""
        key = (id(w), w.shape, w.dtype.str, m, groups, rotated, panel)
        entry = self._entries.pop(key, None)
        if entry is not None and same(entry[0], w):
            self._entries[key] = entry          # most recently used last
            return entry[1]
        u = filter_transform(w, m, groups, rotated, panel)
        self._entries[key] = (w.copy(), u)
        while len(self._entries) > self.size:
            self._entries.pop(next(iter(self._entries)))
        return u


FILTERS = FilterCache()
