"""Mixing measures (dsorl.mixing), the mixing-regularised nBw algorithms, the coupled-clusters
family and the mixing study's estimator-bias machinery, against independent NumPy references
(eigenvalues, dense first-passage solves, series), finite differences and Monte Carlo with a
tolerance in standard errors of the sample."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import central_difference, random_chain
from test_estimators_average_reward import numpy_reference

import dsorl
from dsorl import envs, markov, mixing, planning, policies
from dsorl.algorithms import nbw
from dsorl.bias_gradient import bias_gradient
from dsorl.envs.chains import coupled_clusters
from dsorl.jobs import mixing_study

Z = 5.0  # Monte Carlo tolerance in standard errors


def numpy_measures(P, j):
    """Kemeny's constant from the eigenvalues, the stationary hitting time of j from a
    dense first-passage solve, and ||H||_F from the series sum_t (P^t - P*)."""
    S = len(P)
    lam = np.linalg.eigvals(P)
    lam = np.delete(lam, np.argmin(np.abs(lam - 1)))
    kemeny = 1 + np.sum(1 / (1 - lam)).real          # convention: K = 1 + sum_{i>=2} ...
    vals, vecs = np.linalg.eig(P.T)
    p = np.real(vecs[:, np.argmin(np.abs(vals - 1))])
    p /= p.sum()
    # m_i = 1 + sum_{k != j} P_ik m_k for every i (hitting time with t >= 1)
    A = np.eye(S) - P * (np.arange(S) != j)[None, :]
    m = np.linalg.solve(A, np.ones(S))
    H, Pt = np.zeros((S, S)), np.eye(S)
    for _ in range(5000):
        H += Pt - p[None, :]
        Pt = Pt @ P
    return kemeny, p @ m, np.linalg.norm(H)


@pytest.mark.parametrize("seed, n, density", [
    (1, 7, 0.5), pytest.param(0, 5, 1.0, marks=pytest.mark.slow)])
def test_measures_match_numpy(seed, n, density):
    chain = random_chain(seed, n, density=density)
    K, hit, norm = numpy_measures(np.asarray(chain.P), 0)
    got = [float(mixing.mixing_measure(chain, m, state=0)) for m in mixing.MEASURES]
    np.testing.assert_allclose(got, [K, hit, norm], rtol=1e-9)
    assert float(mixing.mixing_measure(chain)) == pytest.approx(K, rel=1e-10)  # default


@pytest.mark.slow
def test_stationary_hitting_time_is_z_jj_over_p_j():
    chain = random_chain(3, 6)
    Z = np.asarray(markov.deviation_matrix(chain)) + np.asarray(
        markov.stationary_distribution(chain))[None, :]
    p = np.asarray(markov.stationary_distribution(chain))
    for j in range(6):
        assert float(mixing.stationary_hitting_time(chain, j)) == pytest.approx(
            Z[j, j] / p[j], rel=1e-10)


def test_measure_gradients_match_finite_differences():
    # one scalar, a random combination of the three measures, checks all three gradients
    rng = np.random.default_rng(4)
    logits, weights = rng.normal(size=(4, 4)), rng.uniform(0.5, 2.0, 3)

    @jax.jit
    def f(x):
        chain = dsorl.Chain(jax.nn.softmax(jnp.asarray(x), axis=-1), jnp.zeros(4))
        return sum(c * mixing.mixing_measure(chain, m, state=1)
                   for c, m in zip(weights, mixing.MEASURES))

    grad = np.asarray(jax.grad(f)(jnp.asarray(logits)))
    np.testing.assert_allclose(grad, central_difference(f, logits), rtol=1e-6, atol=1e-8)


@pytest.mark.slow
@pytest.mark.parametrize("measure", mixing.MEASURES)
def test_policy_measure_gradient_matches_finite_differences(measure):
    mdp, policy = coupled_clusters(2, 0.05), policies.sigmoid(4)
    f = jax.jit(lambda w: mixing.policy_mixing_measure(mdp, policy(w), measure, state=0))
    w = np.array([-0.7, 0.4])
    np.testing.assert_allclose(np.asarray(jax.grad(f)(jnp.asarray(w))),
                               central_difference(f, w), rtol=1e-6, atol=1e-9)


def test_coupled_clusters_closed_forms_and_optimum():
    c, n = 0.02, 2
    mdp = envs.make("coupled_clusters", n=n, coupling=c)
    stay = np.zeros((2 * n, 2))
    stay[:, 0] = 1
    chain = dsorl.induced_chain(mdp, stay)
    # second eigenvalue 1 - 2c, the within-cluster ones 0: K = 1 + 1/(2c) + (2n - 2)
    assert float(markov.kemeny_constant(chain)) == pytest.approx(1 + 1 / (2 * c) + 2 * n - 2)
    assert float(markov.bias(chain)[0]) == pytest.approx(1 / (2 * c))
    assert abs(float(markov.gain(chain))) < 1e-12
    sol = planning.nearly_blackwell_optimal(mdp)
    assert np.all(sol.nbw_optimal[:, :n] == 0)  # stay in A (B's actions are duplicates)
    assert sol.bias[0] == pytest.approx(1 / (2 * c))
    for bad in (dict(n=0), dict(n=2.5), dict(coupling=0.0), dict(coupling=0.7)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            coupled_clusters(**bad)


_CONFIG = nbw.Config(policies.sigmoid(2), n_steps=6, episode_length=4, n_episodes=8)


def _same(a, b):
    return all(np.array_equal(x, y, equal_nan=True)
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.slow
def test_zero_weight_is_bit_identical_and_the_step_ascends_the_regularised_gain():
    mdp, w0 = envs.nbw_env("A1"), jnp.array([0.5, 0.5])
    hp = nbw.HParams(**envs.nbw.paper_hyperparams("A1"))
    plain = nbw.run(mdp, w0, hp, config=_CONFIG)
    zero = nbw.run(mdp, w0, hp, config=_CONFIG._replace(mixing_measure="kemeny"))
    assert _same(plain, zero)
    # lambda = 2: the first (gain-phase) step ascends grad(g - lambda K) at params0
    lam = 2.0
    _, trace = nbw.run(mdp, w0, hp._replace(mixing_weight=lam),
                       config=_CONFIG._replace(mixing_measure="kemeny", n_steps=1))
    policy = _CONFIG.policy

    def regularised(w):
        chain = dsorl.induced_chain(mdp, policy(w))
        return markov.gain(chain) - lam * markov.kemeny_constant(chain)

    expected = np.linalg.norm(central_difference(regularised, np.asarray(w0)))
    assert not bool(trace.in_barrier[0])
    assert float(trace.grad_norm[0]) == pytest.approx(expected, rel=1e-7)


@pytest.mark.slow
def test_zero_weight_is_bit_identical_in_the_sampled_algorithm():
    mdp, w0 = envs.nbw_env("B2"), jnp.array([1.0, -2.0])
    hp = nbw.HParams(**envs.nbw.paper_hyperparams("B2"))
    config = nbw.Config(policies.sigmoid(5), n_steps=10, episode_length=6, n_episodes=8)
    for line_search in nbw.LINE_SEARCHES:
        cfg = config._replace(line_search=line_search)
        plain = nbw.run_sampled(mdp, w0, hp, jax.random.key(0), config=cfg)
        zero = nbw.run_sampled(mdp, w0, hp, jax.random.key(0),
                               config=cfg._replace(mixing_measure="deviation_norm"))
        assert _same(plain, zero)
        reg = nbw.run_sampled(mdp, w0, hp._replace(mixing_weight=1.0), jax.random.key(0),
                              config=cfg._replace(mixing_measure="deviation_norm"))
        assert not _same(plain, reg)


def test_bad_regulariser_input_is_named():
    mdp, hp = envs.nbw_env("A1"), nbw.HParams()
    cfg = _CONFIG._replace(mixing_measure="kemeny")
    for weight in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="mixing_weight"):
            nbw.validate(mdp, hp._replace(mixing_weight=weight), cfg)
    with pytest.raises(ValueError, match="mixing_weight = 0.5 needs config.mixing_measure"):
        nbw.validate(mdp, hp._replace(mixing_weight=0.5), _CONFIG)
    with pytest.raises(ValueError, match="'spectral'"):
        nbw.validate(mdp, hp, _CONFIG._replace(mixing_measure="spectral"))
    with pytest.raises(ValueError, match="needs a reference state"):
        nbw.validate(mdp, hp, _CONFIG._replace(mixing_measure="hitting_time"))
    with pytest.raises(ValueError, match="reference state 0 is transient"):  # A1: 0 -> 1 absorbing
        nbw.validate(mdp, hp, _CONFIG._replace(mixing_measure="hitting_time", mixing_state=0))
    nbw.validate(mdp, hp, _CONFIG._replace(mixing_measure="hitting_time", mixing_state=1))
    with pytest.raises(ValueError, match="reference state = 5"):
        mixing.mixing_measure(random_chain(0, 3), "hitting_time", state=5)
    for lambdas, entry in (([0.0, -1.0], "entry 1 = -1.0"), ([float("nan")], "entry 0 = nan")):
        with pytest.raises(ValueError, match=f"lambdas: {entry}"):
            mixing_study.mixing_tables({"lambdas": lambdas})
    with pytest.raises(ValueError, match="unknown mixing_study config keys \\['lambda'\\]"):
        mixing_study.mixing_tables({"lambda": [0.0]})


@pytest.mark.slow
@pytest.mark.parametrize("name, T, w", [("B2", 4, [-0.4, 0.9]), ("A1", 3, [0.5, 1.0])])
def test_estimator_bias_matches_numpy_reference(name, T, w):
    mdp = envs.nbw_env(name)
    policy, w = policies.sigmoid(mdp.n_states), np.asarray(w)
    ref = numpy_reference(mdp, w, T)
    exact = np.asarray(bias_gradient(mdp, policy, jnp.asarray(w), 0))
    expected = ref["bias_pre_mixing"] + ref["bias_post_mixing"] - exact
    got = np.asarray(mixing_study.estimator_bias(mdp, policy, jnp.asarray(w), 0, T))
    np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-10)
    assert np.linalg.norm(got) > 1e-3  # T below the mixing time: a real bias


@pytest.mark.slow
def test_sampled_estimator_bias_within_standard_errors():
    # Mean of N per-episode bias gradients minus the exact gradient: within Z standard
    # errors of the exact finite-T bias, and (the check's power) far from zero.
    mdp, T, N = coupled_clusters(2, 0.05), 4, 4000
    policy, w = policies.sigmoid(4), jnp.array([-0.3, 0.8])
    diff, se, _ = jax.jit(lambda k: mixing_study.sampled_estimator_bias(
        k, mdp, policy, w, 0, episode_length=T, n_episodes=N))(jax.random.key(5))
    exact = np.asarray(mixing_study.estimator_bias(mdp, policy, w, 0, T))
    diff, se = np.asarray(diff), np.asarray(se)
    assert np.all(np.abs(diff - exact) <= Z * se), (diff, exact, se)
    assert np.any(np.abs(exact) > Z * se)
    # exact mixing (A2: P^3(s0, .) = p*) leaves no bias at T >= 3
    a2 = envs.nbw_env("A2")
    assert np.allclose(mixing_study.estimator_bias(a2, policies.sigmoid(5),
                                                   jnp.array([0.3, -0.7]), 0, 4), 0,
                       atol=1e-10)


_STUDY = {"envs": [{"name": "coupled_clusters", "n": 2, "coupling": 0.05}],
          "lambdas": [0.0, 0.3], "starts": [[0.0, 0.0]], "seeds": 2, "n_steps": 8,
          "episode_length": 3, "estimate_episodes": 300,
          "correlation": {"chains": 12, "n_states": 4, "mixing_eps": 1e-3,
                          "couplings": [0.01, 0.5], "seed": 0}}


@pytest.mark.slow
def test_mixing_study_tables_and_plot(tmp_path):
    tables = mixing_study.mixing_tables(_STUDY)
    corr, trade, runs = tables["correlation"], tables["tradeoff"], tables["runs"]
    assert len(corr) == 3 * len(mixing.MEASURES)
    assert set(corr["measure"]) == set(mixing.MEASURES)
    assert corr["spearman"].between(-1, 1).all()
    assert len(runs) == 2 * 2 and len(trade) == 2
    # the MC path average agrees with the exact path average within its noise floor
    gap = np.abs(runs["path_grad_bias_mc"] - runs["path_grad_bias"])
    assert np.all(gap <= Z * runs["path_grad_bias_mc_se"] + 2 * runs["path_mc_noise"])
    assert trade.loc[trade["lam"] == 0, "bias_cost"].item() == 0
    # regularising mixes faster: smaller measure and smaller path estimator bias
    by = trade.set_index("lam")
    assert by.loc[0.3, "final_measure"] < by.loc[0.0, "final_measure"]
    assert by.loc[0.3, "path_grad_bias"] < by.loc[0.0, "path_grad_bias"]
    path = mixing_study.plot_tradeoff(tables, tmp_path / "tradeoff.png")
    assert path.exists() and path.stat().st_size > 10_000
