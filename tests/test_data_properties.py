"""Property tests for the readers: whatever text a writer puts in a file reads back as written, and a damaged
file is a DataError naming the file and the place, never a traceback or a quietly different dataset."""

from __future__ import annotations

import csv
import json
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ecombot.data import FORMATS, Conversation, Split, read_file, write_split
from ecombot.data.conversation import ROLE_ALIASES
from ecombot.data.readers import CUSTOMER_WORDS, STORE_WORDS, message_text
from ecombot.errors import DataError
from ecombot.serve.store import Answer, Store

FAST = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Any Unicode but lone surrogates (not encodable), with the characters that break naive readers made common:
# line breaks of every kind (U+2028/2029/0085 are legal inside JSON strings), NUL, quotes, separators, emoji.
AWKWARD = "\n\r\u2028\u2029\u0085\x00\t,;\"' {}[]\\😀é"
TEXT = st.text(st.one_of(st.characters(exclude_categories=("Cs",)), st.sampled_from(AWKWARD)), max_size=80)
LONG_TEXT = st.builds(lambda text, times: text * times, TEXT, st.integers(20, 200))  # cheap to generate
MESSAGE_TEXT = st.one_of(TEXT, TEXT, TEXT, LONG_TEXT)
# a conversation: user/assistant turns alternating, ending with the assistant
DIALOGUE = st.lists(st.tuples(MESSAGE_TEXT, MESSAGE_TEXT), min_size=1, max_size=3).map(
    lambda turns: [{"role": role, "content": text} for question_answer in turns
                   for role, text in zip(("user", "assistant"), question_answer)])
DIALOGUES = st.lists(DIALOGUE, min_size=1, max_size=4)
# a ticket export's messages are never blank (a blank one is an attachment's row: left out, counted)
THREAD_DIALOGUES = st.lists(st.lists(st.tuples(MESSAGE_TEXT.filter(message_text), MESSAGE_TEXT.filter(message_text)),
                                     min_size=1, max_size=3).map(
    lambda turns: [{"role": role, "content": text} for question_answer in turns
                   for role, text in zip(("user", "assistant"), question_answer)]), min_size=1, max_size=4)


@contextmanager
def folder():
    """A fresh folder per example (pytest's tmp_path is one per test, shared by every Hypothesis example)."""
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


def as_read(messages: list[dict[str, str]]) -> list[tuple[str, str]]:
    """What a reader should give for `messages`: roles by their canonical name, text as `message_text` keeps it."""
    return [(ROLE_ALIASES[m["role"]], message_text(m["content"])) for m in messages]


def read_back(path: Path) -> list[list[tuple[str, str]]]:
    """The file's conversations as `as_read` gives them (a role the reader does not know is left for `clean`)."""
    return [[(ROLE_ALIASES.get(m["role"], m["role"]), m["content"]) for m in c.messages]
            for c in read_file(path).conversations]


# --- how users' tools write each format --------------------------------------------------------------------

def pair(conv):
    return conv[0]["content"], conv[1]["content"]


# format -> (one record for a conversation, the turns of it the record holds, required fields)
RECORDS = {
    "faq-json": (lambda c: dict(zip(("question", "answer"), pair(c))), lambda c: c[:2], ("question", "answer")),
    "chat-jsonl": (lambda c: {"messages": c}, lambda c: c, ("messages",)),
    "sharegpt": (lambda c: {"conversations": [{"from": {"user": "human", "assistant": "gpt"}[m["role"]],
                                               "value": m["content"]} for m in c]}, lambda c: c, ("conversations",)),
    "alpaca": (lambda c: {"instruction": pair(c)[0], "input": "", "output": pair(c)[1]}, lambda c: c[:2],
               ("instruction", "output")),
    "prompt-completion": (lambda c: dict(zip(("prompt", "completion"), pair(c))) if len(c) == 2
                          else {"prompt": c[:-1], "completion": c[-1:]}, lambda c: c, ("prompt", "completion")),
}


# Each container with each record's place as a DataError names it; non-ASCII raw in some, \u-escaped in others.
def jsonl(records: list[dict]) -> tuple[str, list[str]]:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return text, [f"line {i + 1}" for i in range(len(records))]


