"""Neural policies on a gymnax control environment: dsorl's PCO, DSO Algorithm 1 and
REINFORCE with a baseline against rejax's PPO, same environment steps, seeds as one vmap.

Every method trains `seeds` policies (one `vmap` over seed keys, one compiled program) for
`total_steps` environment steps. Evaluation every `eval_every` steps (and at step 0):
`eval_episodes` episodes of the stochastic policy with rejax's own evaluator
(`rejax.evaluate.evaluate_single`, the one PPO's curves use), so every method is scored
alike; a seed's score is its mean evaluation return. Over seeds: mean and IQM (mean of
the middle half) with percentile-bootstrap 95% intervals (`bootstrap` resamples of the
seeds). Wall-clock: training-only runs of each method (PPO with its evaluation callback
replaced by a no-op; dsorl without `keep_params`), all compiled first (compile timed
apart), then `timing_repeats` rounds of one run per method (`dsorl.timing.compare`,
round-robin, so drifting load on the shared machine hits every method alike), the median
reported per million environment steps and relative to PPO.

PPO's hyperparameters are rejax's published CartPole config (`ppo:` in the config, from
rejax's configs/gymnax/cartpole.yaml); the job sets only its `total_timesteps` and
`eval_freq`. dsorl's methods share `dsorl:` (policy/value MLP sizes as PPO's 64x64, batch
shape, value fit, gradient clipping) and their own `pco:`, `dso:`, `reinforce:` numbers
(`pco_offchain:` is off-chain PCO on a replay of `n_behaviour` batches; `meanfield:` is
mean-field Langevin PG, `dsorl.algorithms.meanfield_control`, whose policy is its own:
`particles` tanh features of `width` units on the observation over `observation_scale`).
A batch of `n_envs * n_rollout` steps must divide `eval_every` (and PPO's
`num_envs * num_steps` too), so every method is evaluated at the same steps.

Tables:
  curves: method, steps, mean, mean_lo, mean_hi, iqm, iqm_lo, iqm_hi (over seeds;
          lo/hi the 95% bootstrap interval), solved (seeds whose score >= `solved_at`)
  scores: method, steps, seed, score (each seed's mean evaluation return)
  final:  method, steps, mean, mean_lo, mean_hi, iqm, iqm_lo, iqm_hi, solved, seeds,
          train_s (median training-only run of all seeds), compile_s, s_per_msteps (train_s per
          million environment steps of each seed, all seeds running together), vs_ppo
          (s_per_msteps over PPO's; NaN without PPO)
  hyperparameters: method, name, value (as text)
"""
import numpy as np

from dsorl import progress, timing

DEFAULTS = {
    "env": "CartPole-v1",
    "methods": ["ppo", "pco", "dso", "reinforce"],
    "total_steps": 100000,
    "seeds": 16,
    "eval_every": 5000,
    "eval_episodes": 128,
    "bootstrap": 2000,
    "solved_at": 475.0,
    "timing_repeats": 3,
    "dsorl": {"hidden": [64, 64], "n_envs": 10, "n_rollout": 100, "value_epochs": 10,
              "max_grad_norm": 0.5},
    "pco": {"gamma": 0.99, "step_size": 3e-4, "value_step_size": 1e-3, "clip": 0.2,
            "epochs": 4, "n_minibatches": 4},
    "pco_offchain": {"gamma": 0.99, "step_size": 3e-4, "value_step_size": 1e-3, "clip": 0.2,
                     "trace_clip": 1.0, "epochs": 4, "n_minibatches": 4, "n_behaviour": 2},
    "dso": {"gamma": 0.99, "step_size": 1e-3, "value_step_size": 1e-3},
    "meanfield": {"gamma": 0.99, "step_size": 0.03, "sigma": 0.1, "value_step_size": 1e-3,
                  "particles": 64, "width": 8, "bound": 1.0,
                  "observation_scale": [2.4, 3.0, 0.21, 3.5]},
    "reinforce": {"gamma": 0.99, "step_size": 3e-3, "value_step_size": 1e-3},
    "natural_dso": {"gamma": 0.99, "step_size": 0.01, "value_step_size": 1e-3, "damping": 0.1,
                    "cg_iters": 10},
    "ppo": {"agent_kwargs": {"activation": "tanh"}, "num_envs": 5, "num_steps": 100,
            "num_epochs": 5, "num_minibatches": 5, "learning_rate": 0.00075,
            "max_grad_norm": 0.5, "gamma": 0.99, "gae_lambda": 0.95, "clip_eps": 0.2,
            "ent_coef": 0.01, "vf_coef": 0.5},
    "output_dir": "benchmarks/results/control",
}

