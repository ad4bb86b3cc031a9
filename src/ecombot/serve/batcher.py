"""Dynamic batching: concurrent requests wait in one bounded queue and are generated together.

One worker thread owns the model. It takes the oldest waiting request plus every other waiting request
that can share its batch (same adapter and sampling settings), up to `max_batch`, and runs them as one
batched `generate`; each row streams its own text back to its request. Requests arriving while a batch
runs form the next batch, so throughput grows with concurrency. A full queue is refused at once (503).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from ecombot.chat.engine import Decoding, Generation, GenerationEngine


class QueueFull(Exception):
    pass


@dataclass
class Job:
    """One chat completion request on its way through the batcher; events go back to the request's loop."""

    messages: list[dict[str, str]]
    prompt: list[int]  # the messages as the engine's prompt, tokenized once when the request was checked
    adapter: str
    decoding: Decoding
    max_tokens: int
    loop: asyncio.AbstractEventLoop
    grammar: str | None = None  # what the answer may be (a catalog task's, chat/grammar.py); rows differ freely
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    queued_at: float = field(default_factory=time.monotonic)

    @property
    def key(self) -> tuple:
        return (self.adapter, self.decoding.temperature, self.decoding.top_p, self.decoding.repetition_penalty)

    def emit(self, kind: str, value) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))


@dataclass
class BatchStats:
    batches: int = 0
    rows: int = 0
    largest: int = 0
    busy_s: float = 0.0

    def to_dict(self) -> dict:
        return {"batches": self.batches, "rows": self.rows, "largest_batch": self.largest,
                "mean_batch": round(self.rows / self.batches, 2) if self.batches else 0.0,
                "busy_s": round(self.busy_s, 2)}


class Batcher:
    def __init__(self, engine: GenerationEngine, max_batch: int = 8, max_queue: int = 64, wait_s: float = 0.01):
        self.engine, self.max_batch, self.max_queue, self.wait_s = engine, max_batch, max_queue, wait_s
        self.waiting: deque[Job] = deque()
        self.ready = threading.Condition()
        self.stats = BatchStats()
        self.stopping = False
        self.caller_works = False  # True: `start` leaves the work to a thread that calls `work` (serve/server.py)
        self.thread = threading.Thread(target=self.work, name="ecombot-batcher", daemon=True)

    def start(self) -> None:
        if not self.caller_works:
            self.thread.start()

    def stop(self) -> None:
        with self.ready:
            self.stopping = True
            self.ready.notify_all()
        if self.thread.is_alive():
            self.thread.join(timeout=30)

    def depth(self) -> int:
        return len(self.waiting)

    def submit(self, job: Job) -> None:
        with self.ready:
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(f"the server is busy: {len(self.waiting)} requests are already waiting")
            self.waiting.append(job)
            self.ready.notify()

    def _take(self) -> list[Job]:
        with self.ready:
            while not self.waiting and not self.stopping:
                self.ready.wait()
            if self.stopping:
                return []
            deadline = time.monotonic() + self.wait_s  # a moment for companions when the model was idle
            while len(self.waiting) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                self.ready.wait(left)
            key, batch, rest = self.waiting[0].key, [], deque()
            while self.waiting:
                job = self.waiting.popleft()
                if job.cancelled:
                    job.emit("error", asyncio.CancelledError())
                elif job.key == key and len(batch) < self.max_batch:
                    batch.append(job)
                else:
                    rest.append(job)
            self.waiting = rest
            return batch

    def work(self) -> None:
        """Generate batches until `stop`: on the batcher's own thread, or on the caller's (`caller_works`)."""
        while True:
            batch = self._take()
            if self.stopping:
                for job in list(self.waiting) + batch:
                    job.emit("error", QueueFull("the server is shutting down"))
                return
            if batch:
                self._run(batch)

    def _run(self, batch: list[Job]) -> None:
        def on_text(row: int, text: str) -> bool:
            if text:
                batch[row].emit("text", text)
            return not batch[row].cancelled

        started = time.monotonic()
        try:
            results: list[Generation] = self.engine.generate(
                [job.messages for job in batch], batch[0].adapter, batch[0].decoding,
                max_new_tokens=[job.max_tokens for job in batch], on_text=on_text,
                prompts=[job.prompt for job in batch], grammars=[job.grammar for job in batch])
        except Exception as exc:  # every request of the batch gets the error; the worker keeps serving
            for job in batch:
                job.emit("error", exc)
            return
        finally:
            self.stats.batches += 1
            self.stats.rows += len(batch)
            self.stats.largest = max(self.stats.largest, len(batch))
            self.stats.busy_s += time.monotonic() - started
        for job, result in zip(batch, results):
            job.emit("done", result)
