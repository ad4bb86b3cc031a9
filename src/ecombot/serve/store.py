"""The conversation store: every conversation, answer, latency, adapter and piece of feedback, via SQLAlchemy.

SQLite by default (`$ECOMBOT_HOME/ecombot.db`), any SQLAlchemy URL otherwise (PostgreSQL tested). Each
answer is written in one transaction, so a killed server loses at most the request in flight. Text is
redacted (e-mails, phones, cards) before it is written, unless redaction is switched off; NUL characters are
dropped (PostgreSQL cannot store them).

What customers say about answers (ratings, corrections) is kept as their suggestion; only what a reviewer
approved is exported as training data.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, TypeVar

from sqlalchemy import (Boolean, DateTime, Float, ForeignKey, Integer, String, Text, func,
                        inspect, or_, select, text, update)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, selectinload, sessionmaker

from ecombot import atomic
from ecombot.database import open_engine, without_password
from ecombot.errors import EcombotError
from ecombot.home import default_db_url
from ecombot.serve.redact import redact

T = TypeVar("T")


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
    # an agent's answer to the handed-over conversation (its text is the approved review of the bot's last answer)
    handoff_answered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    handoff_answered_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # set instead of an answer when the agent closed it without one (solved by phone, spam): nothing to train on
    handoff_closed_because: Mapped[str | None] = mapped_column(Text, nullable=True)
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
    version: Mapped[str | None] = mapped_column(String(32), nullable=True)  # the adapter's version (ecombot learn)
    latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    completion_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    finish_reason: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # the knowledge passages an answer was grounded in: a JSON list of Hit.to_source() dicts (None: ungrounded)
    sources: Mapped[str | None] = mapped_column(Text, nullable=True)
    # a catalog task's answer (copy, recommend; None: support): kept out of support training data and `learn`
    task: Mapped[str | None] = mapped_column(String(16), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    conversation: Mapped[ConversationRow] = relationship(back_populates="messages")
    feedback: Mapped["FeedbackRow | None"] = relationship(back_populates="message")


class FeedbackRow(Base):
    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"), unique=True)  # the latest rating counts
    rating: Mapped[int] = mapped_column(Integer)  # +1 thumbs up, -1 thumbs down
    correction: Mapped[str | None] = mapped_column(Text, nullable=True)  # the customer's suggested answer
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    message: Mapped[MessageRow] = relationship(back_populates="feedback")
    review: Mapped["ReviewRow | None"] = relationship(back_populates="feedback")

    @property
    def suggests_something(self) -> bool:
        """A thumbs up (train on this answer) or a correction (train on that); a bare thumbs down teaches nothing."""
        return self.rating > 0 or bool(self.correction)


class ReviewRow(Base):
    """A reviewer's decision on one piece of feedback; the customer changing their feedback removes it."""

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    feedback_id: Mapped[int] = mapped_column(ForeignKey("feedback.id"), unique=True)
    approved: Mapped[bool] = mapped_column(Boolean)
    answer: Mapped[str | None] = mapped_column(Text, nullable=True)  # what training gets, when approved
    reviewer: Mapped[str] = mapped_column(String(64))  # a review key's fingerprint, or "cli:<user>"
    # an agent's answer to a handed-over conversation (Store.answer_handoff), not a decision on a customer's rating:
    # a later rating by the customer leaves it in place
    by_agent: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    reviewed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    feedback: Mapped[FeedbackRow] = relationship(back_populates="review")


class NotFound(EcombotError):
    """A conversation or answer that does not exist, or belongs to another client."""


class Conflict(EcombotError):
    """A request the stored state has already settled (a handed-over conversation an agent answered)."""


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
    sources: list[dict] = field(default_factory=list)  # the knowledge passages it was grounded in
    handoff: str | None = None  # why an agent should take over the conversation (the bot handed over), else None
    version: str | None = None  # the adapter version that answered
    task: str | None = None  # a catalog task's answer (copy, recommend), else None (support)


@dataclass
class Suggestion:
    """A customer's feedback on one answer, waiting for a reviewer: train on the answer (up) or on `correction`."""

    id: int
    conversation_id: str
    question: str  # the customer's turn the answer replied to
    answer: str  # as generated
    rating: int
    correction: str | None
    created_at: datetime


