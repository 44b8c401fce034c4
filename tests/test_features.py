"""Mean-field tanh features: the flax module against the formula in NumPy, its gradient
against the closed form, the encodings, the initial law, and the shape errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsorl import features
from helpers import check_variants

S, A, K = 3, 2, 4


def numpy_features(c, w, b, x, bound=1.0):
    """f[n, s, a] = sum_k psi(c_nk) tanh(<w_nk, x_sa> + b_nk), psi = bound tanh(./bound)."""
    z = np.einsum("nkd,sad->nsak", w, x) + b[:, None, None, :]
    return np.sum(bound * np.tanh(c / bound)[:, None, None, :] * np.tanh(z), axis=-1)


def numpy_feature_gradients(c, w, b, x, weights, bound=1.0):
    """sum_{s,a} weights[s, a] grad_theta f(x_sa, theta_n) in closed form, per particle."""
    z = np.einsum("nkd,sad->nsak", w, x) + b[:, None, None, :]
    sech2 = 1 - np.tanh(z) ** 2
    psi = bound * np.tanh(c / bound)
    dpsi = 1 - np.tanh(c / bound) ** 2
    dc = dpsi * np.einsum("sa,nsak->nk", weights, np.tanh(z))
    db = psi * np.einsum("sa,nsak->nk", weights, sech2)
    dw = psi[..., None] * np.einsum("sa,nsak,sad->nkd", weights, sech2, x)
    return dc, dw, db


def leaves(particles):
    p = particles["params"]
    return tuple(np.asarray(p[k]) for k in ("c", "w", "b"))


@pytest.fixture
def ensemble():
    x = features.one_hot_encoding(S, A)
    feature = features.TanhFeature(width=K, bound=1.5)
    return feature, features.init_particles(feature, jax.random.key(0), 5, x), x


def test_truncation_is_a_smooth_bounded_odd_identity_near_zero():
    c = np.linspace(-50, 50, 1001)
    psi = np.asarray(features.truncation(c, 2.0))
    np.testing.assert_allclose(psi, 2.0 * np.tanh(c / 2.0), rtol=1e-15)
    assert np.all(np.abs(psi) <= 2.0)
    np.testing.assert_allclose(psi, -psi[::-1], atol=0)
    assert jax.grad(features.truncation)(0.0, 2.0) == pytest.approx(1.0, abs=1e-15)


def test_features_match_numpy_formula(ensemble):
    feature, particles, x = ensemble
    c, w, b = leaves(particles)
    f = features.particle_features(feature, particles, x)
    assert f.shape == (5, S, A)
    np.testing.assert_allclose(f, numpy_features(c, w, b, np.asarray(x), 1.5), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(features.mean_field_feature(feature, particles, x),
                               numpy_features(c, w, b, np.asarray(x), 1.5).mean(0), rtol=1e-13, atol=1e-15)
    # the module on one particle is the same formula (no batch axis)
    one = jax.tree_util.tree_map(lambda p: p[2], particles)
    np.testing.assert_allclose(feature.apply(one, x), numpy_features(c, w, b, np.asarray(x), 1.5)[2],
                               rtol=1e-13, atol=1e-15)


def test_feature_pullback_matches_closed_form_gradient(ensemble, rng):
    feature, particles, x = ensemble
    weights = rng.normal(size=(S, A))
    grad = jax.grad(lambda p: jnp.sum(features.particle_features(feature, p, x) * weights))(particles)
    for got, want in zip(leaves(grad), numpy_feature_gradients(*leaves(particles), np.asarray(x), weights, 1.5)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_particle_features_variants(ensemble):
    feature, particles, x = ensemble
    batch = jax.tree_util.tree_map(lambda p: jnp.stack([p, 2 * p, -p]), particles)
    check_variants(lambda p: features.particle_features(feature, p, x), (particles,), (batch,), (0,))


def test_init_particles_sample_the_standard_gaussian():
    x = features.coordinate_encoding(np.linspace(-1, 1, 4), np.linspace(-1, 1, 3))
    feature = features.TanhFeature(width=3)
    N = 20_000
    particles = features.init_particles(feature, jax.random.key(1), N, x)
    c, w, b = leaves(particles)
    assert c.shape == (N, 3) and w.shape == (N, 3, 2) and b.shape == (N, 3)
    assert c.dtype == np.float64
    # the module's own parameter tree, with a particle axis
    one = feature.init(jax.random.key(0), x[0, 0])
    assert jax.tree_util.tree_structure(one) == jax.tree_util.tree_structure(particles)
    assert all(a.shape == b.shape[1:] for a, b in zip(jax.tree_util.tree_leaves(one),
                                                        jax.tree_util.tree_leaves(particles)))
    flat = np.concatenate([c, w.reshape(N, -1), b], axis=1)
    D = flat.shape[1]
    assert features.particle_dimension(particles) == D == 3 * (2 + 2)
    assert features.n_particles(particles) == N
    # i.i.d. N(0, I): sample mean within 4.5 standard errors, variances within 4.5 SE
    # (SE of a sample variance of a unit Gaussian: sqrt(2 / N)), correlations within 4.5 / sqrt(N)
    np.testing.assert_array_less(np.abs(flat.mean(0)), 4.5 / np.sqrt(N))
    cov = np.cov(flat, rowvar=False)
    np.testing.assert_array_less(np.abs(np.diag(cov) - 1), 4.5 * np.sqrt(2 / N))
    np.testing.assert_array_less(np.abs(cov - np.diag(np.diag(cov))), 4.5 / np.sqrt(N))


def test_encodings():
    x = np.asarray(features.one_hot_encoding(3, 2))
    assert x.shape == (3, 2, 5)
    for s in range(3):
        for a in range(2):
            np.testing.assert_array_equal(x[s, a], np.r_[np.eye(3)[s], np.eye(2)[a]])
    states = np.array([[0.0, 1.0], [2.0, 3.0]])
    y = np.asarray(features.coordinate_encoding(states, np.array([-1.0, 0.5, 1.0])))
    assert y.shape == (2, 3, 3)
    np.testing.assert_array_equal(y[1, 2], [2.0, 3.0, 1.0])
    np.testing.assert_array_equal(y[0, 1], [0.0, 1.0, 0.5])


def test_bad_features_and_particles_raise(ensemble):
    feature, particles, x = ensemble
    with pytest.raises(ValueError, match="width K = 0"):
        features.TanhFeature(width=0)
    with pytest.raises(ValueError, match="bound"):
        features.TanhFeature(width=2, bound=0.0)
    with pytest.raises(ValueError, match="N = 0"):
        features.init_particles(feature, jax.random.key(0), 0, x)
    with pytest.raises(ValueError, match=r"encodings have width \(4,\) but .* expect d = 5"):
        features.particle_features(feature, particles, x[..., :4])
    with pytest.raises(ValueError, match="K = 4 hidden units but the feature has width 3"):
        features.particle_features(features.TanhFeature(width=3), particles, x)
    with pytest.raises(ValueError, match="N = 0"):
        features.particle_features(feature, jax.tree_util.tree_map(lambda p: p[:0], particles), x)
    with pytest.raises(ValueError, match="as from init_particles"):
        features.particle_features(feature, {"c": 1}, x)
    with pytest.raises(ValueError, match=r"\[S, A, d\]"):
        features.init_particles(feature, jax.random.key(0), 3, x[0])
    with pytest.raises(ValueError, match="not finite"):
        features.init_particles(feature, jax.random.key(0), 3, x.at[0, 0, 0].set(jnp.nan))
    with pytest.raises(ValueError, match=r"\[S\] or \[S, d_S\]"):
        features.coordinate_encoding(np.zeros((2, 2, 2)), np.zeros(3))
