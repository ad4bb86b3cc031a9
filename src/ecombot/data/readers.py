"""Readers for the dataset formats support teams actually have, detected from the content.

Each reader turns one record into a Conversation (roles kept as written; validation happens in
`clean`). A record missing a required field is a DataError naming file, line/row and field: a
half-read file would silently train on the wrong data.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from ecombot.data.conversation import Conversation
from ecombot.errors import DataError

FORMATS = ("faq-json", "csv", "chat-jsonl", "sharegpt", "alpaca", "prompt-completion")
# CSV header spellings accepted for the two required columns.
CSV_QUESTION = ("instruction", "question", "query", "prompt", "customer", "utterance")
CSV_ANSWER = ("response", "answer", "reply", "completion", "agent")


@dataclass
class RawFile:
    path: Path
    format: str
    conversations: list[Conversation]


def _text(value: Any, path: Path, where: str, name: str, required: bool = True) -> str:
    if value is None:
        if required:
            raise DataError(path, where, name, "missing required field")
        return ""
    if not isinstance(value, (str, int, float)):
        raise DataError(path, where, name, f"expected text, got {type(value).__name__}")
    return str(value).strip()


def _labels(record: dict, path: Path, where: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in ("intent", "category"):
        value = record.get(name)
        out[name] = None if value in (None, "") else _text(value, path, where, name)
    return out


def _get(record: dict, path: Path, where: str, name: str) -> Any:
    if name not in record:
        raise DataError(path, where, name, "missing required field")
    return record[name]


def _faq(record: dict, path: Path, where: str) -> Conversation:
    q = _text(_get(record, path, where, "question"), path, where, "question")
    a = _text(_get(record, path, where, "answer"), path, where, "answer")
    return Conversation([{"role": "user", "content": q}, {"role": "assistant", "content": a}], **_labels(record, path, where))


def _message_list(value: Any, path: Path, where: str, name: str, role_key: str, text_key: str) -> list[dict[str, str]]:
    if not isinstance(value, list):
        raise DataError(path, where, name, f"expected a list of messages, got {type(value).__name__}")
    messages = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise DataError(path, where, f"{name}[{i}]", "expected an object with "
                            f"'{role_key}' and '{text_key}'")
        role = _text(m.get(role_key), path, where, f"{name}[{i}].{role_key}").lower()
        messages.append({"role": role, "content": _text(m.get(text_key), path, where, f"{name}[{i}].{text_key}")})
    return messages


def _chat(record: dict, path: Path, where: str) -> Conversation:
    messages = _message_list(_get(record, path, where, "messages"), path, where, "messages", "role", "content")
    return Conversation(messages, **_labels(record, path, where))


def _sharegpt(record: dict, path: Path, where: str) -> Conversation:
    turns = _message_list(_get(record, path, where, "conversations"), path, where, "conversations", "from", "value")
    if isinstance(record.get("system"), str) and record["system"].strip():
        turns.insert(0, {"role": "system", "content": record["system"].strip()})
    return Conversation(turns, **_labels(record, path, where))


def _alpaca(record: dict, path: Path, where: str) -> Conversation:
    instruction = _text(_get(record, path, where, "instruction"), path, where, "instruction")
    extra = _text(record.get("input"), path, where, "input", required=False)
    output = _text(_get(record, path, where, "output"), path, where, "output")
    user = f"{instruction}\n\n{extra}" if extra else instruction
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    if isinstance(record.get("system"), str) and record["system"].strip():
        messages.insert(0, {"role": "system", "content": record["system"].strip()})
    return Conversation(messages, **_labels(record, path, where))


def _prompt_completion(record: dict, path: Path, where: str) -> Conversation:
    prompt, completion = _get(record, path, where, "prompt"), _get(record, path, where, "completion")
    # TRL's conversational variant: prompt and completion are lists of messages.
    if isinstance(prompt, list):
        messages = _message_list(prompt, path, where, "prompt", "role", "content")
        messages += _message_list(completion if isinstance(completion, list) else
                                  [{"role": "assistant", "content": completion}], path, where, "completion", "role", "content")
    else:
        messages = [{"role": "user", "content": _text(prompt, path, where, "prompt")},
                    {"role": "assistant", "content": _text(completion, path, where, "completion")}]
    return Conversation(messages, **_labels(record, path, where))


# format -> (keys that identify it, reader). Checked in order; the first match wins.
RECORD_FORMATS: list[tuple[str, tuple[str, ...], Callable[[dict, Path, str], Conversation]]] = [
    ("chat-jsonl", ("messages",), _chat),
    ("sharegpt", ("conversations",), _sharegpt),
    ("alpaca", ("instruction", "output"), _alpaca),
    ("prompt-completion", ("prompt", "completion"), _prompt_completion),
    ("faq-json", ("question", "answer"), _faq),
]


def _detect_record(record: Any, path: Path, where: str) -> tuple[str, Callable]:
    if not isinstance(record, dict):
        raise DataError(path, where, None, f"expected a JSON object, got {type(record).__name__}")
    for name, keys, reader in RECORD_FORMATS:
        if all(k in record for k in keys):
            return name, reader
    raise DataError(path, where, None, "unrecognised record: expected 'messages' (chat), 'conversations' (ShareGPT), "
                    "'instruction'+'output' (Alpaca), 'prompt'+'completion' or 'question'+'answer' "
                    f"(found keys: {', '.join(sorted(record)) or 'none'})")


def _read_records(records: Iterator[tuple[str, Any]], path: Path) -> RawFile:
    fmt, reader, out = None, None, []
    for where, record in records:
        if reader is None:
            fmt, reader = _detect_record(record, path, where)
        elif not isinstance(record, dict):
            raise DataError(path, where, None, f"expected a JSON object, got {type(record).__name__}")
        conv = reader(record, path, where)
        conv.source = f"{path.name}:{where}"
        out.append(conv)
    if fmt is None:
        raise DataError(path, None, None, "the file holds no records")
    return RawFile(path, fmt, out)


def _read_json(path: Path, text: str) -> RawFile:
    data = json.loads(text)
    if isinstance(data, dict) and "questions" in data:
        items = data["questions"]
        if not isinstance(items, list):
            raise DataError(path, None, "questions", "expected a list of {question, answer} objects")
        raw = _read_records(((f"questions[{i}]", r) for i, r in enumerate(items)), path)
        if raw.format != "faq-json":
            raise DataError(path, "questions[0]", "question", "FAQ items need 'question' and 'answer'")
        return raw
    if isinstance(data, dict):
        for key in ("data", "conversations", "examples", "rows"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
    if not isinstance(data, list):
        raise DataError(path, None, None, "expected a list of records or {\"questions\": [...]} at the top level")
    return _read_records(((f"item {i + 1}", r) for i, r in enumerate(data)), path)


def _jsonl_records(path: Path, text: str) -> Iterator[tuple[str, Any]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"line {number}", json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(path, f"line {number}", None, f"invalid JSON: {exc.msg} (column {exc.colno})") from None


def _read_csv(path: Path, text: str) -> RawFile:
    dialect = "excel-tab" if path.suffix.lower() == ".tsv" else "excel"
    reader = csv.DictReader(text.splitlines(), dialect=dialect)
    if not reader.fieldnames:
        raise DataError(path, "row 1", None, "the CSV file has no header row")
    columns = {name.strip().lower(): name for name in reader.fieldnames if name}
    q_col = next((columns[c] for c in CSV_QUESTION if c in columns), None)
    a_col = next((columns[c] for c in CSV_ANSWER if c in columns), None)
    if q_col is None or a_col is None:
        missing = "instruction" if q_col is None else "response"
        raise DataError(path, "row 1", missing, f"missing required column (header has: {', '.join(reader.fieldnames)})")
    out = []
    for row in reader:
        where = f"row {reader.line_num}"
        if None in row:  # more cells than header columns
            raise DataError(path, where, None, f"{len(reader.fieldnames) + len(row[None])} cells but the header has "
                            f"{len(reader.fieldnames)} columns")
        values = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
        conv = Conversation([{"role": "user", "content": (row[q_col] or "").strip()},
                             {"role": "assistant", "content": (row[a_col] or "").strip()}],
                            intent=values.get("intent") or None, category=values.get("category") or None,
                            source=f"{path.name}:{where}")
        if values.get("flags"):
            conv.meta["flags"] = values["flags"]
        out.append(conv)
    if not out:
        raise DataError(path, None, None, "the CSV file has a header but no rows")
    return RawFile(path, "csv", out)


def read_file(path: str | Path) -> RawFile:
    """Read any supported file into conversations; the format is detected from the content."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, None, None, "file not found")
    if path.is_dir():
        raise DataError(path, None, None, "is a directory, expected a data file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(path, f"byte {exc.start}", None, "not UTF-8 text") from None
    if not text.strip():
        raise DataError(path, None, None, "the file is empty")
    if path.suffix.lower() in (".csv", ".tsv"):
        return _read_csv(path, text)
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            return _read_json(path, text)
        except json.JSONDecodeError as exc:
            raise DataError(path, f"line {exc.lineno}", None, f"invalid JSON: {exc.msg} (column {exc.colno})") from None
    if stripped.startswith("{"):
        # One JSON document ({"questions": [...]}) or JSON Lines: the first line decides.
        first = stripped.splitlines()[0]
        try:
            json.loads(first)
            is_jsonl = True
        except json.JSONDecodeError:
            is_jsonl = False
        if not is_jsonl or (len(text.strip().splitlines()) == 1 and '"questions"' in first):
            try:
                return _read_json(path, text)
            except json.JSONDecodeError as exc:
                raise DataError(path, f"line {exc.lineno}", None, f"invalid JSON: {exc.msg} (column {exc.colno})") from None
        raw = _read_records(_jsonl_records(path, text), path)
        return raw
    raise DataError(path, "line 1", None, "unrecognised format: expected JSON, JSON Lines or CSV (.csv/.tsv)")
