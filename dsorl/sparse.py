"""Sparse transitions with a fixed fan-out: `successors[..., K]` and `probs[..., K]`.

Row `i` of the transition kernel (a state `s` of a chain, a pair `(s, a)` of an MDP) moves
to `successors[i, k]` with probability `probs[i, k]`; padding entries carry probability 0
(any in-range successor; the constructors use the row's own state, which keeps the gather
local), and a successor may repeat (its probabilities add). An MDP's kernel is
`[S, A, K]`; the chain a policy induces is `[S, A K]` (`induced`), still sparse, with no
merge of duplicate successors.

Why this form: every row has the same length, so the products are one gather
(`P v = sum_k probs * v[successors]`) and one segment sum (`P^T u`), shapes are static
(`jit` compiles them once, `vmap` batches them), and a GPU gathers the padded rows
coalesced; CSR's ragged rows need a segment reduction in the forward product too.
Measured on this 2-core CPU (float64, S = 10^5, 40 entries a row): the gather product takes
2.9 ms (SciPy CSR 4.2 ms), the segment-sum transpose 5.3 ms; at S = 10^6 they take 0.12 s
each (SciPy 0.055 s: past the caches the random gather is memory-bound on both sides).

`SparseTransitions` stands wherever a dense `P` does (`MDP.P`, `Chain.P`): `P @ v`,
`u @ P`, `.shape` (the dense shape it represents), `.dtype` behave as for the dense array,
so code written with those products runs unchanged on either form. It also carries the
settings of the Krylov solves (`dsorl.krylov.Krylov`) that every quantity of a sparse
chain needs: the tolerance is chosen where the MDP is built and reaches every solve.
"""
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dsorl import _checks
from dsorl.krylov import Krylov

__all__ = ["SparseTransitions", "validate_sparse", "from_dense", "from_scipy", "is_sparse",
           "self_loops", "Merger", "merger"]

Array = jax.Array


