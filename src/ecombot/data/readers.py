"""Readers for the dataset formats support teams actually have, detected from the content.

Each reader turns one record into a Conversation (roles kept as written; validation happens in
`clean`). A record missing a required field is a DataError naming file, line/row and field: a
half-read file would silently train on the wrong data. Message text is kept as written except that
line breaks become LF and surrounding whitespace is stripped (`message_text`).
"""

from __future__ import annotations

import csv
import io
import json
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

from ecombot.data.conversation import ROLE_ALIASES, Conversation
from ecombot.errors import DataError

FORMATS = ("faq-json", "csv", "csv-threads", "xlsx", "xlsx-threads", "chat-jsonl", "sharegpt", "alpaca",
           "prompt-completion")
# CSV header spellings taken as they are for the two required columns, in order of preference.
CSV_QUESTION = ("instruction", "question", "query", "prompt", "utterance", "q")
CSV_ANSWER = ("response", "answer", "reply", "completion", "a")
# Otherwise the column whose name holds one of these words ("Customer Message", "customerQuestion", "agent_reply",
# "customer") and none of the other side's: where several do, the one whose name says it holds text
# ("customer_message" over a ticket export's "customer" name column), then the one named by the word alone. A word of
# CSV_NOT_TEXT rules a column out ("customer_id", "reply_date").
CSV_QUESTION_WORDS = {"question", "query", "prompt", "customer", "utterance", "instruction", "inquiry", "enquiry",
                      "user", "client", "buyer",
                      # the same in the languages shops export in (German, French, Spanish, Italian, Dutch, Portuguese)
                      "frage", "kunde", "pregunta", "cliente", "domanda", "vraag", "klant", "pergunta"}
CSV_ANSWER_WORDS = {"response", "answer", "reply", "completion", "agent", "assistant", "staff",
                    "antwort", "reponse", "respuesta", "risposta", "antwoord", "resposta"}
CSV_TEXT_WORDS = {"message", "text", "body", "content", "comment", "note", "question", "query", "request",
                  "inquiry", "enquiry", "reply", "response", "answer", "msg"}
CSV_NOT_TEXT = {"id", "name", "email", "mail", "date", "time", "created", "at", "type", "status", "count", "number",
                "no", "phone", "tags", "tag", "rating", "score", "url", "language", "lang", "channel", "country"}
# A ticket or chat export with one message per row: the thread's id column (a name with one of THREAD_WORDS and an id
# word, or the word alone), who wrote it (ROLE_COLUMN_WORDS) and the text (CSV_TEXT_WORDS); writers by THREAD_SIDES.
THREAD_WORDS = {"conversation", "thread", "ticket", "chat", "session", "dialog", "dialogue", "case"}
THREAD_ID_WORDS = {"id", "number", "no", "key", "ref", "reference"}
ROLE_COLUMN_WORDS = {"role", "sender", "speaker", "author", "from", "direction", "party", "side"}
THREAD_TIME_WORDS = {"date", "time", "created", "timestamp", "sent", "datetime", "posted"}
CUSTOMER_WORDS = ("user", "customer", "client", "human", "buyer", "requester", "visitor", "shopper", "end-user",
                  "end user", "enduser", "inbound", "consumer")
STORE_WORDS = ("assistant", "agent", "support", "staff", "bot", "chatbot", "operator", "admin", "representative", "rep",
               "employee", "outbound", "model", "gpt", "seller", "merchant", "store", "shop")
THREAD_SIDES = {**dict.fromkeys(CUSTOMER_WORDS, "user"), **dict.fromkeys(STORE_WORDS, "assistant")}
TABLES = {"csv": "CSV file", "xlsx": "sheet"}  # what an error calls each kind of table
CSV_SEPARATORS = (",", ";", "\t", "|")
# JSON: a top-level object holding the records under one of these keys (or under its only list)
JSON_LIST_KEYS = ("data", "faqs", "faq", "conversations", "examples", "rows", "items", "entries", "records")
# words of a lookup-table FAQ's keys that are notes about the file, not questions ("Last updated", "Store name")
FILE_NOTE_WORDS = {"updated", "modified", "version", "store", "shop", "company", "author", "source", "generated",
                   "exported", "title", "website", "site", "copyright", "contact"}
# the fields naming an FAQ page's section ({"category": "Shipping", "questions": [...]}): its records' category
SECTION_HEADINGS = ("category", "section", "topic", "title", "heading", "name")
# a pair record's fields read with its question (as Alpaca's input), where the record has them
PAIR_EXTRA_FIELDS = ("input", "context")
# the words of a key a one-line object's list of records may be under ({"faq_list": [...]}; not {"dialog": [...]}, a
# multi-turn record's turns)
WRAPPER_WORDS = {"data", "faq", "faqs", "question", "questions", "qa", "pairs", "items", "entries", "records", "rows",
                 "examples", "list", "conversations", "tickets", "dataset", "sections", "categories", "topics"}


