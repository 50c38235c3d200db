"""Warm `ask` through `qrag mcp` next to a cold `qrag ask` process, same index and question.

    python -m qrag_cli.bench.mcp_latency [--corpus qrag_cli/sample] [--calls 20] [--cold 5]

Indexes the corpus into a temporary QRAG_HOME, starts `qrag mcp` under the MCP SDK's stdio
client, and alternates: one cold `qrag ask --json` subprocess (wall time, start-up and model
load included), then `calls / cold` warm MCP `ask` calls (client-side round trip), so both
see the same background load. Results on stdout (Markdown, or --json); progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SAMPLE = Path(__file__).resolve().parent.parent / "sample"
QUESTION = "Which river flows through the city where the inventor of the Zephyr engine was born?"
QRAG = [sys.executable, "-m", "qrag_cli"]


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _cold_ask(question: str, steps: int, env: dict) -> tuple[float, dict]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [*QRAG, "ask", question, "--index", "bench", "--steps", str(steps), "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"cold qrag ask failed: {proc.stderr.strip()}")
    return wall, json.loads(proc.stdout)


async def _measure(question: str, steps: int, calls: int, cold: int, env: dict) -> dict:
    from mcp import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(
        command=sys.executable, args=["-m", "qrag_cli", "mcp", "--index", "bench"], env=env
    )
    cold_walls: list[float] = []
    cold_out: dict = {}
    warm_walls: list[float] = []
    warm_retrieval: list[float] = []
    t0 = time.perf_counter()
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        startup = time.perf_counter() - t0
        arguments = {"question": question, "steps": steps}
        warm_out = (await session.call_tool("ask", arguments)).structured_content  # warm-up
        per_round = max(1, calls // cold)
        for round_ in range(cold):
            wall, cold_out = await asyncio.to_thread(_cold_ask, question, steps, env)
            cold_walls.append(wall)
            for _ in range(per_round):
                t1 = time.perf_counter()
                result = await session.call_tool("ask", arguments)
                warm_walls.append(time.perf_counter() - t1)
                if result.is_error:
                    raise SystemExit(f"MCP ask failed: {result.content[0].text}")
                warm_retrieval.append(result.structured_content["timings_ms"]["retrieval_ms"])
            _say(
                f"round {round_ + 1}/{cold}: cold {wall:.2f} s, warm median so far "
                f"{statistics.median(warm_walls) * 1000:.1f} ms"
            )
    same = [e["chunk_id"] for e in warm_out["evidence"]] == [
        e["chunk_id"] for e in cold_out["evidence"]
    ]
    return {
        "question": question,
        "steps": steps,
        "evidence": len(warm_out["evidence"]),
        "stop": warm_out["stop"],
        "same_evidence": same,
        "cold_runs": len(cold_walls),
        "cold_median_ms": statistics.median(cold_walls) * 1000,
        "cold_min_ms": min(cold_walls) * 1000,
        "cold_load_model_ms": cold_out["timings_ms"]["load_model_ms"],
        "cold_retrieval_ms": cold_out["timings_ms"]["retrieval_ms"],
        "warm_calls": len(warm_walls),
        "warm_median_ms": statistics.median(warm_walls) * 1000,
        "warm_min_ms": min(warm_walls) * 1000,
        "warm_retrieval_median_ms": statistics.median(warm_retrieval),
        "server_startup_ms": startup * 1000,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=SAMPLE, help="Folder to index.")
    parser.add_argument("--question", default=QUESTION)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--calls", type=int, default=20, help="Warm MCP calls measured.")
    parser.add_argument("--cold", type=int, default=5, help="Cold `qrag ask` runs.")
    parser.add_argument("--json", action="store_true", help="Print JSON instead of Markdown.")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.calls < 1 or args.cold < 1:
        parser.error("--steps, --calls and --cold must be at least 1")
    if not args.corpus.is_dir():
        parser.error(f"--corpus {args.corpus}: not a folder")
    with tempfile.TemporaryDirectory(prefix="qrag-mcp-bench-") as home:
        env = {**os.environ, "QRAG_HOME": home, "NO_COLOR": "1"}
        _say(f"indexing {args.corpus} ...")
        subprocess.run(
            [*QRAG, "index", str(args.corpus), "--index", "bench", "--json"],
            env=env,
            check=True,
            capture_output=True,
        )
        result = asyncio.run(_measure(args.question, args.steps, args.calls, args.cold, env))
    result["corpus"] = str(args.corpus)
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"Corpus {result['corpus']}; question {result['question']!r}; steps {args.steps} "
        f"({result['evidence']} picked, stop: {result['stop']}; same evidence warm and "
        f"cold: {result['same_evidence']})\n"
    )
    print("| | median | min | n |\n|---|---:|---:|---:|")
    print(
        f"| cold `qrag ask` (process wall time) | {result['cold_median_ms']:.0f} ms | "
        f"{result['cold_min_ms']:.0f} ms | {result['cold_runs']} |"
    )
    print(
        f"| warm MCP `ask` (client round trip) | {result['warm_median_ms']:.1f} ms | "
        f"{result['warm_min_ms']:.1f} ms | {result['warm_calls']} |"
    )
    print(
        f"\nInside them: cold model load {result['cold_load_model_ms']:.0f} ms, cold "
        f"retrieval {result['cold_retrieval_ms']:.0f} ms; warm retrieval (server side) "
        f"median {result['warm_retrieval_median_ms']:.1f} ms. `qrag mcp` start-up (spawn "
        f"to initialized, paid once): {result['server_startup_ms']:.0f} ms."
    )


if __name__ == "__main__":
    main()
