"""README's examples run as written: its Python blocks, its module files and its YAML sweep.

A block whose first line is `# NAME.py` (or `# NAME.yaml: ...`) is a file the README asks
the reader to write: it is written to a temporary directory on `sys.path` (the working
directory of the CLI run), and the other Python blocks run with it importable.
"""
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
FILE = re.compile(r"#\s*([\w.]+\.(?:py|yaml))\b")


def _blocks(kind):
    return re.findall(rf"```{kind}\n(.*?)```", README.read_text(), re.S)


def _files(tmp_path):
    out = {}
    for block in _blocks("python") + _blocks("yaml"):
        m = FILE.match(block)
        if m:
            (tmp_path / m.group(1)).write_text(block)
            out[m.group(1)] = block
    return out


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    files = _files(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    blocks = [b for b in _blocks("python") if b not in files.values()]
    assert blocks, "README has no python example"
    try:
        for block in blocks:
            exec(compile(block, str(README), "exec"), {})
    finally:
        for name in files:
            sys.modules.pop(name.removesuffix(".py"), None)


@pytest.mark.parametrize("name", ["my_npg_sweep.yaml"])
def test_readme_cli_sweep_of_a_new_algorithm(tmp_path, name):
    files = _files(tmp_path)
    assert name in files, f"README lost its {name} block"
    out = subprocess.run([sys.executable, "-m", "dsorl.cli", "sweep", name], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600,
                         env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    table = (tmp_path / "results" / "my_npg").glob("table.*")
    assert any(table), sorted(p.name for p in (tmp_path / "results" / "my_npg").iterdir())
    assert "6 members" in out.stdout