@dataclass
class RawFile:
    path: Path
    format: str
    conversations: list[Conversation]
    read_from: str | None = None  # where the pairs came from when the file has a choice: CSV columns, a JSON key


class NotATable(DataError):
    """A table without the columns of a conversation: no question or answer column, no thread columns (a workbook's
    notes sheet beside its FAQ, where the other sheets are read)."""


class NoRows(DataError):
    """A table of conversations with a header and no rows (a workbook's sheet for a topic not written yet, beside
    its filled ones, where the other sheets are read)."""


def message_text(text: str) -> str:
    """Line breaks (CRLF, CR) as LF, one convention for the model to learn; no surrounding whitespace (spreadsheet
    padding, a trailing newline); everything in between as written."""
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def _text(value: Any, path: Path, where: str, name: str, required: bool = True) -> str:
    if value is None:
        if required:
            raise DataError(path, where, name, "missing required field")
        return ""
    if not isinstance(value, str):
        raise DataError(path, where, name, f"expected text, got {type(value).__name__}")
    return message_text(value)


def _labels(record: dict, path: Path, where: str) -> dict[str, str | None]:
    """intent and category; an integer label (a class id) reads as its digits."""
    out: dict[str, str | None] = {}
    fields = _lowered(record)
    for name in ("intent", "category"):
        value = record.get(name, fields.get(name))
        label = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
        out[name] = _text(label, path, where, name, required=False) or None
    return out


def _with_system(messages: list[dict[str, str]], record: dict, path: Path, where: str) -> list[dict[str, str]]:
    """The record's optional top-level `system` prompt (ShareGPT, Alpaca) as the first turn."""
    system = _text(record.get("system"), path, where, "system", required=False)
    return [{"role": "system", "content": system}, *messages] if system else messages


def _get(record: dict, path: Path, where: str, name: str) -> Any:
    if name not in record:
        raise DataError(path, where, name, "missing required field")
    return record[name]


def _faq(record: dict, path: Path, where: str, question: str = "question", answer: str = "answer") -> Conversation:
    q = _text(_get(record, path, where, question), path, where, question)
    a = _text(_get(record, path, where, answer), path, where, answer)
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
    return Conversation(_with_system(turns, record, path, where), **_labels(record, path, where))


def _alpaca(record: dict, path: Path, where: str) -> Conversation:
    instruction = _text(_get(record, path, where, "instruction"), path, where, "instruction")
    extra = _text(record.get("input"), path, where, "input", required=False)
    output = _text(_get(record, path, where, "output"), path, where, "output")
    user = f"{instruction}\n\n{extra}" if extra else instruction
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return Conversation(_with_system(messages, record, path, where), **_labels(record, path, where))


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


def record_format(record: dict) -> tuple[str, Callable] | None:
    """The format whose keys the object has (the first listed), None if none."""
    return next(((name, reader) for name, keys, reader in RECORD_FORMATS if all(k in record for k in keys)), None)


def _lowered(record: dict) -> dict:
    return {str(key).strip().lower(): value for key, value in record.items()}


def _pair_fields(record: dict) -> tuple[str, str] | None:
    """The (lower-case) fields of a question/answer record named otherwise ({"Question": …, "Answer": …}, {"q": …,
    "a": …}, {"customer_message": …, "agent_reply": …}), found by the CSV reader's column rule: a JSON export's field
    names are a spreadsheet's column names."""
    names = [str(key) for key, value in record.items() if value is None or isinstance(value, str)]
    question, _ = csv_column(names, CSV_QUESTION, CSV_QUESTION_WORDS, CSV_ANSWER_WORDS)
    answer, _ = csv_column(names, CSV_ANSWER, CSV_ANSWER_WORDS, CSV_QUESTION_WORDS, taken=question)
    return (question, answer) if question and answer else None


def _named_pair(record: dict, path: Path, where: str, question: str, answer: str) -> Conversation:
    """A pair under the fields `_pair_fields` found, any case; an `input` or `context` field joins the question as
    Alpaca's input does, a `system` field is the first turn: no text of the record is dropped unsaid."""
    fields = _lowered(record)
    if len(fields) < len(record):
        spelt = [str(key).strip().lower() for key in record]
        twins = sorted(str(key) for key, low in zip(record, spelt) if spelt.count(low) > 1)
        raise DataError(path, where, twins[0], f"fields {', '.join(twins)} differ only in case: keep one")
    conv = _faq(fields, path, where, question, answer)
    extra = [_text(fields.get(name), path, where, name, required=False) for name in PAIR_EXTRA_FIELDS]
    if any(extra):
        conv.messages[0]["content"] = "\n\n".join([conv.messages[0]["content"], *filter(None, extra)])
    conv.messages = _with_system(conv.messages, fields, path, where)
    return conv