class SparseTransitions:
    """A transition kernel with `K` entries a row: `successors[..., K]` (int32) and
    `probs[..., K]`; dense shape `successors.shape[:-1] + (S,)` with `S =
    successors.shape[0]`. Built from concrete arrays, shapes and index dtype are checked
    here; the values (indices in range, probabilities) by the `MDP` or `Chain` that takes
    it (`validate_sparse`, which knows the action mask).
    `krylov`: the settings of the solves of the chains it induces (static).
    """

    __array_ufunc__ = None  # `numpy_array @ P` defers to `P.__rmatmul__`

    def __init__(self, successors, probs, *, krylov: Krylov = Krylov(), dtype=None):
        dtype = dtype or _checks.float_dtype(probs)
        successors = jnp.asarray(successors)
        probs = jnp.asarray(probs, dtype)
        if _checks.is_concrete(successors, probs):
            # the shapes and index type only: the values are checked once, by the `MDP` or
            # `Chain` that takes the kernel (`validate_sparse`, which knows the action mask);
            # a second pass over 10^7 entries here doubled the peak memory at S = 10^6
            _check_structure(successors, probs)
            successors = successors.astype(jnp.int32)
        self.successors, self.probs, self.krylov = successors, probs, krylov

    # -- what a dense P offers -------------------------------------------------------------
    @property
    def n_states(self) -> int:
        return self.successors.shape[0]

    @property
    def shape(self) -> tuple:
        return tuple(self.successors.shape[:-1]) + (self.n_states,)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def dtype(self):
        return self.probs.dtype

    @property
    def fan_out(self) -> int:
        return self.successors.shape[-1]

    def __matmul__(self, v: Array) -> Array:
        """`P v`: `[S]` -> the row shape (`[S]` for a chain, `[S, A]` for an MDP); `v[S, n]`
        gives `[..., n]`."""
        v = jnp.asarray(v)
        # successors are checked in range at construction: skipping the negative-index
        # wrap saves an [S, K] int copy (a select) per product, which at S = 1e6 is memory
        gathered = v.at[self.successors].get(mode="promise_in_bounds",
                                             wrap_negative_indices=False)
        if v.ndim == 2:
            return jnp.sum(self.probs[..., None] * gathered, axis=-2)
        return jnp.sum(self.probs * gathered, axis=-1)

    def __rmatmul__(self, u: Array) -> Array:
        """`u P` (that is `P^T u`): `u` of the row shape -> `[S]`, by a segment sum."""
        u = jnp.asarray(u)
        weights = (self.probs * u[..., None]).reshape(-1)
        return jax.ops.segment_sum(weights, self.successors.reshape(-1),
                                   num_segments=self.n_states)

    def __mul__(self, scale) -> "SparseTransitions":
        """`c P` for a scalar `c` (as in `gamma * P @ v`): the kernel scaled, still sparse."""
        if jnp.ndim(scale) != 0:
            raise TypeError("a sparse kernel multiplies by scalars only; use `P @ v` for products.")
        return _unchecked(self.successors, scale * self.probs, self.krylov)

    __rmul__ = __mul__

    @property
    def T(self) -> "_Transposed":
        return _Transposed(self)

    def astype(self, dtype) -> "SparseTransitions":
        return _unchecked(self.successors, self.probs.astype(dtype), self.krylov)

    # -- sparse operations -------------------------------------------------------------------
    def induced(self, pi: Array) -> "SparseTransitions":
        """The chain kernel `P_pi[s] = sum_a pi[s, a] P[s, a]` of an `[S, A, K]` kernel, as
        `[S, A K]` entries (no merging of repeated successors)."""
        S, A, K = self.successors.shape
        return _unchecked(self.successors.reshape(S, A * K),
                          (pi[..., None] * self.probs).reshape(S, A * K), self.krylov)

    def masked(self, action_mask: Optional[Array]) -> "SparseTransitions":
        """Zero the rows of masked actions (`action_mask[S, A]` False)."""
        if action_mask is None:
            return self
        return _unchecked(self.successors, jnp.where(action_mask[..., None], self.probs, 0),
                          self.krylov)

    def to_dense(self) -> Array:
        """The dense kernel (for checks and small problems: `O(S^2)` memory)."""
        rows = self.successors.reshape(-1, self.fan_out)
        dense = jnp.zeros((rows.shape[0], self.n_states), self.dtype)
        dense = dense.at[jnp.arange(rows.shape[0])[:, None], rows].add(
            self.probs.reshape(rows.shape))
        return dense.reshape(self.shape)

    def support(self):
        """`scipy.sparse.csr_matrix` `[S, S]` of the edges `P[s, s'] > 0` (summed over
        actions for an MDP kernel); concrete values only (`dsorl.graph`)."""
        import scipy.sparse

        succ = np.asarray(self.successors).reshape(self.n_states, -1)
        positive = np.asarray(self.probs).reshape(succ.shape) > 0
        src = np.broadcast_to(np.arange(self.n_states)[:, None], succ.shape)[positive]
        return scipy.sparse.csr_matrix((np.ones(src.size, np.int8), (src, succ[positive])),
                                       shape=(self.n_states, self.n_states))

    def __repr__(self):
        return (f"SparseTransitions(shape={self.shape}, fan_out={self.fan_out},"
                f" dtype={self.dtype}, krylov={self.krylov})")


class _Transposed:
    """`P.T`, for writing `P.T @ u` as with a dense array."""

    def __init__(self, P: SparseTransitions):
        self._P = P

    def __matmul__(self, u):
        return u @ self._P


def _flatten(P: SparseTransitions):
    return ((jax.tree_util.GetAttrKey("successors"), P.successors),
            (jax.tree_util.GetAttrKey("probs"), P.probs)), P.krylov


def _unflatten(krylov, children):
    return _unchecked(*children, krylov)


def _unchecked(successors, probs, krylov) -> SparseTransitions:
    P = object.__new__(SparseTransitions)
    P.successors, P.probs, P.krylov = successors, probs, krylov
    return P


