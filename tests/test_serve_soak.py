"""Soak: a few thousand mixed requests on loopback from another process; no 5xx, flat memory, every answer stored."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
from scripted_engine import ScriptedEngine
from sqlalchemy import func, select

from ecombot.serve import ServeConfig, Store, create_app
from ecombot.serve.store import MessageRow

ROUNDS, PER_ROUND, WARM_UP_ROUNDS = 8, 250, 2


def test_soak_no_5xx_flat_memory_every_answer_stored_once(tmp_path, running_server):
    store = Store(f"sqlite:///{tmp_path / 'soak.db'}")
    config = ServeConfig(api_keys=["sk-soak"], rate_limit_per_minute=0, max_queue=256)
    server_process = psutil.Process()  # the server runs in this process (a thread), the load in another
    rss, rounds = [], []
    with running_server(create_app(ScriptedEngine(step_s=0.003), store, config)) as server:
        load = subprocess.Popen([sys.executable, str(Path(__file__).with_name("soak_client.py")), server.url,
                                 "sk-soak", str(ROUNDS), str(PER_ROUND)], stdout=subprocess.PIPE, text=True)
        try:
            for line in load.stdout:
                rounds.append(json.loads(line))
                rss.append(server_process.memory_info().rss)
            assert load.wait(timeout=120) == 0
        finally:
            load.kill()
        completed = [i for r in rounds for i in r["completed"]]
        dropped = {i for r in rounds for i in r["dropped"]}
        deadline = time.time() + 10  # dropped answers are stored in the background: let them land
        while stored_answers(store) < len(completed) + len(dropped) and time.time() < deadline:
            time.sleep(0.1)

    assert len(rounds) == ROUNDS and sum(sum(r["statuses"].values()) for r in rounds) == ROUNDS * PER_ROUND
    assert sum(r["server_errors"] for r in rounds) == 0 and not any(s.startswith("5") for r in rounds for s in r["statuses"])
    statuses = {s for r in rounds for s in r["statuses"]}
    assert {"200", "400", "401", "404"} <= statuses and len(dropped) >= ROUNDS * PER_ROUND // 20
    baseline = rss[WARM_UP_ROUNDS - 1]
    assert max(rss[WARM_UP_ROUNDS:]) <= 1.10 * baseline, [round(r / 2**20, 1) for r in rss]
    with store.sessions() as db:
        copies = dict(db.execute(select(MessageRow.completion_id, func.count()).where(MessageRow.role == "assistant")
                                 .group_by(MessageRow.completion_id)).all())
    assert len(completed) == len(set(completed)) and all(copies.get(i) == 1 for i in completed)
    assert set(copies) <= set(completed) | dropped and set(copies.values()) == {1}


def stored_answers(store: Store) -> int:
    with store.sessions() as db:
        return db.scalar(select(func.count()).where(MessageRow.role == "assistant"))
