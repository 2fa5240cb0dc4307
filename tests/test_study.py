"""`dept study`: a 2 × 2 grid (budget × inner lr) × 2 seeds on the smoke config, through the
real pipeline (Prefect subflows, MLflow, the tiny model), uninterrupted and killed mid-study.
Plus the tuning protocol on hand-built numbers: choices read validation only."""

from __future__ import annotations

import copy
import json
import signal
from pathlib import Path

import pytest
import yaml

from dept_core import layout
from dept_core import study as st
from dept_core import study_report as sr
from tests.conftest import cli_params, dept_cli, write_params

STUDY = {"name": "smoke", "grid": {"train.rounds": [1, 2]}, "budget": ["train.rounds"],
         "tune": {"train.lr": [0.003, 0.006]}, "seeds": [0, 1], "bootstrap": 200}
CELLS = 4


def _project(root: Path) -> Path:
    raw = cli_params()
    raw["train"]["variants"] = ["spec", "std"]
    raw["evaluate"] = {"plasticity_steps": 4, "plasticity_eval_every": 2,
                       "downstream": {"languages": ["en", "de", "ja", "es"], "steps": [2, 4],
                                      "lrs": [0.001, 0.003], "max_len": 48},
                       "probe": {"steps": 4, "lrs": [0.01, 0.03, 0.1], "batch_size": 4},
                       "minimal_pairs": {"items_per_source": 10}}
    write_params(root, raw)
    (root / "study.yaml").write_text(yaml.safe_dump(STUDY), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cli_env):
    root = _project(tmp_path_factory.mktemp("study"))
    proc = dept_cli(["study", "--study", "study.yaml"], root, cli_env, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


@pytest.fixture(scope="module")
def killed_then_continued(tmp_path_factory, cli_env):
    """kill -9 in the third cell (SPEC, seed 0, mid-round 2), then the same command."""
    root = _project(tmp_path_factory.mktemp("study-killed"))
    # cells 1-2: 1 round × 3 sources × 2 seeds = 6 SPEC source steps each; cell 3: round 1
    # of seed 0 is points 13-15; point 17 is mid-round 2
    env = {**cli_env, "DEPT_FAULT_KILL_AT": "source-trained@17"}
    proc = dept_cli(["study", "--study", "study.yaml"], root, env, timeout=1800)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    done = sorted(p.parent.name for p in (root / "studies/smoke/cells").glob("*/done.json"))
    assert len(done) == 2  # two cells finished before the kill
    proc = dept_cli(["study", "--study", "study.yaml"], root, cli_env, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, proc


def _summary(root: Path) -> dict:
    return json.loads((layout.study_report(root, "smoke") / "summary.json").read_text())


def test_the_report_has_every_variant_at_every_budget_with_intervals(uninterrupted):
    s = _summary(uninterrupted)
    assert s["cells"] == CELLS and len(s["settings"]) == 2 and s["tune_points"] == 2
    rows = s["rows"]
    assert {(r["setting"], r["variant"]) for r in rows} == {
        (f"train.rounds={n}", v) for n in (1, 2) for v in ("std", "spec", "random")}
    # the body-level protocols, each with its floor (the untrained body) and the ceiling
    for r in rows:
        assert {"probe_bpb", "downstream_as_trained", "downstream_after_cpt",
                "downstream_frozen_probe", "zero_shot_as_trained", "zero_shot_probe",
                "bag_of_words"} <= set(r), r["variant"]
        assert ("probe_vs_untrained" in r) == (r["variant"] != "random")
    spec_rows = [r for r in rows if r["variant"] == "spec"]
    rows = [r for r in rows if r["variant"] != "random"]
    for r in spec_rows:
        iv = r["as_trained_vs_std"]
        assert iv["low"] <= iv["value"] <= iv["high"]
        assert r["chosen"]["train.lr"] in (0.003, 0.006)
    assert rows[0]["tokens_per_source"] * 2 == rows[-1]["tokens_per_source"]
    assert any(line.startswith("spec vs STD, as trained") for line in s["verdict"])
    out = layout.study_report(uninterrupted, "smoke")
    for png in ("gap_as_trained", "gap_cpt_fresh", "plasticity", "gap_probe", "downstream",
                "zero_shot"):
        assert (out / "plots" / f"{png}.png").stat().st_size > 1000, png
    md = (out / "summary.md").read_text()
    assert "| train.rounds=1 |" in md and "## The bodies against the floor and the ceiling" in md
    assert any(line.startswith("Bodies beating the untrained body, frozen-body probe")
               for line in s["verdict"])
    lines = (out / "gap_as_trained.csv").read_text().splitlines()  # for `dvc plots`
    assert lines[0] == "tokens_per_source,variant,value" and len(lines) == 1 + 2


def test_mlflow_nests_cells_under_the_study_and_variants_under_their_cell(uninterrupted):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{uninterrupted}/mlflow.db")
    exp = client.get_experiment_by_name("dept").experiment_id
    # a model-training experiment: the UI opens on the runs table, not on GenAI traces
    assert client.get_experiment(exp).tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([exp], max_results=1000)
    (study,) = [r for r in runs if r.data.tags.get("stage") == "study"]
    cells = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == study.info.run_id]
    assert len(cells) == CELLS and all(r.info.run_name.startswith("cell ") for r in cells)
    cell_ids = {c.info.run_id for c in cells}
    for cell in cells:
        kids = [r.info.run_name for r in runs
                if r.data.tags.get("mlflow.parentRunId") == cell.info.run_id
                and r.data.tags.get("dept.pretrained") == "1"]
        assert sorted(kids) == ["spec seed=0", "spec seed=1", "std seed=0", "std seed=1"]
    # test-side evaluation only at the points validation chose: per setting, variant, seed;
    # into the variant's own run (pre-training and evaluation in one run)
    evals = [r for r in runs if r.data.tags.get("dept.evaluated") == "1"]
    assert all(r.data.tags["mlflow.parentRunId"] in cell_ids for r in evals)
    for variant in ("spec", "std", "random"):
        got = [r for r in evals if r.data.tags["variant"] == variant]
        assert len(got) == 2 * 2, variant
        assert all(("final/val_bpb_mean" in r.data.metrics) == (variant != "random")
                   for r in got)
    written = list((uninterrupted / "studies/smoke/cells").glob("*/results/evaluate/spec/*/"
                                                                 "metrics.json"))
    assert len(written) == 2 * 2
    assert study.info.status == "FINISHED"
    assert "study/summary.md" in {a.path for a in client.list_artifacts(study.info.run_id,
                                                                         "study")}


def test_a_second_invocation_recomputes_nothing(uninterrupted, cli_env):
    cells = uninterrupted / "studies/smoke/cells"
    before = {p: p.stat().st_mtime_ns for p in cells.rglob("metrics.json")}
    report_before = _summary(uninterrupted)
    proc = dept_cli(["study", "--study", "study.yaml"], uninterrupted, cli_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("finished earlier, skipped") == CELLS
    assert {p: p.stat().st_mtime_ns for p in cells.rglob("metrics.json")} == before
    assert _summary(uninterrupted) == report_before


def test_killed_study_continues_to_the_same_report(uninterrupted, killed_then_continued):
    root, proc = killed_then_continued
    assert proc.stderr.count("finished earlier, skipped") == 2
    assert _summary(root) == _summary(uninterrupted)


# ------------------------------------------------------------------- tuning protocol ----
def _cells(values):
    spec = st.StudySpec(name="t", grid={"train.rounds": [4]}, tune={"train.lr": values})
    return [st.Cell({"train.rounds": 4}, {"train.lr": v}, None, f"c{i}", "d")
            for i, v in enumerate(values)], spec


def _metrics(val: float, test: float) -> dict:
    """A run's metrics.json: validation numbers (what choices read) and, planted beside
    them, a test number a leaky choice would read."""
    return {"final": {"val_bpb_mean": val, "test_bpb_mean": test}}


def test_the_best_setting_is_chosen_on_validation_and_test_data_cannot_move_it():
    cells, _ = _cells([0.003, 0.006, 0.012])
    pretrain = {
        "c0": {"spec": {0: _metrics(2.0, 1.0), 1: _metrics(2.2, 1.0)},
               "std": {0: _metrics(1.9, 3.0), 1: _metrics(1.9, 3.0)}},
        "c1": {"spec": {0: _metrics(2.05, 3.0), 1: _metrics(2.05, 3.0)},
               "std": {0: _metrics(2.0, 1.0), 1: _metrics(2.0, 1.0)}},
        "c2": {"spec": {0: _metrics(None, 0.5), 1: _metrics(1.0, 0.5)},  # incomplete: never
               "std": {0: _metrics(2.1, 0.1), 1: _metrics(2.1, 0.1)}},
    }
    choice = st.choose(cells, pretrain)["train.rounds=4"]
    assert choice["spec"].tune == {"train.lr": 0.006}  # mean over seeds 2.05 < 2.1
    assert choice["std"].tune == {"train.lr": 0.003}
    # any change to test numbers changes nothing; a change to validation does
    flipped = copy.deepcopy(pretrain)
    for by_v in flipped.values():
        for by_seed in by_v.values():
            for m in by_seed.values():
                m["final"]["test_bpb_mean"] = -m["final"]["test_bpb_mean"]
    assert {v: c.id for v, c in st.choose(cells, flipped)["train.rounds=4"].items()} == \
        {v: c.id for v, c in choice.items()}
    flipped["c2"]["std"][0]["final"]["val_bpb_mean"] = 1.0
    flipped["c2"]["std"][1]["final"]["val_bpb_mean"] = 1.0
    assert st.choose(cells, flipped)["train.rounds=4"]["std"].id == "c2"


def test_study_files_are_checked_naming_the_culprit(tmp_path):
    from dept_core.errors import ConfigError

    bad = tmp_path / "s.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "grid": {"train.rounds": [1]},
                                   "budget": ["train.local_steps"]}))
    with pytest.raises(ConfigError, match="budget: train.local_steps not in grid"):
        st.load_study(bad)
    bad.write_text(yaml.safe_dump({"name": "x", "grid": {"train.rounds": []}}))
    with pytest.raises(ConfigError, match="train.rounds: give at least one value"):
        st.load_study(bad)
    write_params(tmp_path, cli_params())
    bad.write_text(yaml.safe_dump({"name": "x", "grid": {"train.rounds": [2, -1]}}))
    with pytest.raises(ConfigError, match=r"cell train.rounds=-1: .*train.rounds"):
        st.expand(st.load_study(bad), tmp_path)