jax.tree_util.register_pytree_with_keys(SparseTransitions, _flatten, _unflatten)


def is_sparse(P) -> bool:
    """True for a `SparseTransitions` kernel (False for a dense array)."""
    return isinstance(P, SparseTransitions)


class Merger:
    """Sums the repeated successors of each row of a fixed sparse structure: `merge(P)` is
    the same kernel with every successor of a row listed once (the rest of the row padding:
    the row's own state, probability 0). The plan (`merger`) is made once from the
    structure, on the host; `merge` is then a gather and a segment sum, jittable and
    differentiable. Quantities of the chain's rows, such as `sum_x' P log P` (the chain KL
    and Fisher of DSO), need it: an induced chain `[S, A K]` lists a successor once per
    action that reaches it, and a log of such a split entry is not `log P(x'|x)`."""

    def __init__(self, successors):
        succ = np.asarray(successors)
        S, K = succ.shape
        order = np.argsort(succ, axis=1, kind="stable")
        ordered = np.take_along_axis(succ, order, axis=1)
        first = np.ones_like(ordered, bool)
        first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
        group = np.cumsum(first, axis=1) - 1                   # slot of each entry's successor
        merged = np.repeat(np.arange(S)[:, None], K, axis=1)   # padding: the row's own state
        rows = np.repeat(np.arange(S)[:, None], K, axis=1)
        merged[rows[first], group[first]] = ordered[first]
        self.order = jnp.asarray((np.arange(S)[:, None] * K + order).reshape(-1), jnp.int32)
        self.target = jnp.asarray((np.arange(S)[:, None] * K + group).reshape(-1), jnp.int32)
        self.successors = jnp.asarray(merged, jnp.int32)

    def __call__(self, P: SparseTransitions) -> SparseTransitions:
        S, K = self.successors.shape
        probs = jax.ops.segment_sum(P.probs.reshape(-1)[self.order], self.target,
                                    num_segments=S * K, indices_are_sorted=True)
        return _unchecked(self.successors, probs.reshape(S, K), P.krylov)


def merger(successors) -> Merger:
    """The `Merger` of a chain structure `successors[S, K]` (concrete)."""
    return Merger(successors)


def self_loops(P) -> Array:
    """`P[s, ..., s]`, the probability of staying put, `[S]` or `[S, A]`, for a dense kernel
    or a sparse one (repeated entries of the own state add up). Jittable; concrete input
    is computed in NumPy (host validation may run while an outer `jit` traces)."""
    xp = np if _checks.is_concrete(P) else jnp
    if is_sparse(P):
        succ = xp.asarray(P.successors)
        own = xp.arange(P.n_states).reshape((-1,) + (1,) * (succ.ndim - 1))
        return xp.sum(xp.where(succ == own, xp.asarray(P.probs), 0), axis=-1)
    P = xp.asarray(P)
    return xp.moveaxis(xp.diagonal(P, axis1=0, axis2=P.ndim - 1), -1, 0)


def validate_sparse(successors, probs, mask=None, *, name: str = "probs") -> None:
    """Raise `ValueError` naming the offending row unless `(successors, probs)` is a kernel.

    Same shapes `[S, ..., K]`; integer successors in `[0, S)`; probabilities finite, >= 0,
    each row summing to 1 within sqrt(eps) where `mask[S, ...]` (available actions) holds.
    """
    _check_structure(successors, probs, name)
    succ, p = np.asarray(successors), np.asarray(probs)
    S = succ.shape[0]
    bad = np.argwhere((succ < 0) | (succ >= S))
    if bad.size:
        i = tuple(bad[0])
        raise ValueError(f"successors[{_checks._index(i)}] = {succ[i]} is not a state index"
                         f" in [0, {S}).")
    _checks.check_finite(name, p)
    keep = None if mask is None else np.asarray(mask, bool)
    negative = np.argwhere(p < 0)  # indices, not a masked copy of p (320 MB at S = 10^6)
    if keep is not None and negative.size:
        negative = negative[keep[tuple(negative[:, :-1].T)]]
    if negative.size:
        i = tuple(negative[0])
        raise ValueError(f"{name}[{_checks._index(i)}] = {p[i]:.6g} is negative:"
                         " probabilities must be >= 0.")
    _checks.check_rows_sum_to_one(name, p, keep, what="transition row")


