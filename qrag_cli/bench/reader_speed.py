"""Reader timings: load, time to first token, decode tokens/s (default reader, or argv[1])."""

from __future__ import annotations

import json
import sys
import time

from qrag_cli.reader import Reader, ReaderSettings
from qrag_cli.types import Evidence

EVIDENCE = [
    Evidence(1, 0.9, 1, "people.md", 1, 3,
             "Ada Lindqvist was born in Tarsholm in 1889, the daughter of a ferry captain.", 1),
    Evidence(2, 0.8, 2, "cities.md", 1, 3,
             "The river Sillen flows through Tarsholm before it reaches the sea.", 2),
]

if __name__ == "__main__":  # python -m qrag_cli.bench.reader_speed [model.gguf]
    for threads in (None, 1):
        t0 = time.perf_counter()
        reader = Reader(ReaderSettings(llm=sys.argv[1] if len(sys.argv) > 1 else None,
                                       threads=threads))
        load_s = time.perf_counter() - t0
        answer = reader.answer("Which river flows through the town where Ada Lindqvist was "
                               "born?", EVIDENCE)
        print(json.dumps({"threads": threads or "all", "load_s": round(load_s, 3),
                          **{k: round(v, 1) for k, v in answer.timings.items()},
                          "answer": answer.text.strip()}))