# --------------------------------------------------------------------- heterogeneity ----
REPO = Path(__file__).resolve().parent.parent


def test_the_heterogeneity_study_expands_into_one_data_set_per_preset(tmp_path):
    """configs/study-heterogeneity.yaml (a grid over whole source lists) is valid: every cell
    checks, the two presets prepare their own data, and the report's groups name them."""
    spec = st.load_study(REPO / "configs/study-heterogeneity.yaml")
    cells = st.expand(spec, REPO)
    assert len(cells) == 2 * 2 * 2  # presets × budgets × lr
    assert len({c.data_key for c in cells}) == 2
    groups = {st.label({k: v for k, v in c.setting.items() if k not in spec.budget})
              for c in cells}
    assert {g.split("=")[1].split("(")[0] for g in groups} == {"multilingual", "multidomain"}


def _row(variant, group, tokens, gap):
    iv = {"value": gap, "low": gap - 1, "high": gap + 1}
    word = "better" if iv["low"] > 0 else "worse" if iv["high"] < 0 else "tied"
    return {"variant": variant, "group": group, "setting": f"{group} r={tokens}",
            "tokens_per_source": tokens, "chosen": {}, "as_trained_vs_std": iv,
            "as_trained_verdict": word, "plasticity_auc": iv, "downstream_after_cpt": iv}


