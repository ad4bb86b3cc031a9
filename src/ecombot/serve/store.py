"""The conversation store: every conversation, answer, latency, adapter and piece of feedback, via SQLAlchemy.

SQLite by default (`$ECOMBOT_HOME/ecombot.db`), any SQLAlchemy URL otherwise (PostgreSQL tested). Each
answer is written in one transaction, so a killed server loses at most the request in flight. Text is
redacted (e-mails, phones, cards) before it is written, unless redaction is switched off; NUL characters are
dropped (PostgreSQL cannot store them).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import DateTime, Float, ForeignKey, Integer, String, Text, create_engine, event, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from ecombot import atomic
from ecombot.errors import EcombotError
from ecombot.serve.redact import redact


def now() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class ConversationRow(Base):
    __tablename__ = "conversations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    client: Mapped[str] = mapped_column(String(64), index=True)  # who may continue it: key hash, web session or IP
    channel: Mapped[str] = mapped_column(String(16))  # "api" or "web"
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    handoff_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    handoff_note: Mapped[str | None] = mapped_column(Text, nullable=True)
    messages: Mapped[list["MessageRow"]] = relationship(order_by="MessageRow.position", back_populates="conversation")


class MessageRow(Base):
    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    # assistant answers are stored as generated, placeholders like {{Order Number}} unfilled: that is what
    # retraining needs, and it keeps the customer's details out of the store
    content: Mapped[str] = mapped_column(Text)
    completion_id: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    adapter: Mapped[str | None] = mapped_column(String(128), nullable=True)
    latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    completion_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    finish_reason: Mapped[str | None] = mapped_column(String(16), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    conversation: Mapped[ConversationRow] = relationship(back_populates="messages")
    feedback: Mapped["FeedbackRow | None"] = relationship(back_populates="message")


class FeedbackRow(Base):
    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"), unique=True)  # the latest rating counts
    rating: Mapped[int] = mapped_column(Integer)  # +1 thumbs up, -1 thumbs down
    correction: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    message: Mapped[MessageRow] = relationship(back_populates="feedback")


class NotFound(EcombotError):
    """A conversation or answer that does not exist, or belongs to another client."""


@dataclass
class Answer:
    """One generated answer and what it cost, as the server hands it to the store."""

    completion_id: str
    content: str
    adapter: str
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


@dataclass
class ExportReport:
    written: int
    skipped: dict[str, int]  # reason -> count, e.g. "thumbs down without a correction"


def default_url() -> str:
    from ecombot.home import ecombot_home

    home = ecombot_home()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'ecombot.db'}"


class Store:
    def __init__(self, url: str | None = None, redact_text: bool = True):
        self.url = url or default_url()
        self.redact_text = redact_text
        try:
            self.engine = create_engine(self.url, pool_pre_ping=True)
        except Exception as exc:  # bad URL or missing driver
            raise EcombotError(f"--db {self.url!r}: {exc}") from None
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        try:
            Base.metadata.create_all(self.engine)
        except Exception as exc:
            raise EcombotError(f"cannot open the conversation store {self.engine.url!r}: {exc}") from None
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    def _clean(self, text: str | None) -> str | None:
        """Text as stored: redacted (unless switched off) and without NUL characters, which PostgreSQL's text type
        cannot hold (one in a customer's message failed the whole answer); SQLite stores the same."""
        if text is None:
            return None
        text = text.replace("\x00", "")
        return redact(text) if self.redact_text else text

    def _conversation(self, db: Session, conversation_id: str, client: str) -> ConversationRow | None:
        row = db.get(ConversationRow, conversation_id)
        if row is not None and row.client != client:
            raise NotFound(f"conversation {conversation_id!r} not found")
        return row

    def may_continue(self, conversation_id: str, client: str) -> bool:
        """False when the conversation exists and belongs to another client."""
        with self.sessions() as db:
            row = db.get(ConversationRow, conversation_id)
            return row is None or row.client == client

    def record_answer(self, conversation_id: str | None, client: str, channel: str,
                      messages: list[dict[str, str]], answer: Answer) -> str:
        """Store the request's new messages and the answer in one transaction; returns the conversation id.

        The API is stateless (clients resend the history), so only messages beyond those already stored
        for this conversation are added; a client that restarted its history adds just its last message.
        """
        with self.sessions.begin() as db:
            row = self._conversation(db, conversation_id, client) if conversation_id else None
            if row is None:
                row = ConversationRow(id=conversation_id or uuid.uuid4().hex, client=client, channel=channel)
                db.add(row)
                db.flush()
            stored = db.scalar(select(func.count()).where(MessageRow.conversation_id == row.id)) or 0
            new = messages[stored:] if len(messages) > stored else messages[-1:]
            for i, message in enumerate(new):
                db.add(MessageRow(conversation_id=row.id, position=stored + i, role=message["role"],
                                  content=self._clean(message["content"])))
            db.add(MessageRow(conversation_id=row.id, position=stored + len(new), role="assistant",
                              content=self._clean(answer.content), completion_id=answer.completion_id,
                              adapter=answer.adapter, latency_ms=answer.latency_ms,
                              prompt_tokens=answer.prompt_tokens, completion_tokens=answer.completion_tokens,
                              finish_reason=answer.finish_reason))
            row.updated_at = now()
            return row.id

    def record_feedback(self, completion_id: str, client: str, rating: int, correction: str | None) -> None:
        with self.sessions.begin() as db:
            message = db.scalar(select(MessageRow).where(MessageRow.completion_id == completion_id))
            if message is None or message.conversation.client != client:
                raise NotFound(f"answer {completion_id!r} not found")
            feedback = message.feedback or FeedbackRow(message_id=message.id, rating=rating)
            feedback.rating, feedback.correction, feedback.created_at = rating, self._clean(correction), now()
            db.add(feedback)

    def record_handoff(self, conversation_id: str, client: str, note: str | None) -> None:
        with self.sessions.begin() as db:
            row = self._conversation(db, conversation_id, client)
            if row is None:
                raise NotFound(f"conversation {conversation_id!r} not found")
            row.handoff_at, row.handoff_note = now(), self._clean(note)

    def conversations(self) -> list[ConversationRow]:
        """Every conversation with its messages and feedback loaded (for export and inspection)."""
        from sqlalchemy.orm import selectinload

        with self.sessions() as db:
            query = (select(ConversationRow).order_by(ConversationRow.created_at)
                     .options(selectinload(ConversationRow.messages).selectinload(MessageRow.feedback)))
            return list(db.scalars(query))

    def export(self, path: Path, rated_only: bool) -> ExportReport:
        """Write chat JSONL that `ecombot train` reads.

        With `rated_only`, one record per rated answer: the conversation up to that answer, with the
        customer's correction in place of a thumbs-down answer (earlier answers with corrections get theirs
        too). A thumbs-down without a correction teaches nothing and is skipped (counted).
        """
        written, skipped = 0, {}
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic.replacing(path) as out:
            for conversation in self.conversations():
                history: list[dict[str, str]] = []
                for message in conversation.messages:
                    feedback = message.feedback
                    content = feedback.correction if feedback and feedback.correction else message.content
                    history.append({"role": message.role, "content": content})
                    if message.role != "assistant" or not rated_only or feedback is None:
                        continue
                    if feedback.rating < 0 and not feedback.correction:
                        skipped["thumbs down without a correction"] = skipped.get("thumbs down without a correction", 0) + 1
                        continue
                    out.write(json.dumps({"messages": history}, ensure_ascii=False) + "\n")
                    written += 1
                if not rated_only and history and history[-1]["role"] == "assistant":
                    out.write(json.dumps({"messages": history}, ensure_ascii=False) + "\n")
                    written += 1
        return ExportReport(written, skipped)


def _sqlite_pragmas(connection, _record) -> None:
    """WAL: readers don't block the writer, and a killed process never leaves a half-written answer."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