def json_list(records: list[dict]) -> tuple[str, list[str]]:
    return json.dumps(records, indent=1), [f"item {i + 1}" for i in range(len(records))]


def faq_document(records: list[dict]) -> tuple[str, list[str]]:
    return json.dumps({"questions": records}, ensure_ascii=False), [f"questions[{i}]" for i in range(len(records))]


# (format, file name, container): every JSON shape the readers accept
JSON_FILES = [(fmt, f"data.{ext}", container) for fmt in RECORDS
              for ext, container in (("jsonl", jsonl), ("json", json_list))] + [("faq-json", "faq.json", faq_document)]


def write_json_file(directory: Path, name: str, container, records: list[dict]) -> tuple[Path, list[str]]:
    """The file and each record's place in it, as a DataError names it."""
    text, places = container(records)
    path = directory / name
    path.write_bytes(text.encode("utf-8"))
    return path, places


def write_csv(directory: Path, name: str, convs, line_end: str = "\r\n", delimiter: str | None = None) -> Path:
    path = directory / name
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, dialect="excel-tab" if name.endswith(".tsv") else "excel", lineterminator=line_end,
                            **({"delimiter": delimiter} if delimiter else {}))
        writer.writerow(["instruction", "response"])
        writer.writerows(pair(c) for c in convs)
    return path


def write_thread_csv(directory: Path, name: str, convs, writers: list[str] | None = None,
                     interleave: bool = False, noise: bool = False) -> Path:
    """A ticket export: one message per row, its thread's id and who wrote it (`writers`: the spellings to cycle
    through for each side); `interleave` writes the threads' messages in turns, as a shared inbox logs them; `noise`
    adds to each thread a greeting before the customer's first message, an empty row and a thanks after the answer."""
    greeting, empty, thanks = ({"role": "assistant", "content": "Hello!"}, {"role": "assistant", "content": " "},
                               {"role": "user", "content": "Thanks!"})
    rows = [[(f"T{i}", m) for m in ([greeting, *conv[:1], empty, *conv[1:], thanks] if noise else conv)]
            for i, conv in enumerate(convs)]
    order = ([row for turn in range(max(map(len, rows))) for conv in rows if turn < len(conv) for row in [conv[turn]]]
             if interleave else [row for conv in rows for row in conv])
    path = directory / name
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Ticket ID", "Sender", "Message"])
        for n, (thread, m) in enumerate(order):
            sides = {"user": CUSTOMER_WORDS, "assistant": STORE_WORDS}[m["role"]] if writers is None else writers
            writer.writerow([thread, sides[n % len(sides)] if writers is None else writers[m["role"] == "assistant"],
                             m["content"]])
    return path


def storable_in_excel(text: str) -> bool:
    """What a cell can hold: no control characters XML 1.0 forbids, no leading "=" (openpyxl writes a formula)."""
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

    return not ILLEGAL_CHARACTERS_RE.search(text) and not text.startswith("=") and not {"\ufffe", "\uffff"} & set(text)


def write_xlsx(directory: Path, name: str, header: list[str], rows: list[list[str]]) -> Path:
    from openpyxl import Workbook

    workbook = Workbook()
    workbook.active.append(header)
    for row in rows:
        workbook.active.append(row)
    workbook.save(directory / name)
    return directory / name


# --- everything written reads back as written ---------------------------------------------------------------

@pytest.mark.parametrize("fmt,name,container", JSON_FILES, ids=[f"{f}-{n}" for f, n, _ in JSON_FILES])
@FAST
@given(convs=DIALOGUES)
def test_json_formats_read_back_what_was_written(fmt, name, container, convs):
    record, turns, _ = RECORDS[fmt]
    with folder() as directory:
        path, _ = write_json_file(directory, name, container, [record(c) for c in convs])
        assert read_back(path) == [as_read(turns(c)) for c in convs]


@pytest.mark.parametrize("name,delimiter", [("data.csv", None), ("data.tsv", None), ("data.csv", ";"),
                                            ("data.csv", "|")])
