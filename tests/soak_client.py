"""The soak test's load (tests/test_serve_soak.py), from its own process: rounds of mixed requests on loopback.

    python tests/soak_client.py URL API_KEY ROUNDS REQUESTS_PER_ROUND

Per ten requests: four whole answers, three streamed to the end, one stream dropped after its first words, one bad
request (bad JSON, wrong key, unknown model, no messages, unknown answer), one rating of an earlier answer. Every
five consecutive requests share one new conversation, so they race to open it. After each round one JSON line:
status counts, server errors (5xx, or an error event inside a stream), the completion ids of answers received
whole and of streams dropped.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter

import httpx

CONCURRENCY = 16
QUESTION = [{"role": "user", "content": "Where is my order?"}]


class Round:
    def __init__(self):
        self.statuses: Counter[str] = Counter()
        self.server_errors = 0
        self.completed: list[str] = []
        self.dropped: list[str] = []


async def stream(client: httpx.AsyncClient, body: dict, result: Round, drop: bool) -> None:
    async with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        result.statuses[str(response.status_code)] += 1
        completion_id, done = None, False
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                continue
            event = json.loads(line[len("data: "):])
            if "error" in event:
                result.server_errors += 1
                return
            completion_id = event["id"]
            if drop and event["choices"] and event["choices"][0]["delta"].get("content"):
                result.dropped.append(completion_id)
                return  # leaving the block closes the connection mid-answer
        if done:
            result.completed.append(completion_id)


async def bad_request(client: httpx.AsyncClient, i: int) -> httpx.Response:
    kind = (i // 10) % 5
    if kind == 0:
        return await client.post("/v1/chat/completions", content=b"{not json")
    if kind == 1:
        return await client.post("/v1/chat/completions", headers={"Authorization": "Bearer sk-wrong"},
                                 json={"model": "support", "messages": QUESTION})
    if kind == 2:
        return await client.post("/v1/chat/completions", json={"model": "gpt-4", "messages": QUESTION})
    if kind == 3:
        return await client.post("/v1/chat/completions", json={"model": "support", "messages": []})
    return await client.post("/v1/feedback", json={"completion_id": "chatcmpl-none", "rating": "up"})


async def one(client: httpx.AsyncClient, i: int, result: Round, gate: asyncio.Semaphore) -> None:
    body = {"model": "support", "messages": QUESTION, "metadata": {"conversation_id": f"soak-{i // 5}"}}
    async with gate:
        share = i % 10
        if share in (4, 5, 6, 7):
            await stream(client, body, result, drop=share == 7)
            return
        if share == 8:
            response = await bad_request(client, i)
        elif share == 9 and result.completed:
            response = await client.post("/v1/feedback", json={"completion_id": result.completed[-1], "rating": "up"})
        else:
            response = await client.post("/v1/chat/completions", json=body)
            if response.status_code == 200:
                result.completed.append(response.json()["id"])
        result.statuses[str(response.status_code)] += 1
        result.server_errors += response.status_code >= 500


async def main(url: str, key: str, rounds: int, per_round: int) -> None:
    gate = asyncio.Semaphore(CONCURRENCY)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30,
                                 limits=httpx.Limits(max_connections=CONCURRENCY)) as client:
        for number in range(rounds):
            result = Round()
            await asyncio.gather(*(one(client, number * per_round + i, result, gate) for i in range(per_round)))
            print(json.dumps({"round": number, "statuses": result.statuses, "server_errors": result.server_errors,
                              "completed": result.completed, "dropped": result.dropped}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
