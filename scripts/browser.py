"""Headless Chromium against the project's UIs (MLflow, Prefect): the screenshots in docs/ and
the opt-in browser test (tests/test_ui_browser.py) both use it.

    python scripts/browser.py --project DIR [--out docs/]   # screenshots of a finished project

Playwright for Python drives Debian's Chromium (`make browser` installs it) through
`executable_path`; no browser is downloaded, at install or at run time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

RUNS_VIEW = "#/experiments/{id}/runs?workflowType=machine_learning"
CHART_VIEW = RUNS_VIEW + "&compareRunsMode=CHART"


def compare_view(run_ids: list[str], experiment: str) -> str:
    """MLflow's compare page: the given runs side by side, every metric a row."""
    import json
    from urllib.parse import quote

    return (f"#/compare-runs?runs={quote(json.dumps(run_ids))}"
            f"&experiments={quote(json.dumps([experiment]))}")


def latest_execution(project: Path) -> tuple[str, dict[str, str]]:
    """The newest pipeline execution's parent run id and its children (run name -> id): one
    per variant, plus the untrained reference."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from mlflow.tracking import MlflowClient

    from tasks.tracking import tracking_uri

    client = MlflowClient(tracking_uri(project))
    exp = experiment_id(project)
    parents = client.search_runs([exp], "tags.stage = 'pipeline'", max_results=1,
                                 order_by=["attributes.start_time DESC"])
    if not parents:
        raise RuntimeError(f"{project}: no pipeline run in MLflow (run the pipeline)")
    pid = parents[0].info.run_id
    kids = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{pid}'",
                              order_by=["attributes.start_time DESC"], max_results=1000)
    out: dict[str, str] = {}
    for run in kids:
        out.setdefault(run.info.run_name, run.info.run_id)
    return pid, out


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with status {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


@contextmanager
def serving(cmd: list[str], health: str, cwd: Path, env: dict | None = None):
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(health, proc)
        yield
    finally:
        try:
            os.killpg(proc.pid, 15)
        except ProcessLookupError:  # it had exited (the error above says how)
            pass
        proc.wait(timeout=30)


@contextmanager
def mlflow_ui(project: Path):
    """`dept ui` on a free port for `project`; yields the base URL."""
    port = free_port()
    with serving([sys.executable, "-m", "flows.cli", "ui", "--port", str(port)],
                 f"http://127.0.0.1:{port}/health", project,
                 {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}):
        yield f"http://127.0.0.1:{port}/"


@contextmanager
def prefect_ui(prefect_home: Path):
    """A Prefect server (API and UI) over an existing Prefect home; yields the base URL."""
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(prefect_home),
           "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    prefect = str(Path(sys.executable).with_name("prefect"))
    with serving([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                 f"http://127.0.0.1:{port}/api/health", prefect_home, env):
        yield f"http://127.0.0.1:{port}/"


def _api(base: str, path: str, body: dict | None = None):
    req = urllib.request.Request(base + "api/" + path, method="POST" if body is not None else "GET",
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


@contextmanager
def served_deployment(base: str, project: Path, name: str, cron: str, timeout: float = 180,
                      env: dict | None = None):
    """`dept serve --name NAME --cron CRON` in `project` against the Prefect server at `base`,
    until its deployment has scheduled runs; yields (deployment id, next scheduled runs'
    expected start times)."""
    env = {**(env or os.environ), "PREFECT_API_URL": base + "api",
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--name", name,
                             "--cron", cron], cwd=project, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        end = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"dept serve exited with status {proc.returncode}")
            try:
                dep = _api(base, f"deployments/name/dept_pipeline/{name}")
                runs = _api(base, "flow_runs/filter", {
                    "deployments": {"id": {"any_": [dep["id"]]}},
                    "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
                    "sort": "EXPECTED_START_TIME_ASC", "limit": 5})
                if runs:
                    break
            except OSError:  # not registered yet (404) or the server is busy
                pass
            if time.monotonic() > end:
                raise TimeoutError(f"deployment dept_pipeline/{name}: no scheduled runs "
                                   f"within {timeout:.0f} s")
            time.sleep(1)
        yield dep["id"], [r["expected_start_time"] for r in runs]
    finally:
        try:
            os.killpg(proc.pid, 15)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


# Chromium as the probe of this machine starts it: headless, no sandbox (root), and none of
# the background connections a closed network refuses
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
               "--no-first-run", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--hide-scrollbars"]


def launch_options() -> dict:
    """Playwright's launch options for Debian's Chromium (`make browser`): Playwright drives
    it through `executable_path`; no browser is downloaded."""
    exe = chromium()
    if exe is None:
        raise RuntimeError("no Chromium on this machine (`make browser` installs Debian's)")
    return {"executable_path": exe, "headless": True, "args": LAUNCH_ARGS}


@contextmanager
def new_page(size: tuple[int, int] = (1600, 1000)):
    """A fresh browser page (its own profile: nothing carries over between pages)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(**launch_options())
        try:
            yield browser.new_page(viewport={"width": size[0], "height": size[1]})
        finally:
            browser.close()