@pytest.mark.parametrize("line_end", ["\r\n", "\n"])
@FAST
@given(convs=DIALOGUES)
def test_csv_and_tsv_read_back_what_the_csv_module_wrote(name, delimiter, line_end, convs):
    """Comma, tab, and the semicolons Excel writes in German, French or Italian settings (or pipes)."""
    if line_end == "\n":
        # the csv module quotes a cell for its own terminator's characters only: with LF endings it writes a lone CR
        # bare, which every CSV reader takes for a line end (a limit of that writer, not of ecombot's reader)
        convs = [[{**m, "content": m["content"].replace("\r", "\n")} for m in c] for c in convs]
    with folder() as directory:
        assert read_back(write_csv(directory, name, convs, line_end, delimiter)) == [as_read(c[:2]) for c in convs]


@FAST
@given(convs=THREAD_DIALOGUES, interleave=st.booleans(), upper=st.booleans(), noise=st.booleans())
def test_ticket_threads_read_back_as_the_conversations_written(convs, interleave, upper, noise):
    """One message per row, threads written one after another or interleaved, writers in any spelling and case;
    what is left out of each thread (a greeting, an empty row, a thanks) is counted, never read as a turn."""
    with folder() as directory:
        path = write_thread_csv(directory, "tickets.csv", convs, ["CUSTOMER", "AGENT"] if upper else None,
                                interleave, noise)
        raw = read_file(path)
        assert raw.format == "csv-threads" and read_back(path) == [as_read(c) for c in convs]
    n = len(convs)
    assert raw.read_from.endswith(f"; {n} empty message{'s' * (n > 1)} left out; {n} agent message{'s' * (n > 1)} "
                                  f"before the customer's first left out; {n} customer message{'s' * (n > 1)} after "
                                  "the last answer left out" if noise else "text in message")


@FAST
@given(convs=DIALOGUES, threads=st.booleans())
def test_excel_sheets_read_back_what_was_written(convs, threads):
    """The same tables as an Excel workbook, pairs per row or one message per row (XML keeps no lone CR: line ends
    read back as LF, as `message_text` gives them anyway)."""
    convs = [[{**m, "content": m["content"].replace("\r", "\n")} for m in c] for c in convs
             if all(storable_in_excel(m["content"]) and message_text(m["content"]) for m in c)]
    assume(convs)
    with folder() as directory:
        if threads:
            rows = [[f"T{i}", m["role"], m["content"]] for i, c in enumerate(convs) for m in c]
            path = write_xlsx(directory, "tickets.xlsx", ["ticket_id", "role", "message"], rows)
        else:
            path = write_xlsx(directory, "faq.xlsx", ["question", "answer"], [list(pair(c)) for c in convs])
        raw = read_file(path)
        assert raw.format == ("xlsx-threads" if threads else "xlsx")
        assert read_back(path) == [as_read(c if threads else c[:2]) for c in convs]


@FAST
@given(convs=DIALOGUES)
def test_ecombots_own_split_files_read_back(convs):
    with folder() as directory:
        write_split(Split([Conversation(c) for c in convs], [], []), directory)
        assert read_back(directory / "train.jsonl") == [as_read(c) for c in convs]


@FAST
@given(convs=DIALOGUES)
def test_store_export_reads_back_for_training(convs):
    """`ecombot conversations export` then `ecombot train`: the customers' text arrives as they typed it (the store
    keeps the customer's closing question and the server's answer, never the history a client sends)."""
    with folder() as directory:
        store = Store(f"sqlite:///{directory / 'store.db'}", redact_text=False)  # redaction has its own tests
        for conv in convs:
            reply = Answer(f"chatcmpl-{uuid.uuid4().hex}", conv[-1]["content"], "support", 1.0, 1, 1, "stop")
            store.record_answer(None, "client", "api", conv[:-1], reply)
        store.export(directory / "export.jsonl", rated_only=False)
        store.engine.dispose()
        stored = [[{**m, "content": m["content"].replace("\x00", "")} for m in c] for c in convs]  # NUL: see Store
        assert read_back(directory / "export.jsonl") == [as_read(c[-2:]) for c in stored]


# --- damaged files ------------------------------------------------------------------------------------------

# Problems of the file as a whole, where the file is the place.
WHOLE_FILE = ("the file is empty", "the file holds no records", "the CSV file has a header but no rows",
              "at the top level")


def read_damaged(path: Path):
    """read_file's conversations, or the DataError, which must name the file and a place in it."""
    try:
        return read_back(path)
    except DataError as exc:
        assert exc.path == str(path) and str(path) in str(exc)
        assert exc.where or exc.field or exc.problem.endswith(WHOLE_FILE), str(exc)
        return exc