def _check_structure(successors, probs, name: str = "probs") -> None:
    succ_shape, p_shape = np.shape(successors), np.shape(probs)
    if succ_shape != p_shape or len(succ_shape) < 2:
        raise ValueError(f"successors {succ_shape} and {name} {p_shape} must share one shape"
                         " [S, ..., K].")
    if not jnp.issubdtype(jnp.result_type(successors), jnp.integer):
        raise ValueError("successors must hold integer state indices, got dtype"
                         f" {jnp.result_type(successors)}.")


def from_dense(P, *, krylov: Krylov = Krylov()) -> SparseTransitions:
    """The sparse form of a dense kernel `P[S, S]` or `P[S, A, S]` (concrete values):
    `K` is the largest number of nonzeros in a row; shorter rows are padded."""
    P = np.asarray(P)
    S = P.shape[0]
    rows = P.reshape(-1, S)
    K = max(1, int((rows > 0).sum(axis=1).max()))
    # nonzeros first (stable), padding points at the row's own state with probability 0
    order = np.argsort(rows <= 0, axis=1, kind="stable")[:, :K]
    probs = np.take_along_axis(rows, order, axis=1)
    own = np.repeat(np.arange(S), rows.shape[0] // S)[:, None]
    successors = np.where(probs > 0, order, own)
    probs = np.where(probs > 0, probs, 0)
    return SparseTransitions(successors.reshape(P.shape[:-1] + (K,)),
                             probs.reshape(P.shape[:-1] + (K,)), krylov=krylov,
                             dtype=P.dtype if np.issubdtype(P.dtype, np.floating) else None)


def from_scipy(matrices, *, krylov: Krylov = Krylov(), dtype=None) -> SparseTransitions:
    """The sparse form of `scipy.sparse` kernels: one `[S, S]` matrix (a chain), a sequence
    of `A` such matrices (one per action: an `[S, A, K]` kernel), or one `[S A, S]` matrix
    whose row `s A + a` is `P[s, a]`."""
    import scipy.sparse

    if isinstance(matrices, Sequence) and not scipy.sparse.issparse(matrices):
        mats = [scipy.sparse.csr_matrix(m) for m in matrices]
        S = mats[0].shape[1]
        if any(m.shape != (S, S) for m in mats):
            raise ValueError(f"per-action matrices must all be [S, S]; got"
                             f" {[m.shape for m in mats]}.")
        stacked = scipy.sparse.vstack(mats).tocsr()  # row a S + s
        order = (np.arange(len(mats))[None, :] * S + np.arange(S)[:, None]).reshape(-1)
        csr, shape = stacked[order], (S, len(mats))
    else:
        csr = scipy.sparse.csr_matrix(matrices)
        S = csr.shape[1]
        if csr.shape[0] == S:
            shape = (S,)
        elif csr.shape[0] % S == 0:
            shape = (S, csr.shape[0] // S)
        else:
            raise ValueError(f"a kernel matrix must be [S, S] or [S A, S], got {csr.shape}.")
    csr.sum_duplicates()
    counts = np.diff(csr.indptr)
    K = max(1, int(counts.max()))
    n_rows = csr.shape[0]
    position = np.arange(csr.nnz) - np.repeat(csr.indptr[:-1], counts)
    row = np.repeat(np.arange(n_rows), counts)
    own = np.repeat(np.arange(S), n_rows // S)
    successors = np.repeat(own[:, None], K, axis=1)
    probs = np.zeros((n_rows, K), csr.dtype if dtype is None else dtype)
    successors[row, position] = csr.indices
    probs[row, position] = csr.data
    return SparseTransitions(successors.reshape(shape + (K,)), probs.reshape(shape + (K,)),
                             krylov=krylov, dtype=dtype)