def _detect_record(record: Any, path: Path, where: str) -> tuple[str, Callable, str | None]:
    """The record's format, its reader and, for pairs under other field names, where they are read from."""
    if not isinstance(record, dict):
        raise DataError(path, where, None, f"expected a JSON object, got {type(record).__name__}")
    if found := record_format(record):
        return (*found, None)
    if fields := _pair_fields(record):
        question, answer = fields
        return ("faq-json", lambda r, p, w: _named_pair(r, p, w, question, answer),
                f"fields {question} (customer) and {answer} (answer)")
    raise DataError(path, where, None, "unrecognised record: expected 'messages' (chat), 'conversations' (ShareGPT), "
                    "'instruction'+'output' (Alpaca), 'prompt'+'completion' or 'question'+'answer' (or fields "
                    "named like a CSV file's columns, such as 'Question' and 'Answer') "
                    f"(found keys: {', '.join(sorted(record)) or 'none'})")


def _read_records(records: Iterator[tuple[str, Any]], path: Path) -> RawFile:
    fmt, reader, fields, out = None, None, None, []
    for where, record in records:
        if reader is None:
            fmt, reader, fields = _detect_record(record, path, where)
        elif not isinstance(record, dict):
            raise DataError(path, where, None, f"expected a JSON object, got {type(record).__name__}")
        conv = reader(record, path, where)
        conv.source = f"{path.name}:{where}"
        out.append(conv)
    if fmt is None:
        raise DataError(path, None, None, "the file holds no records")
    return RawFile(path, fmt, out, read_from=fields)


def _loads(path: Path, text: str, line: int | None = None) -> Any:
    """json.loads with its failures as a DataError at the file's line (`line`: where `text` starts)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = line if line is not None else exc.lineno
        raise DataError(path, f"line {where}", None, f"invalid JSON: {exc.msg} (column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:  # an integer past Python's digit limit, nesting too deep
        raise DataError(path, f"line {line}" if line is not None else None, None, f"invalid JSON: {exc}") from None


def _record_like(document: dict) -> bool:
    """Of a known format, or a pair under other field names."""
    return record_format(document) is not None or _pair_fields(document) is not None


def _records_in(value: Any) -> bool:
    """A non-empty list whose first item is a record."""
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict) and _record_like(value[0])


def _is_record(document: dict) -> bool:
    """One record, not a wrapper of them: of a known format, or a pair under other names that holds no list of
    records ({"customer": "Voltwise", "agent": "Acme BPO", "tickets": [...]} is a wrapper)."""
    return record_format(document) is not None or (_pair_fields(document) is not None and not any(
        _records_in(value) or _section_key(value) for value in document.values()))


def _heading(section: dict) -> str | None:
    fields = _lowered(section)
    value = next((fields[key] for key in SECTION_HEADINGS if isinstance(fields.get(key), (str, int))
                  and not isinstance(fields.get(key), bool)), None)
    return None if value is None else str(value).strip() or None


def _section_key(items: Any) -> str | None:
    """The key under which a list of FAQ-page sections ({"category": "Shipping", "questions": [...]}, ...) holds
    each section's records, None if `items` is no such list: it starts with an object with a heading field that is no
    record, and the first section holding a list of records (an empty one may come first) names the key."""
    if not isinstance(items, list) or not items or not isinstance(items[0], dict) or _heading(items[0]) is None \
            or _record_like(items[0]):
        return None
    return next((key for item in items if isinstance(item, dict) for key, value in item.items()
                 if _records_in(value)), None)


def _read_list(path: Path, items: list, place: Callable[[int], str]) -> RawFile:
    """A list's records; a list of sections (an FAQ page's headings, each holding its questions) gives its sections'
    records, labelled with the section's heading where a record names no category."""
    inner = _section_key(items)
    if inner is None:
        return _read_records(((place(i), record) for i, record in enumerate(items)), path)
    raw = _read_records(_section_records(path, items, place, inner), path)
    raw.read_from = ", ".join(filter(None, (f'sections holding their records under "{inner}"', raw.read_from)))
    return raw


