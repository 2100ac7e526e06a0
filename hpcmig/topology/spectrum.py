"""Lower estimates of the smallest Laplacian eigenvalues of the rank graph (spectral bound).

Design note: this module owns one computation, `smallest_eigenvalues(w, count)`: values
mu_1 <= ... <= mu_count with mu_i <= lambda_i, the i-th smallest eigenvalue of the Laplacian
of the symmetric weight matrix `w`. It maps nothing and prints nothing. An estimate must
never exceed the eigenvalue it stands for, whichever solver ran and however far it got:

* the zero eigenvalues are known exactly (one per connected component) and their vectors
  (component indicators) are deflated;
* every other estimate is a Ritz value minus the norm of the residual of the Ritz vectors
  (and a rounding margin). For an orthonormal block X with Ritz values theta and residual
  R = L X - X diag(theta) there are eigenvalues lambda_j(i), all distinct, with
  |theta_i - lambda_j(i)| <= ||R||_2 (Kahan); ||R||_F is used. A solver stopped early
  therefore only loosens the bound.

What no solver short of a factorisation with an inertia count certifies is that the block
saw the smallest eigenvalues and missed none below them. Both solvers are block methods
(LOBPCG) with more vectors than wanted, which find every copy of a repeated eigenvalue
(126 at lambda_2 of a 64 x 64 pencil FFT) where single-vector Lanczos (ARPACK, the previous
method) can drop one; they start random with a fixed seed, so results are deterministic.

* up to DENSE_LIMIT ranks: dense `eigvalsh`;
* ranks that reach each other in a few breadth-first levels (all-to-all in rows and
  columns, random partners): LOBPCG unpreconditioned, sparse products only; the small
  eigenvalues stand apart and it converges in a few iterations, where a sparse LU fills in
  (shift-invert took 5 s at 4,096 pencil-FFT ranks and 300 s at 16,384);
* grids and meshes (small levels, small separators): LOBPCG preconditioned by the sparse
  LU of L + SHIFT I, which stays sparse there; their small eigenvalues cluster and plain
  LOBPCG stalls. An expander whose plain LOBPCG stalls after PROBE_ITERS goes this way too.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp

DENSE_LIMIT = 400
GUARD = 4  # block vectors beyond those wanted: the wanted ones converge faster
PROBE_ITERS = 5  # LOBPCG iterations before choosing between more of them and shift-invert
MORE_ITERS = 90  # further LOBPCG iterations when the probe was converging
REL_TOL = 1e-3  # accepted correction, relative to the smallest non-zero Ritz value
SEED = 0
SEPARATOR_SHARE = 0.25  # widest breadth-first level, as a share of the ranks
SHIFTED_ITERS = 8  # preconditioned LOBPCG: iterations per round (a correction check each)
SHIFTED_ROUNDS = 3
SHIFT = 1e-6  # shift-invert: factor L + SHIFT I (L scaled to eigenvalues in [0, 2])
ROUNDING = 1e-12  # subtracted from every estimate of the scaled L (||L|| <= 2)


def laplacian(w: sp.csr_array) -> sp.csr_array:
    """L = D - W of a symmetric weight matrix without diagonal."""
    deg = np.asarray(w.sum(axis=1)).ravel()
    return sp.csr_array(sp.diags_array(deg) - w)


def component_vectors(w: sp.csr_array) -> np.ndarray:
    """Orthonormal basis of the Laplacian's null space: one normalised indicator per component."""
    from scipy.sparse.csgraph import connected_components

    count, labels = connected_components(w, directed=False)
    sizes = np.bincount(labels, minlength=count).astype(np.float64)
    y = np.zeros((w.shape[0], count))
    y[np.arange(w.shape[0]), labels] = 1.0 / np.sqrt(sizes[labels])
    return y


def corrected_ritz(lap: sp.csr_array, y: np.ndarray, x: np.ndarray, take: int
                   ) -> tuple[np.ndarray, float]:
    """The `take` smallest Ritz values of `lap` on span(x) minus y, and the correction.

    `y` (orthonormal, spanning null vectors) joins the block with Ritz values 0; the returned
    correction is the Frobenius norm of the residual of the whole block [y, chosen vectors].
    """
    q = _orthonormal(x - y @ (y.T @ x))
    h = q.T @ (lap @ q)
    theta, u = np.linalg.eigh(0.5 * (h + h.T))
    q = q @ u[:, :take]
    theta = theta[:take]
    resid = lap @ q - q * theta
    rho = float(np.hypot(np.linalg.norm(resid), np.linalg.norm(lap @ y)))
    return theta, rho


def _orthonormal(x: np.ndarray) -> np.ndarray:
    """Orthonormal basis of span(x) by Cholesky QR, twice (a tall LAPACK QR is slow here)."""
    for _ in range(2):
        try:
            r = np.linalg.cholesky(x.T @ x)
        except np.linalg.LinAlgError:
            return np.asarray(np.linalg.qr(x)[0])
        x = np.linalg.solve(r, x.T).T
    return x