DSORL_METHODS = ("pco", "dso", "reinforce", "natural_dso", "pco_offchain", "meanfield")


def _check(config) -> None:
    unknown = [m for m in config["methods"] if m not in DSORL_METHODS + ("ppo",)]
    if unknown:
        raise ValueError(f"methods: unknown {', '.join(map(str, unknown))} (known: ppo,"
                         f" {', '.join(DSORL_METHODS)}).")
    every, total = int(config["eval_every"]), int(config["total_steps"])
    if every < 1 or total < every or total % every:
        raise ValueError(f"total_steps = {total} must be a positive multiple of eval_every ="
                         f" {every}.")
    batch = config["dsorl"]["n_envs"] * config["dsorl"]["n_rollout"]
    ppo_batch = config["ppo"]["num_envs"] * config["ppo"]["num_steps"]
    for name, size in (("dsorl n_envs * n_rollout", batch), ("ppo num_envs * num_steps", ppo_batch)):
        if every % size:
            raise ValueError(f"eval_every = {every} must be a multiple of the {name} = {size}.")
    if int(config["seeds"]) < 2:
        raise ValueError(f"seeds = {config['seeds']} must be >= 2 (intervals over seeds).")
    if int(config["timing_repeats"]) < 1:
        raise ValueError(f"timing_repeats = {config['timing_repeats']} must be >= 1.")


def static_config(method: str, shared: dict, own: dict, total_steps: int, problem):
    """`(Algorithm, static Config, policy)` of dsorl method `method` (pco, dso, reinforce)
    on `problem`: the `shared` settings (`dsorl:` of the config: hidden sizes, batch shape,
    value fit, gradient clipping) and the method's `own` (PCO's `epochs`, `n_minibatches`),
    `total_steps // (n_envs * n_rollout)` batches."""
    from dsorl import networks
    from dsorl.algorithms import control as C

    hidden = tuple(shared["hidden"])
    policy = networks.policy_for(problem, hidden)
    value = networks.ValueMLP(hidden, problem.observation_shape)
    common = dict(n_steps=int(total_steps) // (shared["n_envs"] * shared["n_rollout"]),
                  policy=policy, value=value, n_envs=shared["n_envs"],
                  n_rollout=shared["n_rollout"], value_epochs=shared["value_epochs"],
                  max_grad_norm=float(shared["max_grad_norm"]))
    if method == "pco":
        return C.PCO, C.PCOConfig(**common, epochs=own["epochs"],
                                  n_minibatches=own["n_minibatches"]), policy
    if method == "pco_offchain":  # GePPO-style replay of the last n_behaviour batches
        return C.PCO, C.PCOConfig(**common, epochs=own["epochs"],
                                  n_minibatches=own["n_minibatches"],
                                  n_behaviour=own["n_behaviour"]), policy
    if method == "dso":
        return C.DSO, C.Config(**common), policy
    if method == "meanfield":  # tanh-feature particles, not the MLP: own sizes
        return _meanfield(common, own, problem)
    if method == "reinforce":
        return C.REINFORCE, C.ReinforceConfig(**common), policy
    if method == "natural_dso":  # SGD along the natural direction, never clipped
        common["max_grad_norm"] = float("inf")
        return C.NATURAL_DSO, C.NaturalConfig(**common, cg_iters=own["cg_iters"]), policy
    raise ValueError(f"unknown dsorl method {method!r} (known: {', '.join(DSORL_METHODS)}).")


def _meanfield(common: dict, own: dict, problem):
    """Mean-field Langevin PG (`dsorl.algorithms.meanfield_control`): `own` gives the
    particles N, feature `width` and `bound`, and the `observation_scale`."""
    from dsorl import networks
    from dsorl.algorithms import meanfield_control as MF
    from dsorl.rollouts import Discrete

    if not isinstance(problem.action_space, Discrete):
        raise ValueError(f"meanfield needs a discrete action space (a categorical mean-field"
                         f" policy), {problem.name} has {problem.action_space}.")
    scale = own.get("observation_scale")
    policy = networks.MeanFieldPolicy(
        problem.action_space.n, int(own["particles"]), int(own["width"]), float(own["bound"]),
        problem.observation_shape, None if scale is None else tuple(scale))
    return MF.MEANFIELD_PG, MF.Config(**dict(common, policy=policy)), policy


