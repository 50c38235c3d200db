"""Which parts of Q help in every layout: the layout bench's validation split, scored
with one part of Q changed at a time. How BENCHMARKS.md's "Which rules survived" table
was made (validation only; never the test split).

    python experiments/layout_rules/measure_layout_rules.py BENCH_OUT VARIANT [VARIANT ...]

BENCH_OUT: a folder `qrag bench --layouts --out BENCH_OUT` has filled (its indexes are
reused). VARIANT: shipped, no-order, no-named, no-picked-bm25 (each zeroes one lexical
weight), heading-weight=W (the BM25 weight of the heading column), whole-path (a pick read
with its whole heading path, not its own section title). Prints one JSON line per variant:
layout -> [EM@2, EM@4] of the default model.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from qrag_cli import lexical, qstate
from qrag_cli.bench import layouts
from qrag_cli.qnet import QModel
from qrag_cli.types import contextual_text

ZEROED = {"no-picked-bm25": 1, "no-order": 2, "no-named": 3}  # index into the lexical weights


def apply(variant: str, model: QModel) -> None:
    """Change one part of Q for this process (and `model`)."""
    if variant in ZEROED:
        weights = model.lexical_weights.detach().clone()
        weights[ZEROED[variant]] = 0.0
        model.lexical_weights = torch.nn.Parameter(weights, requires_grad=False)
    elif variant.startswith("heading-weight="):
        lexical.HEADING_WEIGHT = float(variant.split("=", 1)[1])
    elif variant == "whole-path":
        qstate.read = lambda row: contextual_text(row.heading, row.text)
    elif variant != "shipped":
        sys.exit(f"unknown variant {variant!r}")


def main(bench_out: Path, variant: str) -> None:
    model, dense = layouts.models("default")
    apply(variant, model)
    questions = layouts.validation_set()
    asked = [s.question for s in questions.stories]
    out = {}
    for layout in layouts.LAYOUTS:
        index = bench_out / "work" / "validation" / "index" / f"{layout}--{model.cfg.fingerprint}"
        picks = layouts._picks(index, asked, model, dense)["default"]
        out[layout] = [layouts._em(picks, questions.stories, k) for k in (2, layouts.BUDGET)]
    print(json.dumps({"variant": variant, "em": out}), flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[2] == "--one":
        main(Path(sys.argv[1]), sys.argv[3])
    elif len(sys.argv) >= 3:
        for name in sys.argv[2:]:  # a process per variant: each changes module state
            subprocess.run([sys.executable, __file__, sys.argv[1], "--one", name], check=True)
    else:
        sys.exit(__doc__)
