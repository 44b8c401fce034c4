"""Every script in benchmarks/ answers `--help` with its description and exits 0 (issue 17:
`python benchmarks/sweep_scaling.py --help` once failed with FileNotFoundError: '--help').

The scripts are run as `__main__` (`runpy`) in one subprocess, so jax is imported once and
the test stays fast; each script's own `sys.exit` is caught and its code recorded."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))

DRIVER = """
import contextlib, io, json, runpy, sys
out = {}
for path in sys.argv[1:]:
    buffer = io.StringIO()
    sys.argv = [path, "--help"]
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            runpy.run_path(path, run_name="__main__")
        code = "returned without exiting"
    except SystemExit as done:
        code = done.code
    except BaseException as err:
        code = f"{type(err).__name__}: {err}"
    out[path] = [code, buffer.getvalue()]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def helps():
    done = subprocess.run([sys.executable, "-c", DRIVER, *map(str, SCRIPTS)], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_there_are_benchmark_scripts():
    assert len(SCRIPTS) >= 7, SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_answers_help(helps, script):
    code, text = helps[str(script)]
    assert code in (0, None), f"{script.name} --help: exit {code!r}\n{text}"
    assert text.startswith(f"usage: {script.name} "), text
    # the description is the module docstring's first line, and the options are explained
    summary = ast.get_docstring(ast.parse(script.read_text())).splitlines()[0]
    assert " ".join(summary.split()) in " ".join(text.split()), text
    assert "--set KEY=VALUE" in text and "show this help message and exit" in text


def test_script_main_writes_results_before_printing(tmp_path, capsys):
    """The shared `main` of the thin scripts: results on disk before the first printed line,
    only the asked tables printed, a relative output_dir under the given root."""
    import types

    from dsorl.jobs._script import script_main

    config = tmp_path / "job.yaml"
    config.write_text("job: dynpg_scaling\noutput_dir: out\n")
    seen = {}

    def run(cfg):
        return {"tables": {"shown": [{"a": 1.0}], "hidden": [{"b": 2.0}]}, "seeds": [0]}

    def print_spy(*args, **kwargs):
        seen.setdefault("files_at_first_print", sorted(p.name for p in (tmp_path / "out").iterdir()))
        builtins_print(*args, **kwargs)

    import builtins
    builtins_print = builtins.print
    builtins.print = print_spy
    try:
        assert script_main(types.SimpleNamespace(run=run), "job.yaml", "doc", [str(config)],
                           root=tmp_path, printed=["shown"]) == 0
    finally:
        builtins.print = builtins_print
    assert {"meta.json", "shown.csv", "hidden.csv"} <= set(seen["files_at_first_print"])
    out = capsys.readouterr().out
    assert "== shown ==" in out and "== hidden ==" not in out
