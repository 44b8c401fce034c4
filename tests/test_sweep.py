"""`dsorl.sweep` in one process on one device: the table against a Python loop of single
runs, pytree axes, several MDPs, chunking and padding, resuming, and every documented error.

The swept algorithm is the exact softmax PG of `test_sweep_toy` (checked there against a
NumPy return and central differences). Shapes are fixed so most sweeps share one compile.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dsorl
from dsorl import sweep as sw
from helpers import random_mdp
from test_sweep_toy import Config, dense_return
from test_sweep_toy import softmax_pg as run

MDP = dsorl.envs.garnet(jax.random.key(0), 5, 3, 3)
THETA0 = jnp.zeros((5, 3))
CONFIG = Config(n_steps=12)
GRID = sw.Grid(gamma=[0.5, 0.9], lr=[0.5, 2.0], seed=[0, 1, 7])  # 12 members


@pytest.fixture(scope="module")
def single_run():
    """One jitted member run: the reference every sweep row is compared with."""
    return jax.jit(run, static_argnames="config")


def direct(single_run, mdp, params0, gamma, lr, seed, config=CONFIG):
    hparams = {"gamma": float(gamma), "lr": float(lr)}  # one signature: no recompiles
    return single_run(mdp, params0, hparams, jax.random.key(int(seed)), config=config)


@pytest.fixture(scope="module")
def chunked(tmp_path_factory):
    """12 members in chunks of 5 (three calls, the last padded by 3), traces every 3 steps."""
    out = tmp_path_factory.mktemp("chunked")
    result = sw.sweep(run, MDP, GRID, config=CONFIG, params0=THETA0, traces=True,
                      trace_every=3, chunk_size=5, out_dir=out)
    return result, out


def test_rows_are_the_product_in_c_order_and_equal_single_runs(chunked, single_run):
    result, _ = chunked
    t = result.table
    assert list(t) == ["member", "gamma", "lr", "seed", "grad_norm", "objective"]
    np.testing.assert_array_equal(t["member"], np.arange(12))
    expected = [(g, lr, s) for g in (0.5, 0.9) for lr in (0.5, 2.0) for s in (0, 1, 7)]
    assert list(zip(t["gamma"].tolist(), t["lr"].tolist(), t["seed"].tolist())) == expected
    for i, (g, lr, s) in enumerate(expected):
        _, trace = direct(single_run, MDP, THETA0, g, lr, s)
        np.testing.assert_allclose(t["objective"][i], trace["objective"][-1], rtol=1e-12)
        np.testing.assert_allclose(t["grad_norm"][i], trace["grad_norm"][-1], rtol=1e-12)
        np.testing.assert_allclose(result.traces["objective"][i], trace["objective"][::3],
                                   rtol=1e-12)
    assert result.traces["objective"].shape == (12, 4)  # steps 0, 3, 6, 9 of 12
    # the seed, not the other coordinates, makes the key: members differ only by seed
    first = t["objective"][:3]
    assert len(set(first.tolist())) == 3
    m = result.meta
    assert m["chunk_size"] == {"all": 5} and m["chunks"] == 3 and m["members_computed"] == 12
    assert m["metrics"] == ["grad_norm", "objective"] and m["trace_every"] == 3


def test_results_on_disk_and_resume_after_lost_chunks(chunked):
    result, out = chunked
    chunks = sorted((out / "chunks").glob("*.npz"))
    assert [c.name for c in chunks] == ["0000000000-0000000005.npz", "0000000005-0000000010.npz",
                                        "0000000010-0000000012.npz"]
    chunks[1].unlink()  # as if killed before the second chunk was written
    resumed = sw.sweep(run, MDP, GRID, config=CONFIG, params0=THETA0, traces=True,
                       trace_every=3, chunk_size=5, out_dir=out)
    assert resumed.meta["members_computed"] == 5 and resumed.meta["chunks"] == 1
    for k in result.table:
        np.testing.assert_array_equal(resumed.table[k], result.table[k])
    np.testing.assert_array_equal(resumed.traces["objective"], result.traces["objective"])
    # another chunk layout (chunks of 4) over an incomplete disk still gives each member once
    (out / "chunks" / "0000000010-0000000012.npz").unlink()
    relaid = sw.sweep(run, MDP, GRID, config=CONFIG, params0=THETA0, traces=True,
                      trace_every=3, chunk_size=4, out_dir=out)
    assert relaid.meta["members_computed"] == 2 and relaid.meta["chunks"] == 1
    np.testing.assert_array_equal(relaid.table["member"], np.arange(12))
    np.testing.assert_allclose(relaid.table["objective"], result.table["objective"], rtol=1e-13)
    # nothing left: no compile, no call
    again = sw.sweep(run, MDP, GRID, config=CONFIG, params0=THETA0, traces=True,
                     trace_every=3, chunk_size=4, out_dir=out)
    assert again.meta["members_computed"] == 0 and again.meta["compile_seconds"] == {}


def test_a_changed_sweep_is_refused_unless_overwritten(chunked, tmp_path):
    _, out = chunked
    other = sw.Grid(gamma=[0.5, 0.95], lr=[0.5, 2.0], seed=[0, 1, 7])
    with pytest.raises(ValueError, match=r"different sweep \(differs in: grid.gamma"):
        sw.sweep(run, MDP, other, config=CONFIG, params0=THETA0, out_dir=out)
    with pytest.raises(ValueError, match="differs in: config"):
        sw.sweep(run, MDP, GRID, config=Config(n_steps=13), params0=THETA0, traces=True,
                 trace_every=3, out_dir=out)
    with pytest.raises(ValueError, match="differs in: envs"):
        sw.sweep(run, dsorl.envs.garnet(jax.random.key(1), 5, 3, 3), GRID, config=CONFIG,
                 params0=THETA0, traces=True, trace_every=3, out_dir=out)
    fresh = tmp_path / "sweep"
    sw.sweep(run, MDP, GRID, config=CONFIG, params0=THETA0, out_dir=fresh)
    seeds = sw.Grid(gamma=[0.5, 0.9], lr=[0.5, 2.0], seed=[0, 1, 8])
    replaced = sw.sweep(run, MDP, seeds, config=CONFIG, params0=THETA0, out_dir=fresh,
                        overwrite=True)
    assert replaced.meta["members_computed"] == 12 and replaced.table["seed"].tolist()[:3] == [0, 1, 8]
    assert len(list((fresh / "chunks").glob("*.npz"))) == 1


def test_pytree_axes_mdp_axis_fixed_hparams_and_metrics_with_member(single_run):
    starts = jnp.stack([jnp.zeros((5, 3)), jnp.ones((5, 3)).at[:, 0].set(-1.0)])
    pair = [random_mdp(seed, 5, 3) for seed in (4, 5)]
    mdps = jax.tree_util.tree_map(lambda *x: np.stack(x), *pair)
    grid = sw.Grid(mdp=sw.axis(mdps), params0=sw.axis(starts, start=np.array(["zero", "skew"])),
                   gamma=[0.8], seed=[3])

    def metrics(final_state, trace, member):
        # uses the member's inputs: the return of the final policy, recomputed
        pi = jax.nn.softmax(final_state)
        return {"final": dsorl.discounted_return(member.mdp, pi, member.hparams["gamma"]),
                "lr": member.hparams["lr"]}

    # a mapping of fixed hyperparameters joins the grid's
    result = sw.sweep(run, None, grid, config=CONFIG, metrics=metrics, hparams={"lr": 0.5})
    t = result.table
    assert list(t) == ["member", "mdp_index", "start", "gamma", "seed", "final", "lr"]
    assert t["mdp_index"].tolist() == [0, 0, 1, 1] and t["start"].tolist() == ["zero", "skew"] * 2
    np.testing.assert_array_equal(t["lr"], 0.5)
    for i in range(4):
        theta, _ = direct(single_run, pair[i // 2], starts[i % 2], 0.8, 0.5, 3)
        reference = dense_return(pair[i // 2], np.asarray(theta), 0.8)
        np.testing.assert_allclose(t["final"][i], reference, rtol=1e-12)


def test_several_mdps_of_different_sizes_and_callable_hparams(single_run):
    small = random_mdp(5, 3, 2)
    # a callable builds the hyperparameters, and may depend on the MDP's name
    scale = {"small": 0.5, "big": 1.0}
    result = sw.sweep(run, {"small": small, "big": MDP}, GRID, config=CONFIG,
                      params0=lambda mdp: jnp.zeros(mdp.R.shape),
                      hparams=lambda p: {"gamma": p["gamma"], "lr": scale[p["env"]] * p["lr"]})
    t = result.table
    assert t["env"].tolist() == ["small"] * 12 + ["big"] * 12
    np.testing.assert_array_equal(t["member"], np.arange(24))
    for i in (0, 11, 12, 23):
        mdp = small if i < 12 else MDP
        lr = t["lr"][i] * (0.5 if i < 12 else 1.0)
        _, trace = direct(single_run, mdp, jnp.zeros(mdp.R.shape), t["gamma"][i], lr, t["seed"][i])
        np.testing.assert_allclose(t["objective"][i], trace["objective"][-1], rtol=1e-12)
    assert set(result.meta["compile_seconds"]) == {"small", "big"}


def test_a_first_argument_that_is_not_arrays_is_closed_over(single_run):
    class Model:  # like a DSO ChainModel: an object with functions, not a pytree of arrays
        def __init__(self, mdp):
            self.mdp = mdp

    def via_model(model, params0, hparams, key, *, config):
        return run(model.mdp, params0, hparams, key, config=config)

    grid = sw.Grid(gamma=[0.8], lr=[0.5], seed=[2])
    result = sw.sweep(via_model, Model(MDP), grid, config=CONFIG, params0=THETA0)
    _, trace = direct(single_run, MDP, THETA0, 0.8, 0.5, 2)
    np.testing.assert_allclose(result.table["objective"][0], trace["objective"][-1], rtol=1e-12)


def test_chunk_size_from_the_memory_budget(capsys):
    roomy = sw.sweep(run, MDP, GRID, config=CONFIG, params0=THETA0, progress=True)
    assert roomy.meta["chunk_size"] == {"all": 12} and roomy.meta["chunks"] == 1
    # one member's footprint is at least its 12-step trace: a budget below two of those
    # leaves chunks of one member
    tight = sw.sweep(run, MDP, GRID, config=CONFIG, params0=THETA0, memory_budget=100)
    assert tight.meta["chunk_size"] == {"all": 1} and tight.meta["chunks"] == 12
    np.testing.assert_allclose(tight.table["objective"], roomy.table["objective"], rtol=1e-13)
    assert "dsorl: sweep: 12/12 members" in capsys.readouterr().err  # the roomy one asked


def test_progress_is_reported_per_chunk(monkeypatch, capsys):
    from dsorl import progress

    monkeypatch.setattr(progress, "STEP_LOG_SECONDS", 0.0)  # every step, not every 10 s
    sw.sweep(run, MDP, GRID, config=CONFIG, params0=THETA0, chunk_size=5, progress=True)
    steps = [line.split(",")[0] for line in capsys.readouterr().err.splitlines()
             if line.startswith("dsorl: sweep: ") and "elapsed" in line]
    assert steps == ["dsorl: sweep: 5/12 members", "dsorl: sweep: 10/12 members",
                     "dsorl: sweep: 12/12 members"]
    sw.sweep(run, MDP, GRID, config=CONFIG, params0=THETA0, chunk_size=5, progress=False)
    assert capsys.readouterr().err == ""


def test_results_to_pandas_and_rows(chunked):
    result, _ = chunked
    frame = result.to_pandas()
    assert len(frame) == len(result) == 12
    assert result.rows()[4] == {k: np.asarray(v)[4].item() for k, v in result.table.items()}


def test_load_reads_a_cli_result(chunked, tmp_path):
    from dsorl.results import write_results

    result, _ = chunked
    write_results(tmp_path, {"job": "x"}, tables={"table": result.table}, arrays=result.traces,
                  extra={"sweep": result.meta})
    loaded = sw.load(tmp_path)
    for k, v in result.table.items():
        np.testing.assert_array_equal(loaded.table[k], v)
    np.testing.assert_array_equal(loaded.traces["objective"], result.traces["objective"])
    assert loaded.meta["fingerprint"] == result.meta["fingerprint"]
    json.dumps(loaded.meta)


@pytest.mark.parametrize("kwargs, message", [
    (dict(grid="gamma"), "grid must be a dsorl.sweep.Grid"),
    (dict(params0=None), "give initial parameters"),
    (dict(trace_every=0), "trace_every must be a positive integer"),
    (dict(chunk_size=0), "chunk_size must be a positive integer"),
    (dict(memory_budget=0), "memory_budget must be > 0"),
    (dict(mdp={}), "mdp mapping is empty"),
    (dict(traces=["objective", "nope"]), "unknown trace 'nope'; the trace has: grad_norm, objective"),
    (dict(metrics=lambda s, t, m: {"theta": s}), r"metric 'theta' has shape \(5, 3\)"),
    (dict(metrics=lambda s, t, m: s), "metrics must return a mapping"),
    (dict(metrics=lambda s, t, m: {"gamma": t["objective"][-1]}),
     "metric 'gamma' has the name of a table column; the grid and member columns are: member, gamma, lr, seed"),
])
def test_bad_sweeps_raise_clear_errors(kwargs, message):
    args = dict(run=run, mdp=MDP, grid=sw.Grid(gamma=[0.9], lr=[0.5], seed=[0]), config=CONFIG,
                params0=THETA0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        sw.sweep(**args)


def test_an_unbatchable_algorithm_is_named():
    def needs_concrete(mdp, params0, hparams, key, *, config):
        return params0, {"x": jnp.zeros(int(hparams["gamma"] * 10))}  # shape from a traced value

    with pytest.raises(ValueError, match="cannot be batched over this grid"):
        sw.sweep(needs_concrete, MDP, sw.Grid(gamma=[0.9]), params0=THETA0)


@pytest.mark.parametrize("axes, message", [
    (dict(gamma=[]), "'gamma' must be a non-empty 1-D list"),
    (dict(gamma=[[0.1, 0.2]]), "'gamma' must be a non-empty 1-D list"),
    (dict(gamma=["a"]), "'gamma' must hold numbers"),
    (dict(seed=[0.5]), "'seed' must hold integers"),
    (dict(), "a grid needs at least one axis"),
    (dict(x=sw.Axis(np.zeros(2), {"gamma": np.zeros(2)}), gamma=[0.1]), "columns must be distinct"),
])
def test_bad_grids_raise_clear_errors(axes, message):
    with pytest.raises(ValueError, match=message):
        sw.Grid(**axes)


@pytest.mark.parametrize("values, labels, message", [
    ({"a": np.zeros(2), "b": np.zeros(3)}, {}, "same leading axis"),
    (np.float64(1.0), {}, "same leading axis"),
    ({}, {}, "at least one array"),
    (np.zeros((0, 2)), {}, "at least one point"),
    (np.zeros((2, 2)), {"w": np.zeros(3)}, r"label 'w' must have shape \(2,\)"),
])
def test_bad_axes_raise_clear_errors(values, labels, message):
    with pytest.raises(ValueError, match=message):
        sw.axis(values, **labels)


# ---------------------------------------------------------------------------------------
# Every grid value checked on the host before compiling (issue 17, "unchecked grid values")


def _pg_sweep(grid, out_dir=None, **kwargs):
    from dsorl.algorithms import pg

    return sw.sweep(pg, MDP, grid, config=pg.Config(n_steps=3), out_dir=out_dir, **kwargs)


@pytest.mark.parametrize("grid, message", [
    (dict(gamma=[0.5, 1.5], step_size=[1.0]), r"grid point gamma=1\.5, step_size=1\.0: .*"
                                              r"gamma = 1\.5 must lie in \[0, 1\)"),
    (dict(gamma=[0.5], step_size=[1.0, 0.0]), r"grid point gamma=0\.5, step_size=0\.0"),
    (dict(gamma=[-0.5], step_size=[1.0]), r"grid point gamma=-0\.5"),
])
def test_an_algorithm_sweep_from_python_checks_every_grid_point(tmp_path, grid, message):
    with pytest.raises(ValueError, match=message):
        _pg_sweep(sw.Grid(**grid), out_dir=tmp_path / "out", params0=THETA0)
    assert not (tmp_path / "out").exists()  # nothing written, nothing compiled


def test_nan_in_a_params0_axis_is_named():
    starts = np.zeros((3, 5, 3))
    starts[1, 4, 2] = np.nan
    with pytest.raises(ValueError, match=r"params0 axis\[1, 4, 2\] = nan is not finite"):
        _pg_sweep(sw.Grid(gamma=[0.5], step_size=[1.0], params0=sw.axis(starts)))


def test_nan_in_a_scalar_axis_is_named():
    with pytest.raises(ValueError, match=r"grid axis 'gamma' holds NaN \(point 1: \[0\.5, nan\]\)"):
        sw.Grid(gamma=[0.5, np.nan])
    assert sw.Grid(clip=[np.inf]).size == 1  # inf may be a value (PCO's clip: none)


def test_an_nbw_sweep_of_a_multichain_mdp_is_refused():
    from dsorl.algorithms import nbw
    from dsorl.policies import sigmoid

    # two absorbing states reached by different actions: two closed recurrent classes
    P = np.zeros((3, 2, 3))
    P[0, 0, 1] = P[0, 1, 2] = 1.0
    P[1, :, 1] = P[2, :, 2] = 1.0
    mdp = dsorl.MDP(P, np.ones((3, 2)), np.array([1.0, 0, 0]))
    grid = sw.Grid(params0=sw.axis(np.zeros((2, 2))))
    config = nbw.Config(n_steps=2, policy=sigmoid(3))
    with pytest.raises(ValueError, match=r"multichain: a policy using every action has 2 closed"):
        sw.sweep(nbw.EXACT, mdp, grid, config=config)
    with pytest.raises(ValueError, match=r"a module of several algorithms: pass one of its"
                                         r" records \(EXACT, SAMPLED, DISCOUNTED\)"):
        sw.sweep(nbw, mdp, grid, config=config)
