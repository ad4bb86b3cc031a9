"""Load test of `ecombot serve` on loopback: the server in its own process, the clients in this one.

Runs the same questions at concurrency 1 (the baseline) and at --concurrency, then prints throughput,
p50/p95 latency and errors, and the ratio of the two; writes everything as JSON.

    python benchmarks/serve_load.py                                   # default model, 200 requests at 8
    python benchmarks/serve_load.py --adapter support=runs/quickstart --requests 200 --concurrency 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_results  # noqa: E402


def questions(limit: int) -> list[str]:
    from ecombot.data import builtin_path

    rows = [json.loads(line) for line in builtin_path().read_text().splitlines()]
    firsts = [r["messages"][0]["content"] for r in rows if r["messages"][0]["role"] == "user"]
    return [firsts[(i * 37) % len(firsts)] for i in range(limit)]  # spread over intents, deterministic


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(args, port: int, workdir: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "ecombot", "serve", "--port", str(port), "--rate-limit", "0",
               "--db", f"sqlite:///{workdir / 'load.db'}", "--max-batch", str(args.max_batch),
               "--max-queue", str(args.max_queue), "--default-max-tokens", str(args.max_tokens),
               "--max-tokens", str(args.max_tokens),
               "--decode-bits", str(args.decode_bits), "--engine", args.engine,
               "--knowledge", "none"]  # the store's database is the load test's own: answers from the weights
    command += ["--model", args.model] if args.model else []
    for spec in args.adapter:
        command += ["--adapter", spec]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    deadline = time.time() + args.start_timeout
    while True:
        if server.poll() is not None:
            raise SystemExit(f"the server exited:\n{server.stdout.read().decode()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if time.time() > deadline:
            server.kill()
            raise SystemExit("the server did not start in time")
        time.sleep(0.5)


async def load(url: str, model: str, prompts: list[str], concurrency: int, max_tokens: int) -> dict:
    gate = asyncio.Semaphore(concurrency)
    latencies, tokens, errors = [], [], {}

    async def one(client: httpx.AsyncClient, question: str) -> None:
        async with gate:
            started = time.perf_counter()
            try:
                response = await client.post(f"{url}/v1/chat/completions", json={
                    "model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": question}]})
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                return
            if response.status_code != 200:
                errors[str(response.status_code)] = errors.get(str(response.status_code), 0) + 1
                return
            latencies.append(time.perf_counter() - started)
            tokens.append(response.json()["usage"]["completion_tokens"])

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency)) as client:
        started = time.perf_counter()
        await asyncio.gather(*(one(client, q) for q in prompts))
        wall = time.perf_counter() - started
    ordered = sorted(latencies) or [float("nan")]
    return {"concurrency": concurrency, "requests": len(prompts), "ok": len(latencies), "errors": errors,
            "wall_s": round(wall, 2), "requests_per_s": round(len(latencies) / wall, 3),
            "tokens_per_s": round(sum(tokens) / wall, 2), "mean_completion_tokens": round(statistics.mean(tokens or [0]), 1),
            "p50_latency_s": round(ordered[len(ordered) // 2], 3),
            "p95_latency_s": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="base model (default: the adapter's, else gemma-3-270m)")
    parser.add_argument("--adapter", action="append", default=[], help="NAME=RUN_DIR, as for ecombot serve")
    parser.add_argument("--requests", type=int, default=200, help="requests at --concurrency")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--baseline-requests", type=int, default=24, help="requests at concurrency 1")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-queue", type=int, default=64)
    parser.add_argument("--decode-bits", type=int, default=8, help="as for ecombot serve (8, its default)")
    parser.add_argument("--engine", default="transformers", choices=["transformers", "llama.cpp"],
                        help="as for ecombot serve (--decode-bits applies to transformers only)")
    parser.add_argument("--start-timeout", type=float, default=300)
    parser.add_argument("--output", default="benchmarks/results/serve_load.json")
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    model = args.adapter[0].split("=", 1)[0] if args.adapter and "=" in args.adapter[0] else (
        Path(args.adapter[0]).resolve().name if args.adapter else "base")
    with tempfile.TemporaryDirectory() as workdir:
        server = start_server(args, port, Path(workdir))
        try:
            prompts = questions(max(args.requests, args.baseline_requests))
            asyncio.run(load(url, model, prompts[:2], 1, args.max_tokens))  # warm-up, not counted
            baseline = asyncio.run(load(url, model, prompts[:args.baseline_requests], 1, args.max_tokens))
            loaded = asyncio.run(load(url, model, prompts[:args.requests], args.concurrency, args.max_tokens))
            batching = httpx.get(f"{url}/health").json()["batching"]
        finally:
            server.terminate()
            server.wait(timeout=30)
    result = {"machine": machine(),
              "model": args.model or ("(adapter's base)" if args.adapter else "gemma-3-270m"), "served": model, "max_tokens": args.max_tokens, "decode_bits": args.decode_bits, "engine": args.engine,
              "runs": [baseline, loaded], "batching": batching,
              "throughput_ratio": round(loaded["tokens_per_s"] / baseline["tokens_per_s"], 2)
              if baseline["tokens_per_s"] else None}
    print(f"{'concurrency':>11} {'requests':>8} {'errors':>6} {'req/s':>7} {'tok/s':>7} {'p50 s':>7} {'p95 s':>7}")
    for run in result["runs"]:
        print(f"{run['concurrency']:>11} {run['requests']:>8} {sum(run['errors'].values()):>6} {run['requests_per_s']:>7.2f} "
              f"{run['tokens_per_s']:>7.1f} {run['p50_latency_s']:>7.2f} {run['p95_latency_s']:>7.2f}")
    print(f"throughput at concurrency {args.concurrency} / concurrency 1: {result['throughput_ratio']}x "
          f"(mean batch {batching['mean_batch']}, largest {batching['largest_batch']})")
    write_results(args.output, result)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
