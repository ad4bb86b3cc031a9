"""Request bodies, validated the way OpenAI's API validates them (unknown fields are ignored)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def as_dict(self) -> dict[str, str]:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=1)
    stop: str | list[str] | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None

    @field_validator("messages")
    @classmethod
    def ends_with_the_customer(cls, messages: list[Message]) -> list[Message]:
        if messages[-1].role != "user":
            raise ValueError("the last message must have role 'user' (the question to answer)")
        return messages

    @field_validator("stop")
    @classmethod
    def at_most_four_stops(cls, stop):
        stops = [stop] if isinstance(stop, str) else (stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("up to 4 non-empty stop sequences")
        return stops

    @field_validator("metadata")
    @classmethod
    def small_metadata(cls, metadata):
        if metadata and (len(metadata) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in metadata.items())):
            raise ValueError("at most 16 pairs, keys up to 64 and values up to 512 characters")
        return metadata


class FeedbackRequest(BaseModel):
    completion_id: str = Field(max_length=64)
    rating: Literal["up", "down"]
    correction: str | None = Field(None, max_length=4000)


class HandoffRequest(BaseModel):
    conversation_id: str = Field(max_length=64)
    note: str | None = Field(None, max_length=2000)


class HandoffAnswerRequest(BaseModel):
    # the agent's answer: what the bot learns to say instead (blank is no answer)
    answer: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=4000)]


class HandoffCloseRequest(BaseModel):
    # why the handoff is closed without an answer (kept with it; blank is no reason)
    because: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]


class ReviewRequest(BaseModel):
    decision: Literal["approve", "reject"]
    answer: str | None = Field(None, min_length=1, max_length=4000)  # the reviewer's rewrite of the suggestion