def _dsorl_setup(method, config, problem):
    import jax.numpy as jnp

    own = dict(config[method])
    alg, cfg, policy = static_config(method, config["dsorl"], own, config["total_steps"],
                                     problem)
    fields = {k: jnp.float32(v) for k, v in own.items() if k in alg.HParams._fields}
    return alg, alg.HParams(**fields), cfg, policy


def _train_dsorl(method, config, problem, keys):
    """`(params at the evaluation points [seeds, points], policy, training-only function
    of the seed keys)`."""
    import jax
    import jax.numpy as jnp

    alg, hp, cfg, policy = _dsorl_setup(method, config, problem)
    per_batch = cfg.n_envs * cfg.n_rollout
    every = int(config["eval_every"]) // per_batch
    after = np.arange(every - 1, cfg.n_steps, every)  # batch indices at the eval points

    def train(k, keep):
        params0 = policy.init(jax.random.fold_in(k, 7), jnp.float32)
        state, trace = alg.run(problem, params0, hp, k, config=cfg, keep_params=keep)
        if not keep:
            return trace.episode_return
        stacked = jax.tree_util.tree_map(lambda p0, ps: jnp.concatenate([p0[None], ps[after]]),
                                         params0, trace.params)
        return stacked

    curves = jax.jit(jax.vmap(lambda k: train(k, True)))(keys)
    return curves, policy, jax.vmap(lambda k: train(k, False))


def evaluation_return(problem, policy, params, key, episodes: int):
    """Mean return of `episodes` episodes of the stochastic policy `params`, each run to
    its end by rejax's evaluator (`evaluate_single`, the one PPO's curves use); traceable."""
    import jax
    import jax.numpy as jnp
    from rejax.evaluate import evaluate_single

    env, env_params = problem.env, problem.env_params
    max_steps = env_params.max_steps_in_episode  # may be traced (a sweep's argument)
    act = lambda obs, rng: policy.sample(params, obs, rng)[0]
    _, returns = jax.vmap(lambda k: evaluate_single(act, env, env_params, k, max_steps))(
        jax.random.split(key, int(episodes)))
    return jnp.mean(returns)


def _evaluate(problem, policy, params, keys, config):
    """Scores `[seeds, points]`: mean return of `eval_episodes` stochastic episodes."""
    import jax

    def seed(ps, k):
        n_points = jax.tree_util.tree_leaves(ps)[0].shape[0]
        ks = jax.random.split(k, n_points)
        return jax.lax.map(lambda a: evaluation_return(problem, policy, a[0], a[1],
                                                       config["eval_episodes"]), (ps, ks))

    return np.asarray(jax.jit(jax.vmap(seed))(params, keys))


def _train_ppo(config, keys):
    """`(scores [seeds, points], training-only function of the seed keys)` of rejax's PPO
    with the published config."""
    import jax
    import jax.numpy as jnp
    from rejax import PPO

    ppo_cfg = dict(config["ppo"], env=config["env"], total_timesteps=int(config["total_steps"]),
                   eval_freq=int(config["eval_every"]))
    algo = PPO.create(**ppo_cfg)
    _, (lengths, returns) = jax.jit(jax.vmap(algo.train))(keys)
    scores = np.asarray(jnp.mean(returns, axis=-1))  # [seeds, 1 + total / eval_every]
    quiet = algo.replace(eval_callback=lambda a, ts, rng: jnp.zeros(()))
    # return the trained parameters: returning less lets XLA drop the training as dead code
    return scores, jax.vmap(lambda k: quiet.train(k)[0].actor_ts.params)


def iqm(x, axis=-1):
    """Interquartile mean: the mean of the middle half (scipy's `trim_mean(x, 0.25)`)."""
    from scipy.stats import trim_mean

    return trim_mean(x, 0.25, axis=axis)