def test_verdict_and_plots_keep_presets_apart(tmp_path):
    ml, md = "data.sources=multilingual(en,de)", "data.sources=multidomain(code,docs)"
    rows = [_row("spec", ml, 1e4, 8.0), _row("spec", ml, 8e4, 3.0),
            _row("spec", md, 1e4, -4.0), _row("spec", md, 8e4, 0.0)]
    verdict = sr.study_verdict(rows)
    assert f"better at 10 k tokens/source, {ml} (+8.0 % [+7.0, +9.0])" in verdict[0]
    assert f"worse at 10 k tokens/source, {md}" in verdict[0]
    assert f"({ml}) the gap moves in STD's favour (+8.0 → +3.0 %)" in verdict[1]
    assert f"({md}) the gap moves in DEPT's favour (-4.0 → +0.0 %)" in verdict[1]
    paths = sr.plot(rows, tmp_path)
    assert [p.name for p in paths] == ["gap_as_trained.png", "plasticity.png",
                                       "downstream.png"]
    csv = sr.gap_long_csv(rows).splitlines()
    assert f'10000.0,"spec ({md})",-4.0000' in csv


def test_the_pipeline_runs_on_the_multidomain_preset(tmp_path, cli_env):
    """The other preset end to end (smoke sizes, SPEC and STD): not tuned to the languages."""
    raw = cli_params()
    raw["data"]["sources"] = [{"name": n, "kind": "embedded", "preset": "multidomain",
                               **({"heldout": True} if n == "legal" else {})}
                              for n in ("code", "dialogue", "docs", "legal")]
    raw["tokenizers"]["per_source_vocab_overrides"] = {}
    raw["train"]["variants"] = ["spec", "std"]
    write_params(tmp_path, raw)
    proc = dept_cli(["run"], tmp_path, cli_env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((layout.compare_dir(tmp_path) / "summary.json").read_text())
    assert set(summary["pretraining"]["variants"]) == {"spec", "std"}
    cpt = summary["evaluation"]["tables"]["cpt_fresh"]["spec"]
    assert "legal" in cpt["bpb"]  # the held-out domain was scored (after CPT)