def _section_records(path: Path, items: list, place: Callable[[int], str], inner: str) -> Iterator[tuple[str, Any]]:
    for i, section in enumerate(items):
        if not isinstance(section, dict) or not isinstance(section.get(inner), list):
            raise DataError(path, place(i), inner, "expected a section holding its records under "
                                                   f"'{inner}', as the others do")
        nested = [key for key, value in section.items() if key != inner and (_records_in(value) or _section_key(value))]
        if nested:  # a sub-section's records would be lost: not guessed at
            raise DataError(path, place(i), nested[0], f"records under '{nested[0]}' as well as '{inner}': nested "
                                                       "sections are not read; put their records in one list")
        heading = _heading(section)
        for j, record in enumerate(section[inner]):
            if isinstance(record, dict) and "category" not in _lowered(record):
                record = {**record, "category": heading}
            yield f"{place(i)}.{inner}[{j}]", record


def _question_like(key: str) -> bool:
    """A question, not a field name: it ends in '?' or holds a space ("Return policy")."""
    return key.rstrip().endswith("?") or " " in key.strip()


def _about_the_file(key: str, value: Any) -> bool:
    """A lookup table's note about itself beside its questions ("Last updated": "2024-01-01", "Store name": …)."""
    return not key.rstrip().endswith("?") and not isinstance(value, dict) and bool(
        header_words(key) & (CSV_NOT_TEXT | FILE_NOTE_WORDS))


def _question_map(document: dict) -> bool:
    """An FAQ kept as a lookup table, {question: answer, ...} or by section {heading: {question: answer}, ...}: no
    value a list, every key outside a section (notes about the file aside) and every key inside one question-like (a
    record's fields are names, not questions), and some question ending in '?' (so {"Order Id": …, "Ticket Text": …}
    is no FAQ)."""
    if not document or any(isinstance(value, list) for value in document.values()):
        return False
    questions = [key for key, value in document.items() if not isinstance(value, dict)
                 and not _about_the_file(key, value)] + [
        key for value in document.values() if isinstance(value, dict) for key in value]
    return bool(questions) and all(_question_like(key) for key in questions) and any(
        key.rstrip().endswith("?") for key in questions)


def _repeated_key(text: str) -> str | None:
    """The first key an object of this JSON text holds twice (json.loads keeps only its last value)."""
    repeated: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict:
        seen: set[str] = set()
        repeated.extend(key for key, _ in items if key in seen or seen.add(key))
        return dict(items)

    json.loads(text, object_pairs_hook=pairs)
    return repeated[0] if repeated else None


def _map_records(document: dict) -> Iterator[tuple[str, Any]]:
    """The lookup table's pairs, placed by their question (and section); a section's heading is its category (not
    a wrapper's key: {"faqs": {…}})."""
    for key, value in document.items():
        if _about_the_file(key, value):
            continue
        if not isinstance(value, dict):
            yield f'key "{key.strip()[:60]}"', {"question": key, "answer": value}
            continue
        category = None if header_words(key) <= WRAPPER_WORDS else key
        for question, answer in value.items():
            yield f'key "{key.strip()[:60]}" → "{question.strip()[:60]}"', {
                "question": question, "answer": answer, "category": category}


def _read_json(path: Path, text: str) -> RawFile:
    data = _loads(path, text)
    if isinstance(data, dict) and "questions" in data:
        items = data["questions"]
        if not isinstance(items, list):
            raise DataError(path, None, "questions", "expected a list of {question, answer} objects")
        raw = _read_records(((f"questions[{i}]", r) for i, r in enumerate(items)), path)
        if raw.format != "faq-json":
            raise DataError(path, "questions[0]", "question", "FAQ items need 'question' and 'answer'")
        return raw
    if isinstance(data, list):
        return _read_list(path, data, lambda i: f"item {i + 1}")
    if not isinstance(data, dict):
        raise DataError(path, None, None, f"expected a list of records at the top level, got {type(data).__name__}")
    lists = [key for key, value in data.items() if isinstance(value, list)]
    filled = [key for key in lists if data[key]]
    known = [key for key in JSON_LIST_KEYS if key in lists]
    # a known key holding records, else (the object not being one record itself) the only list holding any, else an
    # empty known one (an empty file's error)
    if not lists and _question_map(data):  # before the record test: a question may hold a field's word ("reply")
        if (question := _repeated_key(text)) is not None:  # the file's keys are its questions: none may be lost
            raise DataError(path, None, question, "this question is a key twice and JSON keeps only its last answer: "
                                                  "merge the answers or reword one")
        raw = _read_records(_map_records(data), path)
        sections = sum(isinstance(value, dict) for value in data.values())
        notes = [key for key, value in data.items() if _about_the_file(key, value)]
        raw.read_from = ", ".join(filter(None, (
            "an object mapping each question to its answer",
            sections and f"{_counted(sections, 'section', 'sections')} by heading",
            notes and "left out as notes about the file: " + ", ".join(f'"{key}"' for key in notes))))
        return raw
    one_record = _is_record(data)
    key = next((k for k in known if data[k]), None) or (filled[0] if len(filled) == 1 and not one_record else None) \
        or next(iter(known), None)
    if key is None:
        if one_record:
            raise DataError(path, None, None, "one record, not a list of them: put it in [ ] or write JSON Lines")
        found = (f"the object's lists: {', '.join(lists)} (keep one, or name it 'data')" if lists else
                 f"the object's keys: {', '.join(data) or 'none'}")
        raise DataError(path, None, None, "expected a list of records at the top level, or an object holding one "
                                          f"(such as {{\"questions\": [...]}} or {{\"faqs\": [...]}}); {found}")
    if not data[key]:
        raise DataError(path, None, key, "an empty list: the file holds no records")
    raw = _read_list(path, data[key], lambda i: f"{key}[{i}]")
    raw.read_from = ", ".join(filter(None, (f'the list under "{key}"', raw.read_from)))
    return raw


