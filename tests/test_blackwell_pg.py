"""The n-level (Blackwell) policy gradient, its sampled gradients, the environment where
nearly Blackwell-optimal policies differ in y_1, and the blackwell job.

References: NumPy Laurent coefficients with finite differences, exact expectations of the
episode estimator by powers of P, the nBw paper's estimator (k = 0), Monte Carlo means,
enumeration of all deterministic policies, `planning.blackwell_optimal`, and nBw-PG."""
import csv
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dsorl
from dsorl import envs, planning
from dsorl.algorithms import blackwell, nbw
from dsorl.envs.blackwell import BLACKWELL_TIE_FACTS, blackwell_tie
from dsorl.estimators import laurent
from dsorl.estimators.average_reward import episode_estimates, oracle_critic
from dsorl.fisher import score_table
from dsorl.jobs import blackwell as job
from dsorl.markov import laurent_coefficients
from dsorl.mdp import induced_chain
from dsorl.policies import tabular_softmax
from dsorl.sampling import rollouts
from helpers import central_difference, np_laurent, random_mdp


def np_policy_laurent(mdp, pi, K):
    P, R = np.asarray(mdp.P), np.asarray(mdp.R)
    return np_laurent(np.einsum("sa,sat->st", pi, P), np.einsum("sa,sa->s", pi, R), K)


