"""The UIs in a real browser: Playwright (pytest-playwright's `page` fixture, and
scripts/browser.py) driving Debian's headless Chromium. Opt-in — `make browser-test` installs
Debian's chromium; without it these tests are skipped with a message saying so.

MLflow: `dept ui` on a project after an uninterrupted `dept run` (conftest `reference_run`);
the runs table in the model-training view lists every variant's pre-training and evaluation.
Prefect: a server over a Prefect home in which `dept prepare` ran; its flow-runs page lists it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import browser  # noqa: E402

pytestmark = pytest.mark.skipif(
    browser.chromium() is None,
    reason="no Chromium on this machine: `make browser-test` installs Debian's chromium "
           "and runs these tests")


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """pytest-playwright's browser: Debian's Chromium, started as scripts/browser.py starts it
    (no browser download)."""
    return {**browser_type_launch_args, **browser.launch_options()}


def _content(page, url: str, size=(1600, 1000), wait_text: str | None = None) -> str:
    """The page's HTML once it settled — and, with `wait_text`, once that text is shown (the
    Prefect UI fills its lists after the page itself has loaded)."""
    page.set_viewport_size({"width": size[0], "height": size[1]})
    page.goto(url)
    browser._settle(page, 20000)
    if wait_text:
        page.get_by_text(wait_text).first.wait_for(timeout=60000)
    return page.content()


def _scrolled_text(page, steps: int = 40) -> str:
    """The page's HTML plus the text of every row its scrolled tables render: MLflow's
    compare view virtualises the metrics table (only the rows in view are in the DOM), so each
    scrollable box is scrolled a screen at a time and what it shows is collected."""
    seen = [page.content()]
    for _ in range(steps):
        moved = page.evaluate("""() => { let moved = false;
            for (const el of document.querySelectorAll('*')) {
                if (el.scrollHeight > el.clientHeight + 4 && el.clientHeight > 0
                        && getComputedStyle(el).overflowY.match(/auto|scroll/)) {
                    const before = el.scrollTop; el.scrollTop += el.clientHeight;
                    moved = moved || el.scrollTop !== before; } }
            return moved; }""")
        page.wait_for_timeout(300)
        seen.append(page.content())
        if not moved:
            break
    return "\n".join(seen)


def test_mlflow_opens_on_the_runs_and_compares_the_variants_side_by_side(reference_run, page):
    from tests.conftest import CLI_VARIANTS

    exp = browser.experiment_id(reference_run)
    parent, variants = browser.latest_execution(reference_run)
    assert set(variants) == {*CLI_VARIANTS, "random"}
    with browser.mlflow_ui(reference_run) as base:
        table = browser.expanded_runs(base + browser.RUNS_VIEW.format(id=exp), exp,
                                      metrics=browser.HEADLINE, size=(2000, 900), page=page)
        _content(page, base + browser.compare_view(list(variants.values()), exp), (1600, 2400))
        compare = _scrolled_text(page)
    # the runs table in the model-training view: the execution's parent run, expanded into
    # one row per variant, each with its headline metrics (pre-training and evaluation)
    assert "Model training" in table and ">pipeline " in table
    for name in variants:
        assert f">{name}<" in table, name
    for metric in browser.HEADLINE:
        cells = re.findall(r'col-id="metrics\.`' + re.escape(metric) + r'`"[^>]*>(.*?)</div>',
                           table)
        values = [v for v in (re.sub(r"<[^>]+>", "", c).strip() for c in cells)
                  if re.fullmatch(r"[-+]?[0-9][0-9.]*(e[-+]?[0-9]+)?", v)]
        want = len(CLI_VARIANTS) + (metric.startswith(("cpt_", "probe", "plasticity",
                                                       "downstream")))
        assert len(values) >= want, (metric, values)
    # the compare view: one column per run, pre-training and evaluation metrics in each
    for name in variants:
        assert f">{name}<" in compare, name
    for metric in ("comm/cumulative_bytes", "cpt_fresh_bpb_id_mean", "probe_bpb_id_mean",
                   "zero_shot/as_trained/accuracy"):
        assert metric in compare, metric


def test_prefect_flow_runs_page_lists_the_stage_that_ran(tmp_path, cli_env, page):
    from tests.conftest import cli_params, write_params

    home = tmp_path / "prefect-home"
    home.mkdir()
    root = tmp_path / "proj"
    write_params(root, cli_params())
    with browser.prefect_ui(home) as base:
        env = {**cli_env, "PREFECT_HOME": str(home), "PREFECT_API_URL": base + "api"}
        proc = subprocess.run([sys.executable, "-m", "flows.cli", "prepare"], cwd=root,
                              env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        html = _content(page, base + "runs", (1600, 1400), wait_text="prepare")
    assert "Flow runs" in html
    assert "prepare" in html and "Completed" in html


def test_prefect_shows_the_scheduled_deployment_with_its_next_runs(tmp_path, cli_env, page):
    """`dept serve` registers the nightly deployment; its page lists the next scheduled runs
    (the server's scheduler creates them from the cron schedule)."""
    from datetime import datetime

    from tests.conftest import cli_params, write_params

    home = tmp_path / "prefect-home"
    home.mkdir()
    root = tmp_path / "proj"
    write_params(root, cli_params())
    env = {**cli_env, "PREFECT_HOME": str(home)}
    with browser.prefect_ui(home) as base, \
            browser.served_deployment(base, root, "nightly", "0 3 * * *", env=env) as (dep, starts):
        html = _content(page, base + f"deployments/deployment/{dep}", (1600, 1100))
    times = [datetime.fromisoformat(t.replace("Z", "+00:00")) for t in starts]
    assert times == sorted(times) and all((t.hour, t.minute) == (3, 0) for t in times)
    assert "nightly" in html
    assert "Scheduled" in html  # the upcoming runs, as the deployment page lists them
