"""scripts/install_torch.sh, driven with a fake python and a fake nvidia-smi that log what they are asked."""

import os
import subprocess
from pathlib import Path

import pytest

from conftest import REPO

SCRIPT = REPO / "scripts" / "install_torch.sh"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"

FAKE_PYTHON = """#!/bin/sh
echo "$*" >> "$LOG"
case "$*" in
  "-c import torch") [ "$HAS_TORCH" = 1 ] ;;
  *--dry-run*) [ "$CONFIGURED_HAS_CPU_WHEEL" = 1 ] ;;
  *) exit 0 ;;
esac
"""


def _run(tmp_path: Path, *, gpu=False, has_torch=False, configured_has_cpu_wheel=False, version=None) -> list[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    py = bin_dir / "python"
    py.write_text(FAKE_PYTHON)
    smi = bin_dir / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\nexit {0 if gpu else 1}\n")  # shadows a real one on a GPU machine
    for f in (py, smi):
        f.chmod(0o755)
    log = tmp_path / "log"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "LOG": str(log), "HAS_TORCH": str(int(has_torch)),
           "CONFIGURED_HAS_CPU_WHEEL": str(int(configured_has_cpu_wheel))}
    if version:
        env["TORCH_VERSION"] = version
    subprocess.run(["sh", str(SCRIPT), str(py)], env=env, check=True, timeout=30)
    return log.read_text().splitlines() if log.exists() else []


def test_nothing_to_do_when_torch_is_there(tmp_path):
    assert _run(tmp_path, has_torch=True) == ["-c import torch"]


def test_gpu_machine_uses_pips_index_as_configured(tmp_path):
    assert _run(tmp_path, gpu=True)[1:] == ["-m pip install torch==2.13.0"]


def test_cpu_build_from_pips_own_configuration_first(tmp_path):
    # this machine: a CPU wheel in pip's find-links folder, no route to the PyTorch index
    calls = _run(tmp_path, configured_has_cpu_wheel=True)
    assert calls[1:] == ["-m pip install --dry-run --no-deps --quiet torch==2.13.0+cpu", "-m pip install torch==2.13.0+cpu"]


def test_otherwise_the_cpu_index_is_only_an_extra_index(tmp_path):
    calls = _run(tmp_path, version="2.9.1")
    assert calls[-1] == f"-m pip install torch==2.9.1+cpu --extra-index-url {CPU_INDEX}"


def test_never_replaces_or_names_the_default_index():
    text = SCRIPT.read_text()
    assert "--index-url" not in text.replace("--extra-index-url", "")
    assert "pypi.org" not in text and "pypi.python.org" not in text


def test_every_cpu_install_asks_for_the_cpu_build(tmp_path):
    for configured in (False, True):
        run_dir = tmp_path / str(configured)
        run_dir.mkdir()
        installs = [c for c in _run(run_dir, configured_has_cpu_wheel=configured) if c.startswith("-m pip install")]
        assert installs and all("torch==2.13.0+cpu" in c for c in installs)


@pytest.mark.skipif(not os.path.isdir("/opt/wheels"), reason="needs this dev machine's pip find-links folder")
def test_on_this_machine_the_dry_run_finds_the_local_cpu_wheel(tmp_path):
    out = subprocess.run(["python3", "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed",
                          "torch==2.13.0+cpu"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "torch-2.13.0+cpu" in out.stdout, out.stdout + out.stderr