def smallest_eigenvalues(w: sp.csr_array, count: int) -> np.ndarray:
    """Lower estimates of the `count` smallest Laplacian eigenvalues of `w`, ascending."""
    n = w.shape[0]
    count = min(count, n)
    if n <= DENSE_LIMIT:
        lap = laplacian(w).toarray()
        vals = np.linalg.eigvalsh(lap)[:count] - ROUNDING * max(float(lap.max()), 0.0)
        return np.maximum(vals, 0.0)
    y = component_vectors(w)
    zeros = y.shape[1]
    if zeros >= count or w.nnz == 0:
        return np.zeros(count)
    lap = laplacian(w)
    scale = float(lap.diagonal().max())
    lap = sp.csr_array(lap / scale)
    take = count - zeros
    rng = np.random.default_rng(SEED)
    if separable(w):
        est = _by_shift_invert(lap, y, take, rng)
    else:
        est, stalled = _by_lobpcg(lap, y, take, rng)
        if stalled:  # both are lower estimates
            est = np.maximum(est, _by_shift_invert(lap, y, take, rng))
    est = np.maximum(est - ROUNDING, 0.0)
    return np.concatenate([np.zeros(zeros), np.sort(est)]) * scale


def separable(w: sp.csr_array) -> bool:
    """Do breadth-first levels stay small (at most SEPARATOR_SHARE of the ranks)?

    Levels from a pseudo-peripheral rank (the last one reached from rank 0): a grid or mesh
    has levels of sqrt(N) (2D) or N^(2/3) (3D) ranks, and a sparse LU of its Laplacian stays
    cheap; an expander (all-to-all in rows and columns, random partners) reaches most ranks
    in two or three levels, and its LU fills in.
    """
    _, last = level_widths(w, 0)
    widths, _ = level_widths(w, last)
    return bool(widths.max() <= SEPARATOR_SHARE * w.shape[0])


def level_widths(w: sp.csr_array, source: int) -> tuple[np.ndarray, int]:
    """Ranks at each breadth-first distance from `source`, and one rank of the last level."""
    seen = np.zeros(w.shape[0], dtype=bool)
    seen[source] = True
    frontier = np.array([source])
    widths = []
    while True:
        widths.append(len(frontier))
        reached = np.zeros(w.shape[0], dtype=bool)
        reached[w[frontier].indices] = True
        nxt = np.flatnonzero(reached & ~seen)
        if not len(nxt):
            return np.array(widths), int(frontier[0])
        seen[nxt] = True
        frontier = nxt


def _by_lobpcg(lap: sp.csr_array, y: np.ndarray, take: int, rng: np.random.Generator
               ) -> tuple[np.ndarray, bool]:
    """Corrected LOBPCG estimates, and whether it stalled (correction >= the value)."""
    x = _lobpcg(lap, y, rng.standard_normal((lap.shape[0], take + GUARD)), PROBE_ITERS)
    theta, rho = corrected_ritz(lap, y, x, take)
    if rho <= REL_TOL * theta[0]:
        return np.maximum(theta - rho, 0.0), False
    if rho >= theta[0]:
        return np.maximum(theta - rho, 0.0), True
    theta2, rho2 = corrected_ritz(lap, y, _lobpcg(lap, y, x, MORE_ITERS), take)
    return np.maximum(np.maximum(theta - rho, theta2 - rho2), 0.0), False


def _by_shift_invert(lap: sp.csr_array, y: np.ndarray, take: int, rng: np.random.Generator
                     ) -> np.ndarray:
    """Corrected estimates of LOBPCG preconditioned by (L + SHIFT I)^-1 (a sparse LU).

    A block method, unlike single-vector Lanczos (ARPACK), cannot miss a copy of a repeated
    eigenvalue: a 32 x 32 x 16 grid's triple lambda_5 lost one copy at ARPACK's tol=1e-6.
    L + SHIFT I is positive definite, so its LU needs no pivoting: symmetric mode on a
    minimum degree ordering of L + L^T fills in 2-4x less than SuperLU's default, and single
    precision is enough for a preconditioner (the correction is computed in double).
    """
    from scipy.sparse.linalg import LinearOperator, splu

    n = lap.shape[0]
    shifted = sp.csc_array((lap + SHIFT * sp.eye_array(n, format="csr")).astype(np.float32))
    lu = splu(shifted, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
              options={"SymmetricMode": True})

    def apply(v: np.ndarray) -> np.ndarray:
        return lu.solve(np.asarray(v, dtype=np.float32)).astype(np.float64)

    solve = LinearOperator((n, n), matvec=apply, matmat=apply, dtype=np.float64)
    x = rng.standard_normal((n, take + GUARD))
    best = np.zeros(take)
    for _ in range(SHIFTED_ROUNDS):
        x = _lobpcg(lap, y, x, SHIFTED_ITERS, solve)
        theta, rho = corrected_ritz(lap, y, x, take)
        best = np.maximum(best, theta - rho)
        if rho <= REL_TOL * theta[0]:
            break
    return best


def _lobpcg(lap: sp.csr_array, y: np.ndarray, x: np.ndarray, iters: int,
            precondition: object = None) -> np.ndarray:
    from scipy.sparse.linalg import lobpcg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "did not converge": the correction accounts for it
        _, vecs = lobpcg(lap, x, M=precondition, Y=y, largest=False, tol=1e-9, maxiter=iters)
    return np.asarray(vecs)