def _size(size: str | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, str):
        w, h = size.split(",")
        return int(w), int(h)
    return size


def _settle(page, wait_ms: int) -> None:
    """Let a single-page app load and draw: network idle (bounded), then a short pause."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_load_state("networkidle", timeout=wait_ms)
    except PlaywrightTimeout:
        pass  # a page that polls never goes idle: it has drawn by now
    page.wait_for_timeout(1500)


def dom(url: str, wait_ms: int = 20000, size: str = "1600,1000") -> str:
    """The page's DOM after its scripts ran."""
    with new_page(_size(size)) as page:
        page.goto(url)
        _settle(page, wait_ms)
        return page.content()


def screenshot(url: str, path: Path, wait_ms: int = 20000, size: str = "1600,1000") -> Path:
    with new_page(_size(size)) as page:
        page.goto(url)
        _settle(page, wait_ms)
        page.screenshot(path=str(path))
    if not Path(path).is_file():
        raise RuntimeError(f"Chromium wrote no screenshot of {url}")
    return Path(path)


EXPANDERS = 'button[data-component-id*="runnamecellrenderer"]'  # a parent run's (+) button
CHARTS = '.js-plotly-plot'  # a drawn chart (MLflow draws its run charts with Plotly)
CHART_MODE = 'input[name="runs-view-mode"][value="CHART"]'  # the runs page's chart-view switch
# the headline metrics every variant's run has (tasks/tracking.py, tasks/evaluate.py)
HEADLINE = ["final/val_bpb_mean", "test_bpb_id_mean", "probe_bpb_id_mean",
            "cpt_fresh_bpb_id_mean", "plasticity_bpb_auc_mean", "downstream/accuracy",
            "final/comm_bytes_total", "final/embedding_mb_per_source"]


