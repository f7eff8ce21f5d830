"""The notebooks as a user meets them: JupyterLab in headless Chromium, run all, move one widget per view.

Starts JupyterLab on a free loopback port with a known token, serving scratch copies of the notebooks (so no
run can write outputs into the committed files). For each notebook it runs all cells, waits for every view's
figure, screenshots it, moves one of its controls as a user would (keyboard on a slider, a drop-down choice,
a button) and checks that the view redrew; the time from the move to the new figure, as the browser sees it,
goes to ``test-artifacts/widget-timing.json`` next to the screenshots. Skips without ``/usr/bin/chromium``
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
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
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
    """A JupyterLab server on a free loopback port, serving scratch copies of the notebooks."""
    _require_chromium()
    root, settings = tmp_path / "root", tmp_path / "settings"
    root.mkdir()
    for notebook in sorted(NOTEBOOKS.glob("*.ipynb")):
        shutil.copy(notebook, root / notebook.name)
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


def _figure_src(page, view: str) -> str:
    return page.eval_on_selector(f"{view} img", "img => img.src")


def _wait_for_figure(page, view: str, timeout_ms: int = 240_000) -> None:
    page.wait_for_function(
        f"() => {{ const i = document.querySelector('{view} img');"
        " return i && (i.src.startsWith('blob:') || i.src.length > 100); }",
        timeout=timeout_ms)


def _moved(page, view: str, name: str, move, artifacts: Path, timings: dict, timeout_ms: int = 60_000) -> None:
    """Screenshot ``view``, do ``move`` (a user's action on one of its controls), wait for a new figure, screenshot
    again; record the move-to-figure time in ``timings[name]``."""
    locator = page.locator(view).first
    locator.evaluate("e => e.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(300)
    before_src = _figure_src(page, view)
    before = locator.screenshot(path=str(artifacts / f"{name}-before.png"))
    start = time.perf_counter()
    move(locator)
    page.wait_for_function(
        f"(old) => {{ const i = document.querySelector('{view} img'); return i && i.src !== old; }}",
        arg=before_src, timeout=timeout_ms)
    timings[name] = round((time.perf_counter() - start) * 1e3)
    page.wait_for_timeout(500)  # let the new image paint before the screenshot
    after = locator.screenshot(path=str(artifacts / f"{name}-after.png"))
    assert after != before, f"{name}: the view did not change on screen"


def _press(page, slider, key: str, times: int) -> None:
    slider.locator(".noUi-handle").first.focus()
    for _ in range(times):
        page.keyboard.press(key)


def _choose(dropdown, label: str) -> None:
    dropdown.locator("select").select_option(label=label)


def _open_and_run_all(page, base: str, token: str, notebook: str) -> None:
    page.goto(f"{base}/lab/tree/{notebook}?token={token}", wait_until="domcontentloaded", timeout=90_000)
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                           " && window.jupyterapp.shell.currentWidget.context"
                           " && window.jupyterapp.shell.currentWidget.sessionContext.session"
                           " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel", timeout=90_000)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")


def _finished(page, notebook: str) -> None:
    """Every cell ran (no "[*]" prompt left), no widget failed to render; a screenshot of the whole page."""
    page.wait_for_function(
        "() => { const p = [...document.querySelectorAll('.jp-InputArea-prompt')].map(e => e.textContent);"
        " return p.length > 0 && p.every(t => !t.includes('*')); }", timeout=240_000)
    body = page.locator(".jp-Notebook").inner_text()
    assert "Error displaying widget" not in body and "Loading widget" not in body, notebook
    assert "Traceback" not in body, f"{notebook}: a cell raised"


def _run_all(page, lab, notebook: str, *views: str) -> None:
    """Open ``notebook``, run all its cells, wait for each view's figure and for the last cell; hide the file
    browser so the views get the page's width."""
    base, token = lab
    _open_and_run_all(page, base, token, notebook)
    for view in views:
        _wait_for_figure(page, view)
    _finished(page, notebook)
    page.evaluate("() => window.jupyterapp.commands.execute('application:toggle-left-area')")


@pytest.fixture
def browser_page(lab, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1100},
        )
        context.set_default_timeout(60_000)
        try:
            yield context.new_page()
        finally:
            context.close()


def _save_timings(artifacts: Path, timings: dict) -> None:
    path = artifacts / "widget-timing.json"
    stored = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps(stored | timings, indent=1) + "\n")


