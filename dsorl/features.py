"""Mean-field neural features: one hidden tanh layer per particle, as a flax module.

A particle is `theta = (c, w, b)` with `c[K]`, `w[K, d]`, `b[K]`; its feature at an encoded
state-action pair `x[d]` is (Kerimkulov, Leahy, Šiška, Szpruch, ICML 2022, arXiv 2201.07296,
"neural network mean-field approximation")

    f(x, theta) = sum_k psi(c_k) tanh(<w_k, x> + b_k),

with `psi` a smooth bounded truncation. An ensemble of N particles is the same parameter
pytree with a leading axis N; `particle_features` evaluates all of them at once (one `vmap`
of the module, i.e. batched matrix products, no loop over particles).

State-action pairs enter only through their encodings `x[S, A, d]`: one-hot vectors for
finite spaces, coordinates for continuous spaces discretised on a grid, so both use the
same code.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dsorl import _checks

__all__ = ["truncation", "TanhFeature", "init_particles", "particle_features",
           "mean_field_feature", "n_particles", "particle_dimension", "check_particles",
           "one_hot_encoding", "coordinate_encoding"]

Array = jax.Array


def truncation(c: Array, bound=1.0) -> Array:
    """The smooth bounded truncation `psi(c) = bound * tanh(c / bound)`, values in (-bound, bound).

    `psi(c) ~ c` for `|c| << bound`; the paper takes `psi : R -> [-1, 1]` (bound = 1).
    """
    return bound * jnp.tanh(c / bound)


class TanhFeature(nn.Module):
    """One particle's feature `f(x, theta) = sum_k psi(c_k) tanh(<w_k, x> + b_k)`.

    Attributes: `width` = K hidden units, `bound` = the range of `psi` (see `truncation`).
    Parameters `{"c": [K], "w": [K, d], "b": [K]}`, initialised i.i.d. N(0, 1), i.e. from
    `e^{-U}` with `U(theta) = |theta|^2 / 2 + const`. Input `x[..., d]` -> `f[...]`.
    """

    width: int = 8
    bound: float = 1.0

    def __post_init__(self):
        if not (isinstance(self.width, (int, np.integer)) and self.width >= 1):
            raise ValueError(f"TanhFeature width K = {self.width!r} must be an integer >= 1.")
        if not (np.isfinite(self.bound) and self.bound > 0):
            raise ValueError(f"TanhFeature bound = {self.bound!r} must be finite and > 0.")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        normal = nn.initializers.normal(1.0)
        c = self.param("c", normal, (self.width,), x.dtype)
        w = self.param("w", normal, (self.width, x.shape[-1]), x.dtype)
        b = self.param("b", normal, (self.width,), x.dtype)
        # layout [K, pairs]: the pairs lie on the minor axis (vectorises even for small K),
        # and the sum over units is elementwise, so XLA fuses tanh into the reduction
        pairs = x.reshape(-1, x.shape[-1])
        z = w @ pairs.T + b[:, None]
        f = jnp.sum(truncation(c, self.bound)[:, None] * jnp.tanh(z), axis=0)
        return f.reshape(x.shape[:-1])


def init_particles(feature: TanhFeature, key: Array, n_particles: int, encodings: Array):
    """`n_particles` i.i.d. particles from N(0, I) = `e^{-U}`, leaves with leading axis N.

    Returns `{"params": {"c": [N, K], "w": [N, K, d], "b": [N, K]}}` (the module's parameter
    tree with a particle axis) in the dtype of `encodings[S, A, d]` (which fixes d). One
    normal draw for the whole ensemble: the law of the module's own N(0, 1) initialisers,
    at a fraction of the compile cost of vmapping `feature.init`.
    """
    if not (isinstance(n_particles, (int, np.integer)) and n_particles >= 1):
        raise ValueError(f"number of particles N = {n_particles!r} must be an integer >= 1.")
    encodings = _check_encodings(encodings)
    one = jax.eval_shape(feature.init, key, encodings.reshape(-1, encodings.shape[-1])[0])
    shapes, treedef = jax.tree_util.tree_flatten(one)
    sizes = [int(np.prod(s.shape)) for s in shapes]
    z = jax.random.normal(key, (n_particles, sum(sizes)), encodings.dtype)
    parts = jnp.split(z, np.cumsum(sizes)[:-1], axis=1)
    return jax.tree_util.tree_unflatten(
        treedef, [p.reshape((n_particles,) + s.shape) for p, s in zip(parts, shapes)])


def particle_features(feature: TanhFeature, particles, encodings: Array) -> Array:
    """`f(x, theta_i)` for every particle i and every encoded pair: `[N, S, A]`.

    `particles` as from `init_particles`, `encodings[S, A, d]`.
    """
    check_particles(feature, particles, encodings)
    return jax.vmap(lambda p: feature.apply(p, encodings))(particles)


def mean_field_feature(feature: TanhFeature, particles, encodings: Array) -> Array:
    """`f_nu(s, a) = (1/N) sum_i f(x(s, a), theta_i)`, the feature of the empirical measure
    `nu_N = (1/N) sum_i delta_{theta_i}`: shape `[S, A]`."""
    return jnp.mean(particle_features(feature, particles, encodings), axis=0)


def n_particles(particles) -> int:
    """N, the leading axis of the particle pytree."""
    return jax.tree_util.tree_leaves(particles)[0].shape[0]


def particle_dimension(particles) -> int:
    """D = K (d + 2), the dimension of one particle `theta = (c, w, b)`."""
    return sum(int(np.prod(x.shape[1:])) for x in jax.tree_util.tree_leaves(particles))


def check_particles(feature: TanhFeature, particles, encodings: Array) -> None:
    """Raise `ValueError` unless `particles` are N >= 1 particles of `feature` whose weights
    fit the width d of `encodings[S, A, d]` (shapes only, so it works under `jit`)."""
    try:
        c, w, b = (particles["params"][k] for k in ("c", "w", "b"))
    except (KeyError, TypeError):
        raise ValueError("particles must be {'params': {'c', 'w', 'b'}} as from init_particles,"
                         f" got a {type(particles).__name__}.") from None
    if w.ndim != 3 or c.shape != w.shape[:2] or b.shape != w.shape[:2]:
        raise ValueError(f"particle shapes c{list(c.shape)}, w{list(w.shape)}, b{list(b.shape)}"
                         " must be c[N, K], w[N, K, d], b[N, K].")
    N, K, d = w.shape
    if N < 1:
        raise ValueError(f"number of particles N = {N} must be >= 1.")
    if K != feature.width:
        raise ValueError(f"particles have K = {K} hidden units but the feature has width {feature.width}.")
    if jnp.ndim(encodings) < 1 or jnp.shape(encodings)[-1] != d:
        raise ValueError(f"encodings have width {jnp.shape(encodings)[-1:]} but the particles'"
                         f" weights w[N, K, d] expect d = {d}.")


def one_hot_encoding(n_states: int, n_actions: int, dtype=None) -> Array:
    """`x[s, a] = (e_s, e_a)`, one-hot state then one-hot action: shape `[S, A, S + A]`."""
    if n_states < 1 or n_actions < 1:
        raise ValueError(f"need n_states >= 1 and n_actions >= 1, got {n_states}, {n_actions}.")
    dtype = dtype or jnp.result_type(float)
    states = jnp.broadcast_to(jnp.eye(n_states, dtype=dtype)[:, None], (n_states, n_actions, n_states))
    actions = jnp.broadcast_to(jnp.eye(n_actions, dtype=dtype), (n_states, n_actions, n_actions))
    return jnp.concatenate([states, actions], axis=-1)


def coordinate_encoding(states: Array, actions: Array) -> Array:
    """`x[s, a] = (state coordinates, action coordinates)`: shape `[S, A, d_S + d_A]`.

    `states[S]` or `[S, d_S]`, `actions[A]` or `[A, d_A]`: the grid points of a discretised
    continuous problem, best scaled to order 1 (e.g. to [-1, 1]) so that N(0, 1) initial
    weights give unsaturated units.
    """
    states, actions = jnp.asarray(states), jnp.asarray(actions)
    states = states[:, None] if states.ndim == 1 else states
    actions = actions[:, None] if actions.ndim == 1 else actions
    if states.ndim != 2 or actions.ndim != 2:
        raise ValueError(f"states must be [S] or [S, d_S] and actions [A] or [A, d_A], got"
                         f" {states.shape} and {actions.shape}.")
    dtype = jnp.result_type(states, actions, float)
    S, A = states.shape[0], actions.shape[0]
    return jnp.concatenate([jnp.broadcast_to(states[:, None], (S, A, states.shape[1])),
                            jnp.broadcast_to(actions[None], (S, A, actions.shape[1]))],
                           axis=-1).astype(dtype)


def _check_encodings(encodings) -> Array:
    encodings = jnp.asarray(encodings)
    if encodings.ndim != 3 or 0 in encodings.shape:
        raise ValueError(f"encodings must have shape [S, A, d] with d >= 1, got {encodings.shape}.")
    if _checks.is_concrete(encodings):
        _checks.check_finite("encodings", encodings)
    return encodings