def expanded_runs(url: str, experiment: str, path: Path | None = None,
                  metrics: list[str] = (), size: tuple[int, int] = (1600, 1000),
                  timeout: float = 90, view: str | None = None, page=None) -> str:
    """The MLflow runs table at `url` as a user who expanded it would see it: every parent
    run expanded (MLflow shows child runs collapsed under their parent), the `metrics` shown
    as columns (MLflow hides metric columns when a run has many), the assistant panel closed.
    Playwright writes the UI's own local-storage settings, reloads, and clicks any expander
    still closed. Returns the DOM; with `path`, also a PNG screenshot; with `view`, the DOM
    and screenshot are of that URL (e.g. the chart view) opened with the same settings.
    `page`: a Playwright page to drive (e.g. pytest-playwright's; one sync Playwright per
    thread), else a new one in Debian's Chromium."""
    if page is None:
        with new_page(size) as own:
            return expanded_runs(url, experiment, path, metrics, size, timeout, view, own)
    page.set_viewport_size({"width": size[0], "height": size[1]})
    key = f'MLflowLocalStorage-1.1-ExperimentPage-["{experiment}"]-ReactComponentState'
    cols = [f"metrics.`{m}`" for m in metrics]
    ms = int(timeout * 1000)
    page.set_default_timeout(ms)
    page.goto(url)
    page.wait_for_selector(EXPANDERS)
    page.evaluate("""([k, cols, exp]) => {
        const st = JSON.parse(localStorage.getItem(k) || "{}");
        st.selectedColumns = [...(st.selectedColumns || []).filter(
            c => c.includes("Dataset")), ...cols];
        localStorage.setItem(k, JSON.stringify(st));
        localStorage.setItem(`MLflowLocalStorage-1.1-ExperimentView-${exp}-expandRows`,
                             "true");
        localStorage.setItem("mlflow.assistant.panelOpen_v1", "false");
    }""", [key, cols, experiment])
    if view:  # (navigating within the app would write its state back first)
        page.goto(view)
    page.reload()
    page.wait_for_selector(EXPANDERS)
    page.wait_for_timeout(2000)
    if not view:  # any parent the setting left closed (it toggles on a click)
        page.evaluate(f"""() => document.querySelectorAll('{EXPANDERS}').forEach(b => {{
            const row = b.closest('[role=row]');
            if (row && !row.nextElementSibling) b.click(); }})""")
        page.wait_for_timeout(3000)  # the children's rows render
    else:  # the chart view: MLflow may restore the table mode it saved instead
        mode = page.locator(CHART_MODE).first
        if not mode.is_checked():  # (a hidden radio input: clicked from the page's script)
            mode.evaluate("el => el.click()")
        page.wait_for_selector(EXPANDERS)  # its run list opens collapsed
        page.evaluate(f"document.querySelectorAll('{EXPANDERS}').forEach(b => b.click())")
        page.wait_for_selector(CHARTS)  # a chart view that did not take is an error
        page.wait_for_timeout(4000)  # the other cards finish drawing
    if path is not None:
        page.screenshot(path=str(path))
    return page.content()


def experiment_id(project: Path) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from mlflow.tracking import MlflowClient

    from tasks.tracking import EXPERIMENT, tracking_uri

    exp = MlflowClient(tracking_uri(project)).get_experiment_by_name(EXPERIMENT)
    if exp is None:
        raise RuntimeError(f"{project}: no MLflow experiment '{EXPERIMENT}' (run the pipeline)")
    return exp.experiment_id


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", required=True, type=Path, help="a project after `make demo`")
    ap.add_argument("--out", type=Path, default=Path("docs"))
    a = ap.parse_args()
    project, out = a.project.resolve(), a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    exp = experiment_id(project)
    with mlflow_ui(project) as base:
        runs = base + RUNS_VIEW.format(id=exp)
        print(expanded_runs(runs, exp, out / "mlflow-runs.png", HEADLINE, size=(2000, 800))
              and out / "mlflow-runs.png")
        print(expanded_runs(runs, exp, out / "mlflow-charts.png", HEADLINE, size=(1600, 1200),
                            view=base + CHART_VIEW.format(id=exp))
              and out / "mlflow-charts.png")
        _, variants = latest_execution(project)
        print(screenshot(base + compare_view(list(variants.values()), exp),
                         out / "mlflow-compare.png", size="1600,2400"))
    if (project / ".prefect" / "prefect.db").is_file():
        with prefect_ui(project / ".prefect") as base:
            print(screenshot(base + "runs", out / "prefect-runs.png", size="1600,1400"))
        # the nightly deployment with its next runs, served over a copy of the Prefect home
        # (the project's own keeps no deployment whose runs nobody would execute)
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            home = Path(tmp) / "prefect"
            shutil.copytree(project / ".prefect", home)
            with prefect_ui(home) as base, \
                    served_deployment(base, project, "nightly", "0 3 * * *") as (dep, _):
                print(screenshot(base + f"deployments/deployment/{dep}",
                                 out / "prefect-deployment.png", size="1600,1100"))


if __name__ == "__main__":
    main()