def valid_file(draw_data, directory: Path):
    """A valid file of a random format, what it holds, and its name."""
    fmt, name, container = draw_data.draw(st.sampled_from(JSON_FILES + [("csv", "data.csv", None),
                                                                        ("csv", "data.tsv", None),
                                                                        ("csv-threads", "threads.csv", None)]))
    if fmt == "csv-threads":
        convs = draw_data.draw(THREAD_DIALOGUES)
        return write_thread_csv(directory, name, convs), [as_read(c) for c in convs], name
    convs = draw_data.draw(DIALOGUES)
    if container is None:
        return write_csv(directory, name, convs), [as_read(c[:2]) for c in convs], name
    record, turns, _ = RECORDS[fmt]
    path, _ = write_json_file(directory, name, container, [record(c) for c in convs])
    return path, [as_read(turns(c)) for c in convs], name


@FAST
@given(data=st.data())
def test_a_truncated_file_is_an_error_or_loses_only_what_no_reader_could_notice(data):
    with folder() as directory:
        path, expected, name = valid_file(data, directory)
        content = path.read_bytes()
        cut = data.draw(st.integers(0, len(content) - 1))
        path.write_bytes(content[:cut])
        result = read_damaged(path)
    if isinstance(result, DataError):
        return
    if name.endswith(".json"):  # a cut JSON document never parses unless only trailing whitespace went
        assert result == expected
    elif name.endswith(".jsonl"):  # cut at a line end: whole records lost, indistinguishable from a shorter file
        assert result == expected[:len(result)]
    else:  # CSV: an unquoted last cell cut short is indistinguishable from a shorter cell; all before it are intact
        assert len(result) <= len(expected) and result[:-1] == expected[:len(result) - 1]


@FAST
@given(data=st.data())
def test_a_changed_byte_is_an_error_naming_the_place_or_reads_cleanly(data):
    with folder() as directory:
        path, _, _ = valid_file(data, directory)
        content = bytearray(path.read_bytes())
        at = data.draw(st.integers(0, len(content) - 1))
        content[at] = data.draw(st.integers(0, 255).filter(lambda b: b != content[at]))
        path.write_bytes(bytes(content))
        read_damaged(path)  # a changed letter inside a message reads as that letter: no checksum to tell


WRONG_TYPES = {"list": st.sampled_from([7, True, {"role": "user"}]),  # (a string completion is a valid form)
               "text": st.sampled_from([True, False, 1.5, float("nan"), ["a"], {"text": "a"}])}


@pytest.mark.parametrize("fmt,name,container", JSON_FILES, ids=[f"{f}-{n}" for f, n, _ in JSON_FILES])
@FAST
@given(data=st.data(), convs=DIALOGUES)
def test_a_missing_or_mistyped_field_is_an_error_at_its_record(fmt, name, container, data, convs):
    record, _, required = RECORDS[fmt]
    records = [record(c) for c in convs]
    index = data.draw(st.integers(0, len(records) - 1))
    field = data.draw(st.sampled_from(required))
    kind = "list" if isinstance(records[index][field], list) else "text"
    if data.draw(st.booleans()):
        del records[index][field]
    else:
        records[index][field] = data.draw(WRONG_TYPES[kind])
    with folder() as directory:
        path, places = write_json_file(directory, name, container, records)
        with pytest.raises(DataError) as exc:
            read_file(path)
    assert exc.value.where == places[index]
    # the field, or (first record, field gone) no known format to read the record as
    assert (exc.value.field or "").startswith(field) or "unrecognised record" in exc.value.problem


@given(convs=DIALOGUES)
@FAST
def test_csv_without_a_required_column_is_an_error_at_the_header(convs):
    with folder() as directory:
        path = write_csv(directory, "data.csv", convs)
        path.write_bytes(path.read_bytes().replace(b"instruction", b"notes", 1))
        with pytest.raises(DataError) as exc:
            read_file(path)
    assert (exc.value.where, exc.value.field) == ("row 1", "instruction")


def test_property_tests_cover_every_format():
    assert {fmt for fmt, _, _ in JSON_FILES} | {"csv", "csv-threads", "xlsx", "xlsx-threads"} == set(FORMATS)