def _json_lines(text: str) -> list[tuple[int, str]]:
    """The non-blank lines of JSON Lines with their numbers. Lines end at LF only (a CR before it is JSON
    whitespace): U+2028, U+2029 and U+0085, where str.splitlines also cuts, are legal inside JSON strings."""
    return [(number, line) for number, line in enumerate(text.split("\n"), start=1) if line.strip(" \t\r")]


def _csv_place(row: int, first_line: int, last_line: int) -> str:
    """'row R' as a spreadsheet numbers it, plus the file's lines where they differ (a quoted cell can hold line
    breaks)."""
    if first_line == last_line == row:
        return f"row {row}"
    lines = f"line {first_line}" if first_line == last_line else f"lines {first_line}-{last_line}"
    return f"row {row} ({lines})"


def csv_delimiter(path: Path, text: str) -> str:
    """The cell separator: a tab in a .tsv; else the one of , ; tab | that cuts the header line into the most cells
    (a comma where they tie): Excel in German, French or Italian saves "CSV" with semicolons."""
    if path.suffix.lower() == ".tsv":
        return "\t"
    header = next((line for line in io.StringIO(text, newline=None) if line.strip()), "").rstrip("\n")
    cells = {sep: len(next(csv.reader([header], delimiter=sep), [])) for sep in CSV_SEPARATORS}
    return max(CSV_SEPARATORS, key=lambda sep: (cells[sep], sep == ","))


def _csv_rows(path: Path, text: str, delimiter: str) -> Iterator[tuple[str, list[str]]]:
    """The non-blank records of a CSV/TSV file with their places. Strict quoting: a stray quote or a quoted cell
    left open (a cut-off file) is an error, not text silently merged into the next cells."""
    reader = csv.reader(io.StringIO(text, newline=""), dialect="excel", delimiter=delimiter, strict=True)
    row = 0
    while True:
        first_line = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            where = _csv_place(row + 1, first_line, reader.line_num)
            raise DataError(path, where, None, f"malformed CSV: {exc}") from None
        row += 1
        if cells:
            yield _csv_place(row, first_line, reader.line_num), cells


def header_words(name: str) -> set[str]:
    """The words of a column name: "Customer Message", "customer_message" and "customerMessage" alike; accents
    folded ("Réponse" is "reponse")."""
    plain = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return set(re.split(r"[^a-z]+", re.sub(r"([a-z])([A-Z])", r"\1 \2", plain).lower())) - {""}


def csv_column(header: list[str], spellings: tuple[str, ...], words: set[str], others: set[str],
               taken: str | None = None) -> tuple[str | None, list[str]]:
    """The (lower-case) column holding one side of the pairs, None if no column or several could, with the columns
    that could: a name of `spellings` (first listed first), else by the words of the names (see CSV_QUESTION_WORDS);
    a name holding `others`, the other side's words, is not this side's. Equal candidates are not guessed between:
    "customer_message" or "customer_note" would train on the wrong text."""
    names = [name.strip().lower() for name in header]
    exact = next((name for name in spellings if name in names and name != taken), None)
    if exact is not None:
        return exact, [exact]
    worded = {name: header_words(original) for name, original in zip(names, header) if name != taken}
    candidates = [name for name, parts in worded.items()
                  if parts & words and not parts & (CSV_NOT_TEXT | others)]
    for narrowed in ([n for n in candidates if worded[n] & CSV_TEXT_WORDS], [n for n in candidates if n in words]):
        if len(narrowed) == 1:
            return narrowed[0], narrowed
    return (candidates[0] if len(candidates) == 1 else None), candidates