@dataclass
class Handoff:
    """A conversation the bot (or the customer) handed to an agent: where it stands and what was said last."""

    conversation_id: str
    handed_over_at: datetime
    note: str | None
    question: str  # the customer's last turn
    answer: str  # the bot's last answer (often the handoff message itself)
    adapter: str | None
    answered_by: str | None  # the agent who answered (or closed) it, None while it waits
    closed_because: str | None = None  # closed without an answer, and why


@dataclass
class ReviewedAnswer:
    """An answer a reviewer approved, as training data: the conversation up to it, the approved answer last."""

    feedback_id: int
    messages: list[dict[str, str]]
    adapter: str | None  # the adapter and version that gave the original answer
    version: str | None
    generated: str  # the answer as the bot gave it (the approved one is the last message)
    reviewed_at: datetime

    @property
    def corrected(self) -> bool:
        return self.messages[-1]["content"] != self.generated


@dataclass
class ExportReport:
    written: int
    skipped: dict[str, int]  # reason -> count, e.g. "awaiting review"


class Store:
    def __init__(self, url: str | None = None, redact_text: bool = True):
        self.url = url or default_db_url()
        self.redact_text = redact_text
        self.engine = open_engine(self.url, Base.metadata, "the conversation store")
        try:
            self._add_missing_columns()
        except Exception as exc:
            raise EcombotError(without_password(f"cannot open the conversation store in {self.url}: {exc}",
                                                self.url)) from None
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    def _add_missing_columns(self) -> None:
        """Columns added since a database was made (create_all adds tables, never columns): ALTER TABLE adds them,
        nullable, so older rows read as None. A server starting at the same moment may add one first: fine."""
        for table in Base.metadata.sorted_tables:
            have = {column["name"] for column in inspect(self.engine).get_columns(table.name)}
            for column in (c for c in table.columns if c.name not in have):
                kind = column.type.compile(self.engine.dialect)
                try:
                    with self.engine.begin() as db:
                        db.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}"))
                except Exception:
                    if column.name not in {c["name"] for c in inspect(self.engine).get_columns(table.name)}:
                        raise

    def _clean(self, text: str | None) -> str | None:
        """Text as stored: redacted (unless switched off) and without NUL characters, which PostgreSQL's text type
        cannot hold (one in a customer's message failed the whole answer); SQLite stores the same."""
        if text is None:
            return None
        text = text.replace("\x00", "")
        return redact(text) if self.redact_text else text

    def _write(self, work: Callable[[Session], T]) -> T:
        """`work` in one transaction, run once more if a concurrent request inserted the same row first.

        Two requests opening one new conversation (or rating one answer) both see no row and both insert;
        the database refuses the second, whose retry finds the row and checks whose it is.
        """
        try:
            with self.sessions.begin() as db:
                return work(db)
        except IntegrityError:
            with self.sessions.begin() as db:
                return work(db)

    def _owned(self, db: Session, conversation_id: str, client: str, channel: str) -> ConversationRow:
        """The conversation, created for `client` if it is new; NotFound if it is another client's."""
        row = db.get(ConversationRow, conversation_id)
        if row is None:
            row = ConversationRow(id=conversation_id, client=client, channel=channel)
            db.add(row)
            db.flush()
        elif row.client != client:
            raise NotFound(f"conversation {conversation_id!r} not found")
        return row

    def open_conversation(self, conversation_id: str | None, client: str, channel: str) -> str:
        """The id of the conversation a request goes into, created now if new; NotFound if another client's.

        Claimed before the answer is generated: of two clients racing to open one id, the second is refused
        before any generation, not after its answer is written.
        """
        conversation_id = conversation_id or uuid.uuid4().hex
        return self._write(lambda db: self._owned(db, conversation_id, client, channel).id)

    def record_answer(self, conversation_id: str | None, client: str, channel: str,
                      messages: list[dict[str, str]], answer: Answer) -> str:
        """Store the request's question and the answer in one transaction; returns the conversation id. An answer
        that hands over to an agent flags the conversation for one (`answer.handoff` is the note).

        The API is stateless (clients resend the history), and that history is the client's word: only the
        user turns that end the request (the question answered now) are stored, then the answer as generated.
        Assistant and system turns a client sends never are, so the store's assistant turns are this server's.
        """
        conversation_id = conversation_id or uuid.uuid4().hex

        def write(db: Session) -> str:
            row = self._owned(db, conversation_id, client, channel)
            position = db.scalar(select(func.count()).where(MessageRow.conversation_id == row.id)) or 0
            for message in closing_user_turns(messages):
                db.add(MessageRow(conversation_id=row.id, position=position, role="user",
                                  content=self._clean(message["content"])))
                position += 1
            db.add(MessageRow(conversation_id=row.id, position=position, role="assistant",
                              content=self._clean(answer.content), completion_id=answer.completion_id,
                              adapter=answer.adapter, version=answer.version, latency_ms=answer.latency_ms,
                              prompt_tokens=answer.prompt_tokens, completion_tokens=answer.completion_tokens,
                              finish_reason=answer.finish_reason, task=answer.task,
                              sources=json.dumps(answer.sources, ensure_ascii=False) if answer.sources else None))
            if answer.handoff:
                self._hand_over(db, row.id, answer.handoff, unless_waiting=True)
            row.updated_at = now()
            return row.id

        return self._write(write)

    def record_feedback(self, completion_id: str, client: str, rating: int, correction: str | None) -> None:
        """The customer's (latest) rating of one of their answers; changing it sends it back for review (not once
        an agent answered the handed-over conversation: the agent's answer stays what training gets)."""

        def write(db: Session) -> None:
            message = db.scalar(select(MessageRow).where(MessageRow.completion_id == completion_id))
            if message is None or message.conversation.client != client:
                raise NotFound(f"answer {completion_id!r} not found")
            feedback = message.feedback or FeedbackRow(message_id=message.id, rating=rating)
            feedback.rating, feedback.correction, feedback.created_at = rating, self._clean(correction or None), now()
            if feedback.review is not None and not feedback.review.by_agent:
                db.delete(feedback.review)  # an agent's answer to a handed-over conversation stays approved
            db.add(feedback)

        self._write(write)

    def record_handoff(self, conversation_id: str, client: str, note: str | None) -> None:
        with self.sessions.begin() as db:
            row = db.get(ConversationRow, conversation_id)
            if row is None or row.client != client:
                raise NotFound(f"conversation {conversation_id!r} not found")
            self._hand_over(db, conversation_id, note)

    def _hand_over(self, db: Session, conversation_id: str, note: str | None, unless_waiting: bool = False) -> None:
        """Waiting for an agent from now on (handed over again after an agent answered, it waits again);
        `unless_waiting`: a conversation waiting already keeps its first note. One UPDATE whose condition the
        database checks at write time, as in `_claim_handoff`: setting the fields of the row read earlier in the
        request let an agent's answer or close committed in between win, and the new handoff was lost."""
        query = update(ConversationRow).where(ConversationRow.id == conversation_id)
        if unless_waiting:
            query = query.where(or_(ConversationRow.handoff_at.is_(None),
                                    ConversationRow.handoff_answered_at.is_not(None)))
        db.execute(query.values(handoff_at=now(), handoff_note=self._clean(note), handoff_answered_at=None,
                                handoff_answered_by=None, handoff_closed_because=None)
                   .execution_options(synchronize_session=False))

    def pending_suggestions(self, limit: int | None = None) -> list[Suggestion]:
        """Customers' ratings and corrections no reviewer has decided on yet, oldest first."""
        with self.sessions() as db:
            query = (select(FeedbackRow).where(~FeedbackRow.review.has()).order_by(FeedbackRow.id)
                     .options(selectinload(FeedbackRow.message)))
            rows = [f for f in db.scalars(query) if f.suggests_something][:limit]
            return [Suggestion(f.id, f.message.conversation_id, self._question_before(db, f.message),
                               f.message.content, f.rating, f.correction, f.created_at) for f in rows]

    @staticmethod
    def _question_before(db: Session, answer: MessageRow) -> str:
        return db.scalar(select(MessageRow.content).where(MessageRow.conversation_id == answer.conversation_id,
                                                          MessageRow.position < answer.position)
                         .order_by(MessageRow.position.desc()).limit(1)) or ""

    def review(self, suggestion_id: int, approve: bool, reviewer: str, answer: str | None = None) -> None:
        """A reviewer's decision: approved, the suggestion becomes training data (`answer` if the reviewer
        rewrote it, else the customer's correction, or the generated answer they rated up); rejected, it never does.
        """

        def write(db: Session) -> None:
            feedback = db.get(FeedbackRow, suggestion_id)
            if feedback is None or not feedback.suggests_something:
                raise NotFound(f"suggestion {suggestion_id} not found")
            review = feedback.review or ReviewRow(feedback_id=feedback.id)
            review.approved, review.reviewer, review.reviewed_at = approve, reviewer, now()
            suggested = feedback.correction or feedback.message.content
            review.answer = (self._clean(answer) or suggested) if approve else None
            db.add(review)

        self._write(write)

    def handoffs(self, waiting_only: bool = True) -> list[Handoff]:
        """Conversations handed over to an agent, oldest first: those no agent answered yet, or all of them."""
        with self.sessions() as db:
            query = (select(ConversationRow).where(ConversationRow.handoff_at.is_not(None))
                     .order_by(ConversationRow.handoff_at).options(selectinload(ConversationRow.messages)))
            if waiting_only:
                query = query.where(ConversationRow.handoff_answered_at.is_(None))
            found = []
            for row in db.scalars(query):
                last = self._last_answer(row)
                at = row.messages.index(last) if last else 0  # the messages are loaded: the turn before, no query
                found.append(Handoff(row.id, as_utc(row.handoff_at), row.handoff_note,
                                     row.messages[at - 1].content if at else "", last.content if last else "",
                                     last.adapter if last else None, row.handoff_answered_by,
                                     row.handoff_closed_because))
            return found

    @staticmethod
    def _last_answer(row: ConversationRow) -> MessageRow | None:
        return next((m for m in reversed(row.messages) if m.completion_id), None)

    def answer_handoff(self, conversation_id: str, answer: str, agent: str) -> None:
        """An agent's answer to a handed-over conversation. Why through the review: the agent's answer is what the
        bot should have said, so it becomes the approved answer in place of the bot's last one (`ecombot learn` and
        `conversations export --rated` take it as they take an approved correction), and a customer's own pending
        correction of that answer is kept as theirs. Reaching the customer is the agent's own channel's job."""

        answer = (self._clean(answer) or "").strip()  # as stored: NUL characters only are no text either
        if not answer:
            raise EcombotError(f"conversation {conversation_id!r}: an agent's answer needs some text")

        def write(db: Session) -> None:
            row = self._claim_handoff(db, conversation_id, agent)
            last = self._last_answer(row)
            if last is None or last.task:  # a product description or recommendation is no support answer to replace
                raise Conflict(f"conversation {conversation_id!r} ends with "
                               + (f"a {last.task} task answer" if last else "no answer of this server's")
                               + ": an agent's answer there would not be support training data")
            feedback = last.feedback or FeedbackRow(message_id=last.id, rating=-1)
            feedback.correction = feedback.correction or answer
            review = feedback.review or ReviewRow()
            review.approved, review.reviewer, review.reviewed_at, review.by_agent = True, agent, now(), True
            review.answer = answer
            feedback.review = review
            db.add(feedback)

        self._write(write)

    def close_handoff(self, conversation_id: str, because: str, agent: str) -> None:
        """An agent closes a handed-over conversation without an answer to learn from (solved by phone, spam, a
        product question the catalog answers): it stops waiting, the reason is kept, nothing becomes training data."""
        because = (self._clean(because) or "").strip()
        if not because:
            raise EcombotError(f"conversation {conversation_id!r}: closing a handoff without an answer needs a reason")

        def write(db: Session) -> None:
            self._claim_handoff(db, conversation_id, agent).handoff_closed_because = because

        self._write(write)

    @staticmethod
    def _claim_handoff(db: Session, conversation_id: str, agent: str) -> ConversationRow:
        """The handed-over conversation, now answered (or closed) by `agent`; NotFound, or Conflict once taken.
        Claimed by one conditional UPDATE: of two agents at once, the second finds it taken (PostgreSQL re-checks the
        condition once the first commits; SQLite runs one writer at a time), where reading the row and then writing
        it let the last one win. The caller's error rolls the claim back."""
        at = now()
        claimed = db.execute(update(ConversationRow).where(
            ConversationRow.id == conversation_id, ConversationRow.handoff_at.is_not(None),
            ConversationRow.handoff_answered_at.is_(None)).values(
            handoff_answered_at=at, handoff_answered_by=agent, updated_at=at)).rowcount
        row = db.get(ConversationRow, conversation_id, populate_existing=True)
        if row is None or row.handoff_at is None:
            raise NotFound(f"no handed-over conversation {conversation_id!r}")
        if not claimed:
            done = f"closed ({row.handoff_closed_because})" if row.handoff_closed_because is not None else "answered"
            raise Conflict(f"conversation {conversation_id!r} was {done} by {row.handoff_answered_by} already")
        return row

    def conversations(self) -> list[ConversationRow]:
        """Every conversation with its messages, feedback and reviews loaded (for export and inspection)."""
        with self.sessions() as db:
            query = (select(ConversationRow).order_by(ConversationRow.created_at)
                     .options(selectinload(ConversationRow.messages).selectinload(MessageRow.feedback)
                              .selectinload(FeedbackRow.review)))
            return list(db.scalars(query))

    def reviewed_answers(self, adapter: str | None = None, since: datetime | None = None) -> list[ReviewedAnswer]:
        """Every approved answer (of `adapter`, reviewed at or after `since`), oldest first: what `ecombot learn`
        trains on."""
        found = []
        for conversation in self.conversations():
            for history, message, approved in answered_turns(conversation):
                review = message.feedback.review if message.feedback else None
                if (approved is None or message.task or (adapter is not None and message.adapter != adapter)
                        or (since is not None and as_utc(review.reviewed_at) < since)):
                    continue
                found.append(ReviewedAnswer(message.feedback.id, history, message.adapter, message.version,
                                            message.content, as_utc(review.reviewed_at)))
        return sorted(found, key=lambda r: (r.reviewed_at, r.feedback_id))

    def export(self, path: Path, rated_only: bool) -> ExportReport:
        """Write chat JSONL that `ecombot train` reads, with only what reviewers approved in place of answers.

        An answer whose suggestion a reviewer approved is exported as approved (the customer's correction, as
        the reviewer accepted or rewrote it); a correction nobody approved never reaches the file. With
        `rated_only`, one record per approved answer: the conversation up to it; rated answers not approved
        are counted by reason. Otherwise every answered conversation, approved corrections in place. Catalog
        task answers (product copy, recommendations) are support data of no kind: left out and counted.
        """
        written, skipped = 0, {}
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic.replacing(path) as out:
            for conversation in self.conversations():
                history: list[dict[str, str]] = []
                task_turns = 0
                for history, message, approved in answered_turns(conversation):
                    if message.task:
                        task_turns += 1
                        reason = f"{message.task} task answers (not support)"
                        skipped[reason] = skipped.get(reason, 0) + 1
                        continue
                    if not rated_only or message.feedback is None:
                        continue
                    if approved:
                        out.write(json.dumps({"messages": history}, ensure_ascii=False) + "\n")
                        written += 1
                    else:
                        reason = not_exported_because(message.feedback)
                        skipped[reason] = skipped.get(reason, 0) + 1
                if not rated_only and not task_turns and history and history[-1]["role"] == "assistant":
                    out.write(json.dumps({"messages": history}, ensure_ascii=False) + "\n")
                    written += 1
        return ExportReport(written, skipped)


def as_utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes (stored in UTC), PostgreSQL aware ones."""
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def answered_turns(conversation: ConversationRow):
    """(history up to and including the answer, the answer's row, the approved answer or None) per answer of this
    server's, approved answers in place of the generated ones in the history."""
    history: list[dict[str, str]] = []
    for message in conversation.messages:
        if not (message.role == "user" or message.completion_id):  # a client's turn, stored by an older version:
            history = []  # what follows it is a conversation of its own
            continue
        review = message.feedback.review if message.feedback else None
        approved = review.answer if review and review.approved else None
        history = [*history, {"role": message.role, "content": approved or message.content}]
        if message.role == "assistant":
            yield history, message, approved


def not_exported_because(feedback: FeedbackRow) -> str:
    if not feedback.suggests_something:
        return "thumbs down without a correction"
    return "awaiting review" if feedback.review is None else "rejected by a reviewer"


def closing_user_turns(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The user turns at the end of a request: the question it asks now, without the history before it."""
    start = len(messages)
    while start and messages[start - 1]["role"] == "user":
        start -= 1
    return messages[start:]