def bootstrap_interval(x, statistic, n: int, seed: int = 0):
    """Percentile-bootstrap 95% interval of `statistic` over the seeds of `x[seeds]`."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n, len(x)))
    values = statistic(np.asarray(x)[idx], axis=1)
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def _summary(scores, config) -> dict:
    mean_lo, mean_hi = bootstrap_interval(scores, np.mean, config["bootstrap"])
    iqm_lo, iqm_hi = bootstrap_interval(scores, iqm, config["bootstrap"])
    return {"mean": float(np.mean(scores)), "mean_lo": mean_lo, "mean_hi": mean_hi,
            "iqm": float(iqm(scores)), "iqm_lo": iqm_lo, "iqm_hi": iqm_hi,
            "solved": int(np.sum(scores >= config["solved_at"]))}


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def run(config: dict) -> dict:
    """Returns the tables `curves`, `scores`, `final` and `hyperparameters`."""
    import jax

    from dsorl.envs.gymnax_control import make

    _check(config)
    problem = make(config["env"])
    keys = jax.random.split(jax.random.key(0), int(config["seeds"]))
    steps = np.arange(0, int(config["total_steps"]) + 1, int(config["eval_every"]))
    curves, score_rows, final, hyper = [], [], [], []
    trainers = {}
    for method in progress.track(config["methods"], "control methods", unit="methods"):
        if method == "ppo":
            scores, trainers[method] = _train_ppo(config, keys)
            hyper += [{"method": "ppo", "name": k, "value": str(v)}
                      for k, v in _flat(config["ppo"]).items()]
        else:
            params, policy, trainers[method] = _train_dsorl(method, config, problem, keys)
            scores = _evaluate(problem, policy, params, keys, config)
            hyper += [{"method": method, "name": k, "value": str(v)}
                      for k, v in {**_flat(config["dsorl"]), **_flat(config[method])}.items()]
        for j, s in enumerate(steps):
            curves.append({"method": method, "steps": int(s), **_summary(scores[:, j], config)})
            score_rows += [{"method": method, "steps": int(s), "seed": i,
                            "score": float(scores[i, j])} for i in range(scores.shape[0])]
        final.append({"method": method, "steps": int(steps[-1]),
                      **_summary(scores[:, -1], config), "seeds": int(scores.shape[0])})
        progress.note(f"{method}: final mean {final[-1]['mean']:.1f}, IQM {final[-1]['iqm']:.1f},"
                      f" solved {final[-1]['solved']}/{scores.shape[0]}")
    # training only (no evaluation), every method compiled first, then timed round-robin
    # so that drifting load on a shared machine hits every method alike
    compiled, compile_s = {}, {}
    for method, fn in trainers.items():
        compiled[method], compile_s[method] = timing.compile(
            fn, keys, what=f"{method} x {keys.shape[0]} seeds (training only)")
    times = timing.compare({m: (lambda c=c: c(keys)) for m, c in compiled.items()},
                           repeats=int(config["timing_repeats"]), warmup=0)
    for r in final:
        tm = times[r["method"]]
        r.update(train_s=tm.median_seconds, compile_s=compile_s[r["method"]],
                 s_per_msteps=tm.median_seconds / (int(config["total_steps"]) / 1e6))
    ppo = [r["s_per_msteps"] for r in final if r["method"] == "ppo"]
    for r in final:
        r["vs_ppo"] = r["s_per_msteps"] / ppo[0] if ppo else float("nan")
    return {"tables": {"curves": curves, "scores": score_rows, "final": final,
                       "hyperparameters": hyper},
            "arrays": {}, "seeds": list(range(int(config["seeds"])))}


def figures(tables, arrays, config, plt) -> dict:
    """`learning_curves`: evaluation return against environment steps, IQM and mean over
    seeds (one panel each) with their 95% bootstrap bands, one line per method."""
    from dsorl import plots

    t = tables["curves"]
    methods = list(dict.fromkeys(t["method"].tolist()))
    fig, axs = plots.facets(plt, 2, ncols=2, width=5.0)
    for ax, stat in zip(axs, ("iqm", "mean")):
        for method, colour in zip(methods, plots.palette(len(methods))):
            sel = t["method"] == method
            x = t["steps"][sel]
            ax.plot(x, t[stat][sel], color=colour, label=method)
            ax.fill_between(x, t[f"{stat}_lo"][sel], t[f"{stat}_hi"][sel], color=colour,
                            alpha=0.2, linewidth=0)
        ax.axhline(config["solved_at"], color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("environment steps")
        ax.set_ylabel(f"evaluation return ({'IQM' if stat == 'iqm' else 'mean'} over seeds)")
        ax.grid(True, alpha=0.3)
    axs[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"control: {config['env']}, {config['seeds']} seeds, 95% bootstrap bands",
                 fontsize=10)
    fig.tight_layout()
    return {"learning_curves": fig}
