"""The store's knowledge base, kept in the same database as the conversation store (SQLite by default, any
SQLAlchemy URL; PostgreSQL in production). Several named bases can share one database.

Each source (a file, or a training run's Q&A pairs) is stored with its sha256 and its passages with their
embeddings (float32 bytes): re-adding an unchanged file does nothing, and opening a large base reads vectors instead
of running the embedding model over every passage again."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Collection

import numpy as np
from sqlalchemy import (DateTime, ForeignKey, Integer, LargeBinary, String, Text, UniqueConstraint, delete, func, or_,
                        select, true)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from ecombot.database import open_engine, without_password
from ecombot.errors import DataError, EcombotError
from ecombot.home import default_db_url
from ecombot.knowledge.chunking import DOCUMENT_SUFFIXES, read_passages
from ecombot.knowledge.embeddings import embed
from ecombot.knowledge.grounding import DEFAULT_HANDOFF, Grounder
from ecombot.knowledge.passage import Passage
from ecombot.knowledge.search import Retriever, dense_text


# The name under which a training run adds its split's Q&A pairs ("data: faq.json", train/grounding.py). Such pairs
# belong to the runs that added them: a run reads every document and every file added with `knowledge add`, but only
# its own lineage's training pairs (`pairs_from`). Why: one $ECOMBOT_HOME trains the bots of several stores into the
# 'default' base; without the scope a bot trained on one store's FAQ was grounded in, and gave as stored answers,
# the pairs of another store's file trained before it.
TRAINING_PAIRS = "data: "


class Base(DeclarativeBase):
    pass


class SourceRow(Base):
    __tablename__ = "knowledge_sources"
    __table_args__ = (UniqueConstraint("base", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    base: Mapped[str] = mapped_column(String(128), index=True)  # the knowledge base's name
    name: Mapped[str] = mapped_column(String(512))  # a file name, or "data: <file name>"
    kind: Mapped[str] = mapped_column(String(16))  # "document" or "data"
    sha256: Mapped[str] = mapped_column(String(64))
    passages: Mapped[int] = mapped_column(Integer)
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PassageRow(Base):
    __tablename__ = "knowledge_passages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("knowledge_sources.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    heading: Mapped[str] = mapped_column(Text)
    line: Mapped[int] = mapped_column(Integer)
    question: Mapped[str | None] = mapped_column(Text, nullable=True)
    text: Mapped[str] = mapped_column(Text)
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # float32, unit length, of search.dense_text


def in_scope(pairs_from: Collection[str] | None):
    """The sources a run whose lineage added the training pairs `pairs_from` reads, as a query condition (None: every
    source, as runs recorded before scopes existed did): filtered in the database, so another run's pairs and their
    vectors are never read."""
    if pairs_from is None:
        return true()
    prefix = func.substr(SourceRow.name, 1, len(TRAINING_PAIRS))  # exact in SQLite and PostgreSQL, unlike LIKE
    return or_(prefix != TRAINING_PAIRS, SourceRow.name.in_(list(pairs_from)))


@dataclass(frozen=True)
class SourceSummary:
    """One source of a knowledge base; `status` says what the last add did: added, replaced or unchanged."""

    name: str
    kind: str
    passages: int
    sha256: str
    added_at: datetime
    status: str = ""


def _summary(row: SourceRow, status: str = "") -> SourceSummary:
    return SourceSummary(row.name, row.kind, row.passages, row.sha256, row.added_at, status)


def passages_hash(passages: list[Passage]) -> str:
    """sha256 of every passage's source, place and text, in order (KnowledgeBase.content_hash)."""
    digest = hashlib.sha256()
    for p in passages:
        digest.update(json.dumps([p.source, p.heading, p.line, p.question, p.text]).encode() + b"\n")
    return digest.hexdigest()


def _no_nul(text: str | None) -> str | None:
    """PostgreSQL's text cannot hold NUL characters; SQLite stores the same text."""
    return None if text is None else text.replace("\x00", "")