def _read_csv(path: Path, text: str) -> RawFile:
    separator = csv_delimiter(path, text)
    raw = read_table(path, *csv_table(path, text, separator), kind="csv")
    if separator not in (",", "\t"):
        raw.read_from += f", cells separated by '{separator}'"
    return raw


def read_table(path: Path, header_place: str, names: list[str], header: list[str],
                rows: Iterator[tuple[str, dict[str, str]]], kind: str) -> RawFile:
    """A table's conversations (a CSV file, an Excel sheet): a pair per row, or one message per row by thread."""
    question, asked = csv_column(header, CSV_QUESTION, CSV_QUESTION_WORDS, CSV_ANSWER_WORDS)
    answer, answered = csv_column(header, CSV_ANSWER, CSV_ANSWER_WORDS, CSV_QUESTION_WORDS, taken=question)
    # One message per row: where a side of the pairs is missing with no column that could be it (several could: that
    # ambiguity's error below), or where pairs were found too but every row's writer is a side ("Customer"/"Agent"
    # columns holding names, beside ticket id, sender and message).
    pairs = question is not None and answer is not None
    unclear = (question is None and asked) or (answer is None and answered)
    thread = None if unclear else _thread_columns(path, header_place, header, refuse_unclear=not pairs)
    for used in (*(thread or ()), question, answer, "intent", "category"):
        if used is not None and names.count(used) > 1:  # a row's dict keeps the last cell: the other would be lost
            columns = ", ".join(str(i + 1) for i, name in enumerate(names) if name == used)
            raise DataError(path, header_place, used, f"{names.count(used)} columns named '{used}' (columns "
                                                      f"{columns}): rename or remove all but one")
    if thread:
        rows = list(rows)
        if not pairs or all(_side(values[thread[1]]) for _, values in rows):
            return _read_threads(path, rows, *thread, kind=f"{kind}-threads")
    if question is None or answer is None:
        missing, candidates, side, spelling = (("instruction", asked, "customer's message", "question")
                                               if question is None else ("response", answered, "answer", "answer"))
        if candidates:
            raise DataError(path, header_place, missing,
                            f"columns {', '.join(candidates)} could each be the {side}: rename the one to read "
                            f"'{spelling}' (a column of that name is taken first)")
        raise NotATable(path, header_place, missing,
                        f"missing required column (header has: {', '.join(names)}); name the customer's column one "
                        f"of {', '.join(CSV_QUESTION)} and the answer's one of {', '.join(CSV_ANSWER)}")
    out = []
    for where, values in rows:
        conv = Conversation([{"role": "user", "content": values[question]},
                             {"role": "assistant", "content": values[answer]}],
                            intent=values.get("intent") or None, category=values.get("category") or None,
                            source=f"{path.name}:{where}")
        if values.get("flags"):
            conv.meta["flags"] = values["flags"]
        out.append(conv)
    if not out:
        raise NoRows(path, None, None, f"the {TABLES[kind]} has a header but no rows")
    return RawFile(path, kind, out, read_from=f"columns {question} (customer) and {answer} (answer)")


def _thread_columns(path: Path, header_place: str, header: list[str],
                    refuse_unclear: bool = True) -> tuple[str, str, str, str | None] | None:
    """The (lower-case) thread id, writer, text and (if any) time columns of a one-message-per-row export, None if it
    is none; two columns that could each be the thread id, the writer or the text are an error naming them (or None,
    `refuse_unclear` False, where the file reads as pairs anyway)."""
    worded = {name.strip().lower(): header_words(name) for name in header}
    threads = [name for name, words in worded.items()
               if words & THREAD_WORDS and (words <= THREAD_WORDS or words & THREAD_ID_WORDS)]
    roles = [name for name, words in worded.items() if words & ROLE_COLUMN_WORDS and name not in threads
             and not words & {"id", "email", "mail", "name", "phone"}]
    if not threads or not roles:
        return None
    texts = [name for name, words in worded.items() if name not in threads + roles
             and words & (CSV_TEXT_WORDS | {"utterance"}) and not words & CSV_NOT_TEXT]
    named = [name for name in texts if worded[name] & {"message", "text", "body", "content", "utterance"}]
    texts = named if len(texts) > 1 and len(named) == 1 else texts
    for candidates, what, hint in ((threads, "thread id", "keep one"), (roles, "writer", "keep one"),
                                   (texts, "message text", "keep one (or, for question/answer pairs in a row, name "
                                                           "the answer's column 'answer')")):
        if len(candidates) != 1:
            if candidates and refuse_unclear:
                raise DataError(path, header_place, None, f"columns {', '.join(candidates)} could each be the "
                                                           f"{what} of a one-message-per-row export: {hint}")
            return None
    times = [name for name, words in worded.items()
             if name not in threads + roles + texts and words & THREAD_TIME_WORDS]
    return threads[0], roles[0], texts[0], (times[0] if times else None)


