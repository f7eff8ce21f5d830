"""Packaging promises: environment.yml matches pyproject, the declared ranges hold what runs, and the
GPU tests collect and run without the notebooks extra."""

import re
import subprocess
import sys
import textwrap
import tomllib
from importlib.metadata import version

import pytest

from conftest import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _env_yml() -> tuple[str, list[str]]:
    text = (REPO / "environment.yml").read_text()
    python = re.search(r"^\s*- python=(\S+)$", text, re.M).group(1)
    pip = re.findall(r"^ {6}- (\S.*)$", text, re.M)
    return python, [p for p in pip if p != "-e ."]


def test_environment_yml_lists_what_pyproject_declares():
    python, pip = _env_yml()
    declared = PYPROJECT["dependencies"] + [r for extra in PYPROJECT["optional-dependencies"].values() for r in extra]
    assert sorted(pip) == sorted(set(declared))
    assert PYPROJECT["requires-python"] == f">={python}"  # the conda env is the oldest Python we test


def test_running_versions_are_inside_the_declared_ranges():
    specifiers = pytest.importorskip("packaging.specifiers")
    assert specifiers.SpecifierSet(PYPROJECT["requires-python"]).contains(
        f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}")
    (transformers,) = [r for r in PYPROJECT["dependencies"] if r.startswith("transformers")]
    spec = specifiers.SpecifierSet(transformers.removeprefix("transformers"))
    assert "5.17.0" in spec, "the GPU machine's transformers must stay inside the range"
    assert version("transformers") in spec


# Runs pytest in a child whose import system refuses the notebooks extra, as on a GPU machine
# with only `pip install -e ".[dev]"`.
_WITHOUT_NOTEBOOKS_EXTRA = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = ("ipywidgets", "nbformat", "nbclient", "jupyterlab", "jupyter_server", "jupyter_client", "ipykernel")
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
    sys.meta_path.insert(0, Block())
    import pytest
    sys.exit(pytest.main(sys.argv[1:]))
""")


def _pytest_without_notebooks_extra(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _WITHOUT_NOTEBOOKS_EXTRA, "-p", "no:cacheprovider", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=600)


def test_gpu_tests_collect_without_the_notebooks_extra():
    out = _pytest_without_notebooks_extra("--collect-only", "-q", "-m", "gpu")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "ERROR" not in out.stdout and "errors" not in out.stdout
    collected = [line for line in out.stdout.splitlines() if "::" in line]
    assert len(collected) >= 6 and any("test_encoders.py" in line for line in collected)


def test_widget_and_notebook_tests_skip_with_a_reason_without_the_extra():
    modules = ["tests/test_notebooks.py", "tests/test_viz_bench.py", "tests/test_viz_chunks.py",
               "tests/test_viz_sim.py"]
    out = _pytest_without_notebooks_extra("-q", "-rs", *modules)
    assert out.returncode == 5, out.stdout[-3000:] + out.stderr[-3000:]  # 5: every module skipped, no test ran
    assert f"{len(modules)} skipped" in out.stdout and "passed" not in out.stdout
    assert out.stdout.count("need the notebooks extra: pip install -e '.[notebooks]'") == len(modules)