class KnowledgeBase:
    def __init__(self, url: str | None = None, name: str = "default"):
        self.url, self.name = url or default_db_url(), name
        self.engine = open_engine(self.url, Base.metadata, "the knowledge base")
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    def add_files(self, paths: list[Path]) -> list[SourceSummary]:
        """Index each file under its file name; a file added before is replaced, or left as it is when its bytes
        did not change (no re-embedding)."""
        summaries = []
        for path in map(Path, paths):
            if not path.is_file():
                raise DataError(path, None, None, "file not found" if not path.exists() else "not a file")
            sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
            kind = "document" if path.suffix.lower() in DOCUMENT_SUFFIXES else "data"
            summaries.append(self._put(path.name, kind, sha256, lambda p=path: read_passages(p)))
        return summaries

    def add_passages(self, source: str, passages: list[Passage], kind: str = "data") -> SourceSummary:
        """Index passages made elsewhere (training: its split's Q&A pairs as "data: <file name>")."""
        passages = [Passage(source, p.heading, p.line, p.text, p.question) for p in passages]
        return self._put(source, kind, passages_hash(passages), lambda: passages)

    def _put(self, source: str, kind: str, sha256: str, make) -> SourceSummary:
        with self.sessions() as db:
            old = db.scalar(select(SourceRow).where(SourceRow.base == self.name, SourceRow.name == source))
            if old is not None and old.sha256 == sha256:
                return _summary(old, "unchanged")
        passages = make()
        vectors = embed([dense_text(p) for p in passages]).astype(np.float32)
        with self.sessions.begin() as db:  # one transaction: readers see the old passages or the new ones
            old = db.scalar(select(SourceRow).where(SourceRow.base == self.name, SourceRow.name == source))
            if old is not None:
                db.execute(delete(PassageRow).where(PassageRow.source_id == old.id))
                db.delete(old)
                db.flush()
            row = SourceRow(base=self.name, name=source, kind=kind, sha256=sha256, passages=len(passages),
                            added_at=datetime.now(timezone.utc))
            db.add(row)
            db.flush()
            db.add_all(PassageRow(source_id=row.id, position=i, heading=_no_nul(p.heading), line=p.line,
                                  question=_no_nul(p.question), text=_no_nul(p.text), vector=vector.tobytes())
                       for i, (p, vector) in enumerate(zip(passages, vectors)))
        return _summary(row, "replaced" if old is not None else "added")

    def sources(self, pairs_from: Collection[str] | None = None) -> list[SourceSummary]:
        with self.sessions() as db:
            rows = db.scalars(select(SourceRow).where(SourceRow.base == self.name, in_scope(pairs_from))
                              .order_by(SourceRow.name))
            return [_summary(row) for row in rows]

    def remove(self, source: str) -> int:
        """Drop a source and its passages; returns how many passages went."""
        with self.sessions.begin() as db:
            row = db.scalar(select(SourceRow).where(SourceRow.base == self.name, SourceRow.name == source))
            if row is None:
                known = ", ".join(s.name for s in self.sources()) or "none"
                raise EcombotError(f"knowledge base '{self.name}' has no source {source!r} (sources: {known})")
            db.execute(delete(PassageRow).where(PassageRow.source_id == row.id))
            db.delete(row)
            return row.passages

    def _rows(self, pairs_from: Collection[str] | None = None):
        query = (select(SourceRow.name, PassageRow.heading, PassageRow.line, PassageRow.text, PassageRow.question,
                        PassageRow.vector)
                 .join(SourceRow, PassageRow.source_id == SourceRow.id)
                 .where(SourceRow.base == self.name, in_scope(pairs_from))
                 .order_by(SourceRow.name, PassageRow.position))
        with self.engine.connect() as connection:
            return connection.execute(query).all()

    def passages(self, pairs_from: Collection[str] | None = None) -> list[Passage]:
        """The passages a run whose lineage added the training pairs `pairs_from` reads (None: all; see in_scope)."""
        return [Passage(r.name, r.heading, r.line, r.text, r.question) for r in self._rows(pairs_from)]

    def content_hash(self) -> str:
        """passages_hash of every passage: a training run records the hash of what it reads (its scope), so a later
        change to the store's knowledge is visible."""
        return passages_hash(self.passages())

    @property
    def display_url(self) -> str:
        """The database URL with its password masked: what a run records and messages show."""
        return without_password(self.url, self.url)

    @property
    def is_empty(self) -> bool:
        with self.sessions() as db:
            return not db.scalar(select(func.count()).select_from(SourceRow).where(SourceRow.base == self.name))

    def retriever(self, threshold: float | None = None, pairs_from: Collection[str] | None = None) -> Retriever:
        """A retriever over the stored passages (those of `pairs_from`'s scope, see in_scope) and their stored
        vectors."""
        rows = self._rows(pairs_from)
        if not rows:
            gone = f"its training pairs ({', '.join(pairs_from)}) are gone, " if pairs_from else ""
            raise EcombotError(f"the knowledge base '{self.name}' holds no passage this adapter reads ({gone}no "
                               "document): add the store's documents with `ecombot knowledge add FILE`, or retrain")
        passages = [Passage(r.name, r.heading, r.line, r.text, r.question) for r in rows]
        vectors = np.frombuffer(b"".join(r.vector for r in rows), dtype=np.float32).reshape(len(rows), -1)
        return Retriever(passages, vectors) if threshold is None else Retriever(passages, vectors, threshold)


def open_grounder(name: str | None, db: str | None, k: int, handoff: str | None,
                  reuse: float | None = None, pairs_from: Collection[str] | None = None,
                  check_facts: bool = False) -> Grounder | None:
    """The grounder of knowledge base `name` (None: "default"); None for "none" (answers from the weights alone).
    `reuse`, `check_facts`: see Grounder; `pairs_from`: the training pairs a run reads, see in_scope."""
    if name == "none":
        return None
    base = KnowledgeBase(db, name or "default")
    if base.is_empty:
        raise EcombotError(f"the knowledge base '{base.name}' is empty: add the store's documents with "
                           "`ecombot knowledge add FILE`, or answer without one with `--knowledge none`")
    return Grounder(base.retriever(pairs_from=pairs_from), k, handoff or DEFAULT_HANDOFF, reuse, check_facts)


def recorded_pairs(record: dict, name: str) -> list[str] | None:
    """The training pairs a run reads in knowledge base `name`: its record's when it trained with that base, none of
    another base's (they are other runs'); None (every pair) for a run recorded before scopes."""
    if "pairs" not in record:
        return None
    return record["pairs"] if record.get("name") == name else []


def scope_of(records: list[dict], name: str) -> list[str] | None:
    """The training pairs several adapters served side by side read in `name`: every one's (None, every pair, if
    any reads them all, or for the base model alone)."""
    scopes = [recorded_pairs(record, name) for record in records]
    if not scopes or any(s is None for s in scopes):
        return None
    return list(dict.fromkeys(p for s in scopes for p in s))