def softmax(theta):
    z = np.exp(theta - theta.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


# ----------------------------------------------------------------------------------------
# exact gradients


@pytest.fixture(scope="module")
def evaluated():
    """A random MDP, a tabular softmax policy at random logits, and the algorithm's exact
    evaluation of y_{-1..3}(s0) and their gradients (one compile shared by two tests)."""
    mdp = random_mdp(3, 4, 3)
    policy = tabular_softmax(4, 3)
    theta = np.random.default_rng(1).normal(size=(4, 3))
    config = blackwell.Config(policy=policy, order=3, state=1)
    ev = blackwell.init_exact(mdp, jnp.asarray(theta), blackwell.HParams(), config=config).evaluation
    return mdp, policy, theta, ev


def test_exact_level_gradients_match_finite_differences(evaluated):
    mdp, policy, theta, ev = evaluated
    y = lambda th: np_policy_laurent(mdp, softmax(th.reshape(4, 3)), 3)[:, 1]
    np.testing.assert_allclose(ev.values, y(theta.ravel()), rtol=1e-12, atol=1e-12)
    fd = np.array([central_difference(lambda th: y(th)[k], theta.ravel()) for k in range(5)])
    np.testing.assert_allclose(ev.grads, fd, rtol=1e-7, atol=1e-9)
    assert np.abs(ev.grads[4]).max() > 1e-3  # y_3 moves with the policy: a real check


# ----------------------------------------------------------------------------------------
# sampled gradients


def _expected_estimate(mdp, policy, theta, order, T, s0):
    """The episode estimator's exact expectation: E[Z_j(t)] from P^t(s0, .) (NumPy)."""
    pi = np.asarray(policy.probs(theta))
    critic = laurent.laurent_critic(mdp, jnp.asarray(pi), order)
    psi = np.asarray(score_table(policy, theta))
    P = np.einsum("sa,sat->st", pi, np.asarray(mdp.P))
    mu = np.zeros((T + 1, len(P)))
    mu[0, s0] = 1
    for t in range(T):
        mu[t + 1] = mu[t] @ P
    EZ = np.einsum("ts,sa,jsa,sad->jtd", mu, pi, np.asarray(critic.advantage), psi)
    W = laurent.level_weights(order, T)
    levels = np.einsum("kjt,jtd->kd", W, EZ[:order + 1, :T] - EZ[:order + 1, T:])
    return np.concatenate([EZ[0, T][None], levels + EZ[1:order + 2, T]])


def test_estimator_expectation_is_the_exact_gradient(evaluated):
    """The derivation of `dsorl.estimators.laurent`: with P^T(s0, .) = p* (to rounding, a
    dense random chain mixed for T = 60 steps; longer T only amplifies rounding by the
    weights C(t + 3, 3)) the estimator's mean is grad y_k(s0), k <= 3."""
    mdp, policy, theta, ev = evaluated
    expected = _expected_estimate(mdp, policy, jnp.asarray(theta), 3, 60, 1)
    np.testing.assert_allclose(expected, ev.grads, atol=1e-10 * np.abs(ev.grads).max())


def _tie_estimates(n_episodes):
    mdp = blackwell_tie()
    policy = tabular_softmax(5, 2)
    theta = jnp.asarray(np.random.default_rng(3).normal(size=(5, 2)))
    est = jax.jit(lambda th: laurent.sample_laurent_gradients(  # jit: eager costs 3 s more
        jax.random.key(0), mdp, policy, th, 0, order=1, episode_length=4,
        n_episodes=n_episodes))(theta)
    return mdp, policy, theta, est


def test_sampled_means_agree_with_exact_gradients():
    """On blackwell_tie (P^T(s0, .) = p* for T >= 3: unbiased) the mean of 10000 episodes
    matches the exact gradients of y_{-1}, y_0, y_1 within 5 standard errors."""
    mdp, policy, theta, est = _tie_estimates(10000)
    ours = est.gradients
    exact = jax.jacrev(lambda th: laurent_coefficients(induced_chain(mdp, policy.probs(th)),
                                                       1)[:, 0])(theta)
    mean, se = ours.mean(0), ours.std(0) / np.sqrt(len(ours))
    assert np.all(np.abs(mean - exact.reshape(mean.shape)) <= 5 * se + 1e-12)
    assert np.abs(exact[2]).max() > 0.05  # y_1's gradient is not zero here


@pytest.mark.slow
def test_level_zero_is_the_nbw_papers_estimator():
    """k = 0 reproduces Dewanto & Gallagher's estimator episode by episode (Thm 3.1 with
    the Thm 3.2 post-mixing form), and so do the Fishers (eqs. 15, 19)."""
    mdp, policy, theta, est = _tie_estimates(200)
    episodes = rollouts(jax.random.key(0), mdp, policy.probs(theta), 5, 200, initial_state=0)
    scores, critic = score_table(policy, theta), oracle_critic(mdp, policy, theta)
    paper = jax.jit(jax.vmap(lambda ep: episode_estimates(ep, scores, critic)))(episodes)
    np.testing.assert_allclose(est.gradients[:, 1], paper.bias_gradient, atol=1e-12)
    np.testing.assert_allclose(est.gradients[:, 0], paper.gain_gradient, atol=1e-12)
    np.testing.assert_allclose(est.bias_fisher, paper.bias_fisher, atol=1e-12)
    np.testing.assert_allclose(est.gain_fisher, paper.gain_fisher, atol=1e-12)


# ----------------------------------------------------------------------------------------
# the environment


def _enumerate(mdp, K):
    S, A = mdp.n_states, mdp.n_actions
    policies = np.array(list(itertools.product(range(A), repeat=S)))
    Y = np.array([np_policy_laurent(mdp, np.eye(A)[d], K) for d in policies])  # [n, K+2, S]
    return policies, Y


def test_blackwell_tie_facts_by_enumeration():
    mdp = blackwell_tie()
    policies, Y = _enumerate(mdp, 4)
    gain_opt = np.all(np.isclose(Y[:, 0], Y[:, 0].max(0)), axis=1)
    bias_opt = gain_opt & np.all(np.isclose(Y[:, 1], Y[gain_opt, 1].max(0)), axis=1)
    y1_opt = bias_opt & np.all(np.isclose(Y[:, 2], Y[bias_opt, 2].max(0)), axis=1)
    assert bias_opt.sum() == 8 and y1_opt.sum() == 4  # y_1 splits the nBw-optimal policies
    assert set(policies[bias_opt][:, 0]) == {0, 1} and set(policies[y1_opt][:, 0]) == {0}
    routes = {"early": (0, 0), "early_trap": (0, 1), "late": (1, 0)}
    for route, (a0, a1) in routes.items():
        y = np_policy_laurent(mdp, np.eye(2)[[a0, a1, 0, 0, 0]], 1)[:, 0]
        np.testing.assert_allclose(y, BLACKWELL_TIE_FACTS[route], atol=1e-12)
    solution = planning.blackwell_optimal(mdp)
    assert solution.actions[0] == 0 and tuple(solution.actions) in {tuple(p) for p in policies[y1_opt]}
    assert planning.blackwell_threshold(mdp) == 0.0
    gammas = np.linspace(0.01, 0.99, 50)  # early - late = (1 - gamma)(2 + gamma) by hand
    v = lambda a0, g: np.linalg.solve(np.eye(5) - g * np.asarray(mdp.P)[np.arange(5), [a0, 0, 0, 0, 0]],
                                      np.asarray(mdp.R)[np.arange(5), [a0, 0, 0, 0, 0]])[0]
    np.testing.assert_allclose([v(0, g) - v(1, g) for g in gammas],
                               (1 - gammas) * (2 + gammas), rtol=1e-10)
    assert envs.make("blackwell_tie").n_states == 5


# ----------------------------------------------------------------------------------------
# the selection result


def _chosen_is_blackwell(mdp, policy, params):
    """The argmax policy's y_{-1..S-2}(s0) against the Blackwell optimum's (enumeration)."""
    chosen = np.asarray(jnp.argmax(policy.probs(params), axis=-1))
    y = np_policy_laurent(mdp, np.eye(mdp.n_actions)[chosen], mdp.n_states - 2)[:, 0]
    policies, Y = _enumerate(mdp, mdp.n_states - 2)
    # the lexicographic maximum at s0 over all deterministic policies
    alive = np.ones(len(policies), bool)
    for k in range(mdp.n_states):
        best = Y[alive, k, 0].max()
        alive &= np.isclose(Y[:, k, 0], best, atol=1e-9)
    return chosen, np.allclose(y, Y[alive][0, :, 0], atol=1e-9)


@pytest.mark.slow
def test_extra_level_selects_the_blackwell_policy_and_nbw_does_not():
    mdp = blackwell_tie()
    policy = tabular_softmax(5, 2)
    theta0 = jnp.zeros((5, 2))
    hp = blackwell.HParams(barrier_init=0.1, slack=0.01)
    state, trace = blackwell.run(mdp, theta0, hp, config=blackwell.Config(policy=policy, order=1,
                                                                          n_steps=120))
    chosen, ok = _chosen_is_blackwell(mdp, policy, state.params)
    assert ok and chosen[0] == 0 and chosen[1] == 0 and chosen[4] == 0
    assert int(trace.level[-1]) == 1
    y_star = planning.blackwell_optimal(mdp).y[:3, 0]
    np.testing.assert_allclose(trace.values[-1], y_star, atol=0.01)  # within the slack
    nbw_state, nbw_trace = nbw.run(mdp, theta0, nbw.HParams(barrier_init=0.1, slack=0.01),
                                   config=nbw.Config(policy=policy, n_steps=120))
    chosen, ok = _chosen_is_blackwell(mdp, policy, nbw_state.params)
    assert not ok and chosen[0] == 1  # nBw-optimal (gain 1, bias 1) but the late route
    np.testing.assert_allclose([nbw_trace.gain[-1], nbw_trace.bias[-1]], y_star[:2], atol=1e-6)
    # order 0 is nBw-PG: the same iterates (values of the n-level trace, nbw's exact trace)
    state0, trace0 = blackwell.run(mdp, theta0, hp, config=blackwell.Config(policy=policy, order=0,
                                                                            n_steps=120))
    np.testing.assert_allclose(trace0.values[:, 0], nbw_trace.gain, atol=1e-9)
    np.testing.assert_allclose(trace0.values[:, 1], nbw_trace.bias, atol=1e-9)


@pytest.mark.slow
def test_sampled_form_selects_the_blackwell_policy_over_starts():
    mdp = blackwell_tie()
    policy = tabular_softmax(5, 2)
    starts = jax.random.normal(jax.random.key(4), (4, 5, 2))
    config = blackwell.Config(policy=policy, order=1, n_steps=150, episode_length=6,
                              n_episodes=32)
    run = jax.vmap(lambda th, k: blackwell.run_sampled(mdp, th, blackwell.HParams(), k,
                                                       config=config)[0].params)
    finals = run(starts, jax.random.split(jax.random.key(5), 4))
    for params in finals:
        assert _chosen_is_blackwell(mdp, policy, params)[1]


# ----------------------------------------------------------------------------------------
# bad input


def test_bad_input_is_refused_before_compiling():
    policy = tabular_softmax(2, 2)
    P = np.zeros((2, 2, 2))
    P[0, 0, 0] = P[0, 1, 0] = P[1, 0, 1] = P[1, 1, 1] = 1.0  # two closed classes: multichain
    multichain = dsorl.MDP(P, np.zeros((2, 2)), np.array([1.0, 0.0]))
    theta = jnp.zeros((2, 2))
    config = blackwell.Config(policy=policy, n_steps=2)
    with pytest.raises(ValueError, match="multichain"):
        blackwell.run(multichain, theta, blackwell.HParams(), config=config)
    mdp = random_mdp(0, 2, 2)
    for order in (-1, 1.5, True):
        with pytest.raises(ValueError, match="order"):
            blackwell.run(mdp, theta, blackwell.HParams(), config=config._replace(order=order))
    for name in ("slack", "barrier_init", "tolerance", "barrier_divisor"):
        with pytest.raises(ValueError, match=name):
            blackwell.run(mdp, theta, blackwell.HParams()._replace(**{name: 0.0}), config=config)
    with pytest.raises(ValueError, match="episode_length"):
        blackwell.run_sampled(mdp, theta, blackwell.HParams(), jax.random.key(0), config=config)
    with pytest.raises(ValueError, match="explicit key"):
        blackwell.run_sampled(mdp, theta, blackwell.HParams(),
                              config=config._replace(episode_length=4))
    periodic = dsorl.MDP(np.broadcast_to(np.array([[0.0, 1.0], [1.0, 0.0]])[:, None], (2, 2, 2)),
                         np.zeros((2, 2)), np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="periodic"):
        blackwell.run_sampled(periodic, theta, blackwell.HParams(), jax.random.key(0),
                              config=config._replace(episode_length=4))
    with pytest.raises(ValueError, match="order"):
        laurent.sample_laurent_gradients(jax.random.key(0), mdp, policy, theta, 0, order=-1,
                                         episode_length=4, n_episodes=2)


# ----------------------------------------------------------------------------------------
# the job


def _tiny(**over):
    cfg = dict(job.DEFAULTS, envs=["A1", "A2"], laurent_orders=[0, 1],
               laurent_rho={"high": 0.1, "low": 1e-3, "points": 6}, laurent_fit_points=4,
               pg_envs=["blackwell_tie"], pg_orders=[1], pg_sampled=False, pg_steps=60,
               pg_starts=2)
    cfg.update(over)
    return cfg


@pytest.mark.slow
def test_job_thresholds_and_laurent_tables():
    out = job.run(_tiny(sections=["thresholds", "laurent_error"]))
    rows = {r["env"]: r for r in out["tables"]["thresholds"]}
    np.testing.assert_allclose(rows["A1"]["gamma_star"], 10 / 11, rtol=1e-12)
    np.testing.assert_allclose(rows["A2"]["gamma_star"], 0.5, rtol=1e-12)
    assert rows["A2"]["nbw_policies"] == rows["A2"]["blackwell_policies"] == 8
    assert rows["A1"]["paper_gammas_above"] == "n y y"
    for s in out["tables"]["laurent_slopes"]:
        assert abs(s["slope"] - s["expected"]) < 0.05, s
    errors = out["tables"]["laurent_error"]
    assert len(errors) == 2 * 2 * 6 and "policy_gradient" not in out["tables"]


def test_job_refuses_unknown_sections_and_bad_settings():
    with pytest.raises(ValueError, match="unknown section 'hessian'"):
        job.run(_tiny(sections=["thresholds", "hessian"]))
    with pytest.raises(ValueError, match="laurent_orders"):
        job.run(_tiny(sections=["laurent_error"], laurent_orders=[-2]))
    with pytest.raises(ValueError, match="pg_orders"):
        job.run(_tiny(sections=["policy_gradient"], pg_orders=[0]))


@pytest.mark.slow
def test_job_policy_gradient_table():
    out = job.run(_tiny(sections=["policy_gradient"]))
    rows = {r["method"]: r for r in out["tables"]["policy_gradient"]}
    assert not rows["nbw"]["blackwell_at_s0"] and rows["nbw"]["share_blackwell"] < 1
    assert rows["blackwell_n1"]["blackwell_at_s0"] and rows["blackwell_n1"]["share_blackwell"] == 1
    np.testing.assert_allclose(rows["nbw"]["bias_s0"], 1.0, atol=1e-4)  # nBw-optimal: bias 1
    assert out["arrays"]["blackwell_tie_blackwell_n1_values"].shape == (60, 3)


_TINY_STUDIES = """
job: blackwell
sections: [newton, mixing]
newton:
  repeats: 1
  garnet: {n_states: 4, seeds: 1, taus: [0.3]}
  lmdp: {walk_states: 5, random_states: 4, seeds: 1}
  chain_iteration: {n_steps: 3, inner_steps: 10}
  natural_gradient: {n_steps: 5}
  newton: {n_steps: 8}
mixing:
  envs: [{name: coupled_clusters, n: 2, coupling: 0.05}]
  lambdas: [0.0, 0.3]
  starts: [[0.0, 0.0]]
  seeds: 1
  n_steps: 3
  episode_length: 3
  estimate_episodes: 50
  correlation: {chains: 4, n_states: 4, couplings: [0.01, 0.5]}
"""


@pytest.mark.slow
def test_job_runs_the_newton_and_mixing_studies_with_their_figures(tmp_path, capsys):
    """Item 6: one job gives every table and figure; the two studies' configs nest under
    `newton:` and `mixing:` and are checked key by key."""
    from dsorl import cli

    config = tmp_path / "studies.yaml"
    config.write_text(_TINY_STUDIES)
    out = tmp_path / "out"
    assert cli.main(["run", str(config), "--output-dir", str(out)]) == 0
    tables = {p.stem for p in out.glob("*.csv")}
    assert tables == {"newton_convergence", "newton_curves", "newton_hessian_gap",
                      "mixing_correlation", "mixing_runs", "mixing_tradeoff"}
    assert {p.stem for p in (out / "plots").glob("*.png")} == {
        "newton_hessian_gap", "newton_convergence", "mixing_tradeoff"}
    rows = list(csv.DictReader((out / "newton_convergence.csv").open()))
    assert {r["method"] for r in rows} == {"chain_iteration", "natural_gradient",
                                            "newton_exact", "newton_surrogate"}
    assert cli.main(["run", str(config), "--output-dir", str(out), "--force",
                     "--set", "newton.garnet.statez=4"]) == 2
    assert "unknown config key 'newton.garnet.statez'" in capsys.readouterr().err