def test_notebook01_widgets_render_and_slider_redraws(lab, browser_page, artifacts):
    page, timings, view, video = browser_page, {}, ".vitkit-chunk-explorer", ".vitkit-video-explorer"
    _run_all(page, lab, "01_chunk_windows.ipynb", view, video)
    explorer = page.locator(view)
    assert explorer.locator(".widget-slider").count() == 6
    explorer.evaluate("e => e.scrollIntoView({block: 'start'})")  # sliders at the top
    page.wait_for_timeout(500)
    page.screenshot(path=str(artifacts / "notebook01-lab.png"))  # the README's picture
    chunk = explorer.locator(".widget-slider", has_text="chunk size").first
    readout = chunk.locator(".widget-readout")
    start_value = int(readout.inner_text())
    # 4 steps of 64 tokens: fewer images straddle, fewer windows
    _moved(page, view, "notebook01-chunk-size", lambda _: _press(page, chunk, "ArrowRight", 4), artifacts, timings)
    page.screenshot(path=str(artifacts / "notebook01-page-after.png"))
    assert int(readout.inner_text()) == start_value + 4 * 64
    assert "windows over" in explorer.locator(".widget-html").first.inner_text()
    # the video view opens on the real clip; two steps of the frames slider (24 frames) are more than it has
    assert "the sample clip" in page.locator(video).inner_text()
    frames = page.locator(video).locator(".widget-slider", has_text="frames").first
    _moved(page, video, "notebook01-video-frames", lambda _: _press(page, frames, "ArrowRight", 2), artifacts, timings)
    page.locator(video).get_by_text("a synthetic video: 24 frames").first.wait_for(timeout=60_000)
    _save_timings(artifacts, timings)


def test_notebook02_views_switch_results_tower_and_run_the_smoke_benchmark(lab, browser_page, artifacts):
    page, timings = browser_page, {}
    bench, dp = ".vitkit-bench-view", ".vitkit-dp-panel"
    _run_all(page, lab, "02_batched_vs_per_request.ipynb", bench, dp)
    # no crossover file is stored for the card: one line with the command, no empty axes
    assert "python -m vitkit.bench crossover" in page.locator(".jp-Notebook").inner_text()
    view = page.locator(bench)
    assert "GPU measurement" in view.inner_text() and not view.locator(".widget-dropdown", has_text="sweep").is_visible()
    results = view.locator(".widget-dropdown", has_text="results").first
    sweep_file = next(o for o in results.locator("option").all_inner_texts() if "full-" in o)
    _moved(page, bench, "notebook02-sweep-file", lambda _: _choose(results, sweep_file), artifacts, timings)
    assert view.locator(".widget-dropdown", has_text="sweep").first.is_visible()  # a sweep file has sweeps
    sweep = view.locator(".widget-dropdown", has_text="sweep").first
    _moved(page, bench, "notebook02-sweep", lambda _: _choose(sweep, "qwen-resolution"), artifacts, timings)
    tower = page.locator(dp).locator(".widget-dropdown").first
    other = tower.locator("option").all_inner_texts()[-1]
    _moved(page, dp, "notebook02-dp-tower", lambda _: _choose(tower, other), artifacts, timings)
    button = view.locator("button", has_text="Run CPU smoke benchmark")
    _moved(page, bench, "notebook02-cpu-smoke", lambda _: button.click(), artifacts, timings, timeout_ms=300_000)
    assert "CPU SMOKE" in view.inner_text()
    assert "run/s" not in view.inner_text()  # the finished progress bars (tqdm: "... run/s") are cleared
    _save_timings(artifacts, timings)


def test_notebook03_views_redraw_on_a_rate_and_a_panel_change(lab, browser_page, artifacts):
    page, timings = browser_page, {}
    ttft, sim, policies = ".vitkit-ttft-explorer", ".vitkit-sim-explorer", ".vitkit-policy-view"
    _run_all(page, lab, "03_cache_and_scheduler.ipynb", ttft, sim, policies)
    workload = page.locator(policies).locator(".widget-dropdown", has_text="workload").first
    _moved(page, policies, "notebook03-policy-workload", lambda _: _choose(workload, "mixed-chat"), artifacts, timings)
    assert "mixed-chat" in page.locator(policies).inner_text()
    rate = page.locator(ttft).locator(".widget-slider", has_text="request rate").first
    _moved(page, ttft, "notebook03-ttft-rate", lambda _: _press(page, rate, "ArrowLeft", 5), artifacts, timings)
    memory = page.locator(sim).locator("button", has_text="cache memory").first
    _moved(page, sim, "notebook03-cache-panel", lambda _: memory.click(), artifacts, timings)
    chunk = page.locator(sim).locator(".widget-slider", has_text="tokens / step").first
    _moved(page, sim, "notebook03-cache-tokens-per-step", lambda _: _press(page, chunk, "ArrowLeft", 2), artifacts,
           timings)
    _save_timings(artifacts, timings)


def test_missing_chromium_skips_unless_ci_requires_it(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", Path("/nonexistent/chromium"))
    monkeypatch.delenv("VITKIT_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="/nonexistent/chromium"):
        _require_chromium()
    monkeypatch.setenv("VITKIT_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="VITKIT_REQUIRE_BROWSER=1"):
        _require_chromium()
