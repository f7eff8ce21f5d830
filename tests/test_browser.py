"""Notebook 01 as a user meets it: JupyterLab in headless Chromium, run all, move a slider.

Starts JupyterLab on a free loopback port with a known token, opens a scratch copy of notebook
01 (so no run can write outputs into the committed file), runs all cells, waits for the
widgets, screenshots the explorer, moves the chunk-size slider with the keyboard and checks that
the figure changed. Screenshots go to ``test-artifacts/``. Skips without ``/usr/bin/chromium``
unless ``VITKIT_REQUIRE_BROWSER=1`` (CI), which makes that a failure.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "01_chunk_windows.ipynb"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
EXPLORER = ".vitkit-chunk-explorer"
# JupyterLab settings for the scratch lab: never autosave, no news or update checks.
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
}

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]


def _require_chromium() -> None:
    """Skip without Chromium or playwright, unless CI asked for the browser test (then fail)."""
    required = os.environ.get("VITKIT_REQUIRE_BROWSER") == "1"
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (Debian's chromium package: apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright Python package (pip install -e '.[dev]')")
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        missing.append("JupyterLab (the notebooks extra: pip install -e '.[notebooks]')")
    if not missing:
        return
    if required:
        pytest.fail(f"VITKIT_REQUIRE_BROWSER=1 but the browser test lacks {' and '.join(missing)}")
    pytest.skip(f"browser test needs {' and '.join(missing)}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with code {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer {url} within {timeout_s} s")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the lab's process group (the server shuts its kernels down), SIGKILL if it hangs."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on a free loopback port, serving a scratch copy of notebook 01."""
    _require_chromium()
    root, settings = tmp_path / "root", tmp_path / "settings"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    for name, values in LAB_SETTINGS.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port, token = _free_port(), secrets.token_hex(16)
    env = os.environ | {"CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg",
                        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    log = (tmp_path / "lab.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         f"--LabServerApp.user_settings_dir={settings}", f"--LabServerApp.workspaces_dir={tmp_path / 'workspaces'}",
         "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=",
         "--allow-root"],  # CI containers run as root; Jupyter refuses that without the flag
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        try:
            _wait_for_server(f"http://127.0.0.1:{port}/api/status?token={token}", proc, timeout_s=90)
        except (RuntimeError, TimeoutError) as err:
            log.flush()
            raise RuntimeError(f"{err}; lab log:\n{(tmp_path / 'lab.log').read_text()[-3000:]}") from None
        yield f"http://127.0.0.1:{port}", token
    finally:
        _stop(proc)
        log.close()
        (root / NOTEBOOK.name).unlink(missing_ok=True)


def _figure_src(page) -> str:
    return page.eval_on_selector(f"{EXPLORER} img", "img => img.src")


def test_notebook01_widgets_render_and_slider_redraws(lab, tmp_path, artifacts):
    from playwright.sync_api import sync_playwright

    base, token = lab
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1100},
        )
        context.set_default_timeout(60_000)
        try:
            page = context.new_page()
            page.goto(f"{base}/lab/tree/{NOTEBOOK.name}?token={token}", wait_until="domcontentloaded", timeout=90_000)
            page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                                   " && window.jupyterapp.shell.currentWidget.context"
                                   " && window.jupyterapp.shell.currentWidget.sessionContext.session"
                                   " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel", timeout=90_000)
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            page.wait_for_function(
                f"() => {{ const i = document.querySelector('{EXPLORER} img'); return i && i.src.startsWith('blob:') || (i && i.src.length > 100); }}",
                timeout=180_000,
            )
            explorer = page.locator(EXPLORER)
            assert explorer.locator(".widget-slider").count() == 6
            body = page.locator(".jp-Notebook").inner_text()
            assert "Error displaying widget" not in body and "Loading widget" not in body
            page.evaluate("() => window.jupyterapp.commands.execute('application:toggle-left-area')")
            explorer.evaluate("e => e.scrollIntoView({block: 'start'})")  # sliders at the top
            page.wait_for_timeout(500)
            page.screenshot(path=str(artifacts / "notebook01-lab.png"))  # the README's picture
            before_src = _figure_src(page)
            before = explorer.screenshot(path=str(artifacts / "notebook01-before.png"))

            chunk = explorer.locator(".widget-slider", has_text="chunk size").first
            readout = chunk.locator(".widget-readout")
            start_value = int(readout.inner_text())
            chunk.locator(".noUi-handle").first.focus()
            for _ in range(4):  # 4 steps of 64 tokens: fewer images straddle, fewer windows
                page.keyboard.press("ArrowRight")
            page.wait_for_function(
                f"(old) => {{ const i = document.querySelector('{EXPLORER} img'); return i && i.src !== old; }}",
                arg=before_src, timeout=60_000,
            )
            page.wait_for_timeout(500)  # let the new image paint before the screenshot
            after = explorer.screenshot(path=str(artifacts / "notebook01-after.png"))
            page.screenshot(path=str(artifacts / "notebook01-page-after.png"))
            assert int(readout.inner_text()) == start_value + 4 * 64
            assert after != before
            summary = explorer.locator(".widget-html").first.inner_text()
            assert "windows over" in summary
        finally:
            context.close()


def test_missing_chromium_skips_unless_ci_requires_it(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", Path("/nonexistent/chromium"))
    monkeypatch.delenv("VITKIT_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="/nonexistent/chromium"):
        _require_chromium()
    monkeypatch.setenv("VITKIT_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="VITKIT_REQUIRE_BROWSER=1"):
        _require_chromium()
