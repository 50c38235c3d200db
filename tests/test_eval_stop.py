"""How a stop is scored: right step, over- and under-retrieval, fact EM with the stop vs
the fixed budget (`evaluate.stop_metrics`), in `qrag train eval` and the bench report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_qrag

from qrag_cli.bench.suite import markdown
from qrag_cli.datasets import Example, write_examples
from qrag_cli.evaluate import complete_at, cut_episodes, stop_metrics, stop_report
from qrag_cli.types import Episode, Evidence

SHARES = ("exact_share", "over_share", "under_share", "never_share")


def test_stop_metrics_by_hand() -> None:
    # complete after 2 picks: stopped at 2 (right), 3 (one extra), 1 (early); never complete
    m = stop_metrics([2, 3, 1, 4], [2, 2, 2, None])
    assert m["exact_share"] == m["over_share"] == m["under_share"] == m["never_share"] == 0.25
    assert m["over_steps"] == 0.25  # one extra step over four episodes
    assert m["mean_steps"] == 2.5 and m["n"] == 4
    assert m["fact_em_fixed"] == 0.75  # complete within the budget: three of four
    assert m["fact_em_stop"] == 0.5  # the early stop lost one
    assert complete_at([7, 1, 9, 2], [1, 2]) == 4 and complete_at([1], [1, 2]) is None


def _episode(qs: list[float], ids: list[int]) -> Episode:
    return Episode(
        "q",
        [
            Evidence(i + 1, q, c, "p", 0, 0, "", c)
            for i, (q, c) in enumerate(zip(qs, ids, strict=True))
        ],
        "budget",
    )


def test_a_threshold_cut_is_scored_against_the_full_episode() -> None:
    full = [_episode([0.9, 0.8, 0.1, 0.05], [1, 2, 3, 4]), _episode([0.9, 0.3, 0.6], [5, 6, 7])]
    examples = [Example("a", "q", ("",) * 8, (1, 2)), Example("b", "q", ("",) * 8, (5, 7))]
    cut = cut_episodes(full, 0.5)
    assert [len(ep.evidence) for ep in cut] == [2, 1] and [ep.stop for ep in cut] == [
        "complete"
    ] * 2
    m = stop_report(cut, full, examples)
    assert m["exact_share"] == 0.5 and m["under_share"] == 0.5  # the second stops before 7
    assert m["fact_em_stop"] == 0.5 and m["fact_em_fixed"] == 1.0


@pytest.fixture
def two_hop_file(tmp_path: Path) -> Path:
    from qrag_cli.bench.tasks import two_hop_task

    path = tmp_path / "twohop.jsonl"
    write_examples(two_hop_task(8, seed=3), path)
    return path


def test_train_eval_reports_the_stop(two_hop_file: Path) -> None:
    def evaluate(threshold: str) -> dict:
        args = ["train", "eval", str(two_hop_file), "--model", "base", "--json"]
        args += ["--budget", "1", "--budget", "3", "--threshold", threshold]
        return json.loads(run_qrag(*args, check=True).stdout)

    never = evaluate("-10")  # never fires: the stop is the fixed ceiling
    stop = never["stop"]
    assert stop["budget"] == 3 and stop["n"] == 8 and stop["mean_steps"] == 3.0
    assert stop["fact_em_stop"] == stop["fact_em_fixed"] == never["budget_3"]["fact_em"]
    assert sum(stop[k] for k in SHARES) == pytest.approx(1.0)
    assert stop["under_share"] == 0.0 and stop["never_share"] == 1 - stop["fact_em_fixed"]
    always = evaluate("10")["stop"]  # fires before every second pick: one step each
    assert always["mean_steps"] == 1.0 and always["over_share"] == 0.0
    assert always["fact_em_stop"] == never["budget_1"]["fact_em"]
    assert always["fact_em_fixed"] == stop["fact_em_fixed"]
    table = run_qrag("train", "eval", str(two_hop_file), "--model", "base", "--threshold", "10")
    assert "right step" in table.stdout and "with the stop vs" in table.stdout
    plain = json.loads(
        run_qrag("train", "eval", str(two_hop_file), "-m", "base", "--json", check=True).stdout
    )
    assert "stop" not in plain  # no stop rule: nothing to report


def test_bench_report_shows_the_stop_compactly() -> None:
    stop = {"budget": 5, **stop_metrics([2, 3, 1], [2, 2, None])}
    row = {
        "task": "qa2",
        "tokens": 4096,
        "fact_em": 0.5,
        "fact_f1": 0.5,
        "mean_steps": 2.0,
        "step_ms": 1.0,
        "question_ms": 2.0,
        "chunks": 10,
        "n": 3,
    }
    result = {
        "seconds": 1,
        "machine": {"processor": "x", "platform": "y", "cpus": 2},
        "profile": {"steps": 5},
        "rows": [
            {**row, "method": "bm25 top-k", "stop": None},
            {**row, "method": "qrag m", "stop": stop},
        ],
        "peak_rss_mb": 1,
    }
    text = markdown(result)
    assert "## Stop" in text
    stop_rows = text.split("## Stop")[1]
    assert (
        "| qa2 | 4K | qrag m | 0.33 | 0.33 (+0.33) | 0.00 | 0.33 | 2.00 | 0.667 / 0.667 |"
        in stop_rows
    )
    assert "bm25 top-k" not in stop_rows
