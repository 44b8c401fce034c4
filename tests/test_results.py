"""Result files: exact CSV round trips of row and column tables, arrays, metadata, and
the plain-text table."""
import json

import numpy as np
import pandas as pd
import pytest

from dsorl.results import environment_record, format_table, read_results, write_results


def test_columns_round_trip_exactly_and_load_with_pandas(tmp_path):
    rng = np.random.default_rng(0)
    table = {"member": np.arange(5), "env": np.array(["A1", "A1", "B2", "B2", "B3"]),
             "x": rng.normal(size=5) * 1e-7, "ok": np.array([True, False, True, True, False]),
             "y": np.array([0.1, np.nan, np.inf, -1e300, 1 / 3])}
    rows = [{"name": "a", "value": np.float64(2 / 3), "n": np.int64(4)}]
    arrays = {"trace": rng.normal(size=(5, 3))}
    write_results(tmp_path, {"job": "test", "n": 1}, tables={"table": table, "rows": rows},
                  arrays=arrays, seeds=[0, 1], extra={"note": "hi"})
    tables, arrays_back, meta = read_results(tmp_path)
    for k, v in table.items():
        np.testing.assert_array_equal(tables["table"][k], v)
        assert tables["table"][k].dtype.kind == np.asarray(v).dtype.kind
    assert tables["rows"]["value"][0] == 2 / 3 and tables["rows"]["n"].dtype == np.int64
    np.testing.assert_array_equal(arrays_back["trace"], arrays["trace"])
    frame = pd.read_csv(tmp_path / "table.csv")
    np.testing.assert_array_equal(frame["x"].to_numpy(), table["x"])
    assert meta["config"] == {"job": "test", "n": 1} and meta["seeds"] == [0, 1]
    assert meta["note"] == "hi" and meta["tables"] == ["rows", "table"]
    assert not list(tmp_path.glob("*.tmp"))


def test_environment_record_names_versions_devices_and_commit():
    record = environment_record()
    for key in ("python", "jax", "jaxlib", "numpy", "x64", "devices", "dsorl", "git_commit"):
        assert key in record
    assert record["x64"] is True and record["devices"]
    assert record["git_commit"] is None or len(record["git_commit"]) == 40
    json.dumps(record)


def test_bad_tables_and_directories(tmp_path):
    with pytest.raises(ValueError, match="differ in length"):
        write_results(tmp_path, {}, tables={"t": {"a": [1, 2], "b": [1]}})
    with pytest.raises(ValueError, match="not a result directory"):
        read_results(tmp_path / "nothing")


def test_format_table_rows_columns_and_ellipsis():
    text = format_table({"a": np.arange(7), "b": np.linspace(0, 1, 7)}, max_rows=4)
    lines = text.splitlines()
    assert lines[0].split() == ["a", "b"] and lines[2].split() == ["0", "0"]
    assert lines[4].split() == ["...", "..."] and lines[-2].split() == ["6", "1"]
    assert lines[-1] == "(3 more rows)"
    assert format_table([{"a": 1.23456789}]).splitlines()[-1].strip() == "1.23457"
    assert format_table([]) == "(empty)"


def test_keep_on_interrupt_hands_over_what_was_finished():
    from dsorl.results import Interrupted, keep_on_interrupt

    rows = []
    with pytest.raises(Interrupted) as stop:
        with keep_on_interrupt(lambda: {"tables": {"rows": list(rows)}}):
            rows.append({"done": 1})
            raise KeyboardInterrupt
    assert stop.value.partial == {"tables": {"rows": [{"done": 1}]}}
    # an Interrupted raised inside passes through untouched
    with pytest.raises(Interrupted) as inner:
        with keep_on_interrupt(lambda: {"tables": {}}):
            raise Interrupted({"tables": {"inner": []}})
    assert inner.value.partial == {"tables": {"inner": []}}


def test_an_interrupted_nbw_reproduction_keeps_its_finished_methods(monkeypatch):
    import numpy as np

    from dsorl import config as config_lib
    from dsorl.jobs import nbw_reproduce
    from dsorl.results import Interrupted

    cfg = config_lib.load_config("configs/nbw_reproduce_quick.yaml", ["envs=[A1]"])
    calls = []

    def timed_runs(fn, grid, n_seeds, seed, repeats, what):
        if calls:
            raise KeyboardInterrupt
        calls.append(what)
        finals = np.zeros((n_seeds, len(grid)))
        return (finals, finals + 12.0), 0.0, 0.0

    monkeypatch.setattr(nbw_reproduce, "_timed_runs", timed_runs)
    with pytest.raises(Interrupted) as stop:
        nbw_reproduce.run(cfg)
    rows = stop.value.partial["tables"]["summary"]
    assert [r["method"] for r in rows] == [calls[0].split("/")[1]]
    assert "A1/gain_landscape" in stop.value.partial["arrays"]