def _side(writer: str) -> str | None:
    """"user" or "assistant" for a writer column's value (any case), None if it is neither."""
    writer = writer.lower()
    return THREAD_SIDES.get(ROLE_ALIASES.get(writer, writer))


def _counted(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


class _Message(NamedTuple):
    """One row of a one-message-per-row export."""
    place: str
    side: str
    text: str
    labels: dict
    time: str


def _in_time_order(threads: dict[str, list[_Message]]) -> bool:
    """Each thread's messages sorted by their time where every one is an ISO date-time (a help desk may export newest
    first); False, and file order kept, where one is not (a "1/2/2025" is read as neither 1 February nor 2 January)."""
    try:
        stamps = {id(m): datetime.fromisoformat(m.time) for messages in threads.values() for m in messages}
    except ValueError:
        return False
    if len({stamp.tzinfo is None for stamp in stamps.values()}) > 1:  # aware and naive times do not compare
        return False
    for messages in threads.values():
        messages.sort(key=lambda m: stamps[id(m)])
    return True


def _read_threads(path: Path, rows: Iterator[tuple[str, dict[str, str]]], thread: str, role: str, text: str,
                  time: str | None, kind: str) -> RawFile:
    """Conversations from an export with one message per row, grouped by thread (in time order where the export has
    ISO times, else in file order): a writer's messages in a row are one turn, agent messages before the customer's
    first and customer messages after the last answer are left out (nothing to learn from them) and counted, like
    empty messages (an attachment's row). A conversation's labels are those of its first message kept."""
    threads: dict[str, list[_Message]] = {}
    for where, values in rows:
        if not values[thread]:
            raise DataError(path, where, thread, "empty thread id: which conversation is this message of?")
        side = _side(values[role])
        if side is None:
            customers, store = ", ".join(CUSTOMER_WORDS), ", ".join(STORE_WORDS)
            raise DataError(path, where, role, f"'{values[role]}' is neither the customer ({customers}) nor the store "
                                               f"({store})")
        labels = {"intent": values.get("intent") or None, "category": values.get("category") or None}
        threads.setdefault(values[thread], []).append(_Message(where, side, values[text], labels,
                                                               values.get(time or "", "")))
    if not threads:
        raise NoRows(path, None, None, f"the {TABLES[kind.removesuffix('-threads')]} has a header but no rows")
    ordered = time is not None and _in_time_order(threads)
    empty, before, after, out = 0, 0, 0, []
    for thread_id, messages in threads.items():
        kept = [m for m in messages if m.text]
        empty += len(messages) - len(kept)
        turns: list[tuple[str, list[_Message]]] = []  # (side, its messages)
        for message in kept:
            if turns and turns[-1][0] == message.side:
                turns[-1][1].append(message)
            else:
                turns.append((message.side, [message]))
        if not turns:
            continue  # only empty messages: counted as such
        sides = [side for side, _ in turns]
        if "user" in sides and "assistant" in sides[sides.index("user"):]:
            first, last = sides.index("user"), len(sides) - 1 - sides[::-1].index("assistant")
            before += sum(len(group) for _, group in turns[:first])
            after += sum(len(group) for _, group in turns[last + 1:])
            turns = turns[first:last + 1]
        # (a thread without an answer to a question stays whole: `clean` leaves it out with its reason)
        opening = turns[0][1][0]
        messages_out = [{"role": side, "content": "\n\n".join(m.text for m in group)} for side, group in turns]
        out.append(Conversation(messages_out, **opening.labels,
                                source=f"{path.name}:{opening.place} ({thread} {thread_id})"))
    if not out:  # rows, but every one's text empty
        raise DataError(path, None, text, f"the {TABLES[kind.removesuffix('-threads')]} has no messages: this column "
                                          f"is empty in all {_counted(empty, 'row', 'rows')}")
    order = f"in order of {time}" if ordered else (f"in file order ({time} not ISO date-times)" if time else
                                                   "in file order")
    counts = [_counted(empty, "empty message", "empty messages"),
              _counted(before, "agent message", "agent messages") + " before the customer's first",
              _counted(after, "customer message", "customer messages") + " after the last answer"]
    return RawFile(path, kind, out, read_from=f"threads by {thread} {order}, writer in {role}, text in {text}"
                   + "".join(f"; {count} left out" for count in counts if not count.startswith("0 ")))


def utf8_text(path: Path, raw: bytes, how_to_save: str) -> str:
    """`raw` as UTF-8 text (a byte-order mark dropped), or a DataError at the line of the first byte that is not
    UTF-8 (a Windows "ANSI" export, where "é" is one byte), saying how to save the file."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise DataError(path, f"line {line}", None, f"not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the "
                                                    f"{how_to_save}") from None


def read_text(path: str | Path) -> tuple[Path, str]:
    """A data file's text, or a DataError saying why not (missing, a directory, not UTF-8, empty)."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, None, None, "file not found")
    if path.is_dir():
        raise DataError(path, None, None, "is a directory, expected a data file")
    # bytes decoded as they are: newline translation would change text inside CSV cells
    text = utf8_text(path, path.read_bytes(), "data file as UTF-8 (in Excel: Save As \"CSV UTF-8\")")
    if not text.strip():
        raise DataError(path, None, None, "the file is empty")
    return path, text


def json_records(path: Path, text: str) -> Iterator[tuple[str, Any]]:
    """JSON Lines ("line N": the text starts with an object, has several lines and its first parses alone), else
    one document: a list's items ("item N"), or the document itself ("document", also a one-line file)."""
    lines = _json_lines(text)
    if text.lstrip().startswith("{") and len(lines) > 1:
        try:
            json.loads(lines[0][1])
        except (ValueError, RecursionError):
            pass
        else:
            yield from ((f"line {number}", _loads(path, line, number)) for number, line in lines)
            return
    data = _loads(path, text)
    if isinstance(data, list):
        yield from ((f"item {i + 1}", record) for i, record in enumerate(data))
    else:
        yield "document", data


def csv_table(path: Path, text: str, delimiter: str | None = None
              ) -> tuple[str, list[str], list[str], Iterator[tuple[str, dict[str, str]]]]:
    """A CSV/TSV file's header place, its lower-case column names, the names as written ("customerMessage" has two
    words) and its rows as {column: cell text} with their places; a row with more cells than the header is an error
    at its place."""
    rows = _csv_rows(path, text, delimiter or csv_delimiter(path, text))
    header_place, header = next(rows, ("row 1", []))
    names = [name.strip().lower() for name in header]

    def values() -> Iterator[tuple[str, dict[str, str]]]:
        for where, cells in rows:
            if len(cells) > len(names):
                raise DataError(path, where, None, f"{len(cells)} cells but the header has {len(names)} columns")
            yield where, dict(zip(names, [message_text(cell) for cell in cells] + [""] * (len(names) - len(cells))))
    return header_place, names, header, values()


def _wraps_records(document: dict) -> bool:
    """Whether a one-line JSON object is a minified file holding a list of records and not one JSON Lines record:
    it is no record itself and holds its records (or sections) under a known key or one that says it holds a list
    ({"faq_list": [...]}; a record's turns, {"dialog": [{"user": …, "agent": …}, …]}, are not a file's records)."""
    if "questions" in document or _question_map(document):
        return True
    if _is_record(document):
        return False
    return any(isinstance(document.get(key), list) for key in JSON_LIST_KEYS) or any(
        (_records_in(value) or _section_key(value)) and header_words(str(key)) & WRAPPER_WORDS
        for key, value in document.items())


def read_file(path: str | Path) -> RawFile:
    """Read any supported file into conversations; the format is detected from the content."""
    path = Path(path)
    if path.suffix.lower() in (".xlsx", ".xlsm") and path.is_file():
        from ecombot.data.excel import read_xlsx

        return read_xlsx(path)
    if path.suffix.lower() in (".xls", ".xlsb", ".ods") and path.is_file():
        raise DataError(path, None, None, f"a {path.suffix.lower()} spreadsheet: save it as .xlsx or CSV")
    path, text = read_text(path)
    if path.suffix.lower() in (".csv", ".tsv"):
        return _read_csv(path, text)
    stripped = text.lstrip()
    if stripped.startswith("["):
        return _read_json(path, text)
    if stripped.startswith("{"):
        # One JSON document ({"questions": [...]}, {"faqs": [...]}) or JSON Lines: the first line decides.
        lines = _json_lines(text)
        try:
            first = json.loads(lines[0][1])
        except (ValueError, RecursionError):
            return _read_json(path, text)
        if len(lines) == 1 and isinstance(first, dict) and _wraps_records(first):
            return _read_json(path, text)
        return _read_records(((f"line {number}", _loads(path, line, number)) for number, line in lines), path)
    raise DataError(path, "line 1", None, "unrecognised format: expected JSON, JSON Lines, CSV (.csv/.tsv) or "
                                                 "Excel (.xlsx)")
