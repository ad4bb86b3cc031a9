"""Store files as passages: documents (Markdown, plain text, HTML) cut by heading and paragraph, data files (every
format `data.read_file` reads) as one passage per question/answer pair.

A passage is what the search ranks and what the prompt quotes, so it should hold one topic: consecutive short
paragraphs or list items under one heading are merged up to PASSAGE_CHARS (a bullet list of one-line rules reads as
one passage), a long section is cut at paragraph/list-item boundaries, never inside a sentence. Every passage keeps
its heading path and first line, so an answer can cite where its knowledge came from."""

from __future__ import annotations

import re
from pathlib import Path

from ecombot.data import Conversation, read_file
from ecombot.data.conversation import ROLE_ALIASES
from ecombot.data.readers import utf8_text
from ecombot.errors import DataError
from ecombot.knowledge.passage import Passage

PASSAGE_CHARS = 500
DOCUMENT_SUFFIXES = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".html": "html", ".htm": "html"}
HEADING_SEPARATOR = " > "

Unit = tuple[str, int, str]  # (heading path, first line, text): one paragraph, list item or table row


def read_passages(path: Path, source: str | None = None) -> list[Passage]:
    """The passages of one file, named `source` (default: the file name). Documents are read by extension, data
    files by content; a file that yields nothing, or cannot be read, is a DataError naming it."""
    path = Path(path)
    source = source or path.name
    kind = DOCUMENT_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        return _qa_passages(path, source)
    text = _read_text(path)
    units = {"markdown": _markdown_units, "text": _text_units, "html": _html_units}[kind](text)
    passages = merge_units(units, source)
    if not passages:
        raise DataError(path, None, None, "no text to index (the document is empty)")
    return passages


def merge_units(units: list[Unit], source: str, limit: int = PASSAGE_CHARS) -> list[Passage]:
    """Consecutive units under the same heading joined (one per line) while the passage stays within `limit`."""
    passages: list[Passage] = []
    heading, line, parts = "", 0, []
    for unit_heading, unit_line, text in units:
        if parts and unit_heading == heading and sum(map(len, parts)) + len(parts) + len(text) <= limit:
            parts.append(text)
            continue
        if parts:
            passages.append(Passage(source, heading, line, "\n".join(parts)))
        heading, line, parts = unit_heading, unit_line, [text]
    if parts:
        passages.append(Passage(source, heading, line, "\n".join(parts)))
    return passages


def _read_text(path: Path) -> str:
    if not path.exists():
        raise DataError(path, None, None, "file not found")
    if path.is_dir():
        raise DataError(path, None, None, "is a directory, expected a document")
    return utf8_text(path, path.read_bytes(), "document as UTF-8").replace("\r\n", "\n").replace("\r", "\n")


def _clean(text: str) -> str:
    return re.sub(r"[ \t]+", " ", text).strip()


def _path(stack: list[tuple[int, str]]) -> str:
    return HEADING_SEPARATOR.join(title for _, title in stack)


def _push(stack: list[tuple[int, str]], level: int, title: str) -> None:
    """A heading of `level` closes every open heading at that level or deeper."""
    while stack and stack[-1][0] >= level:
        stack.pop()
    stack.append((level, title))


def _inline(token) -> str:
    """An inline token's visible text: emphasis and link markup dropped, line breaks inside a paragraph as spaces."""
    parts = []
    for child in token.children or []:
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            parts.append(" ")
    return _clean("".join(parts))


def _markdown_units(text: str) -> list[Unit]:
    """Paragraphs, top-level list items (with everything nested in them), table rows and code blocks."""
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    units: list[Unit] = []
    stack: list[tuple[int, str]] = []
    item: list[str] | None = None  # the text of the open top-level list item
    item_line, item_depth, row, row_line = 0, 0, None, 0
    for i, token in enumerate(tokens):
        if token.type == "heading_open":
            _push(stack, int(token.tag[1]), _inline(tokens[i + 1]))
        elif token.type == "list_item_open":
            if item is None:
                item, item_line = [], token.map[0] + 1
            item_depth += 1
        elif token.type == "list_item_close":
            item_depth -= 1
            if item_depth == 0 and item is not None:
                if any(item):
                    units.append((_path(stack), item_line, "- " + " ".join(p for p in item if p)))
                item = None
        elif token.type == "tr_open":
            row, row_line = [], token.map[0] + 1
        elif token.type == "tr_close" and row is not None:
            if any(row):
                units.append((_path(stack), row_line, " | ".join(row)))
            row = None
        elif token.type == "inline" and tokens[i - 1].type != "heading_open":
            content = _inline(token)
            if row is not None:
                row.append(content)
            elif item is not None:
                item.append(content)
            elif content:
                units.append((_path(stack), tokens[i - 1].map[0] + 1, content))
        elif token.type in ("fence", "code_block") and token.content.strip():
            if item is not None:
                item.append(token.content.strip())
            else:
                units.append((_path(stack), token.map[0] + 1, token.content.strip()))
    return units


def _text_units(text: str) -> list[Unit]:
    """Paragraphs separated by blank lines. A one-line paragraph that looks like a title (short, no final
    punctuation), or a line underlined with === or ---, becomes the heading of the paragraphs after it."""
    units: list[Unit] = []
    heading = ""
    for match in re.finditer(r"[^\n]+(?:\n[ \t]*\S[^\n]*)*", text):
        lines = [line.strip() for line in match.group().split("\n")]
        line = text.count("\n", 0, match.start()) + 1
        if len(lines) == 2 and re.fullmatch(r"=+|-+", lines[1]):
            heading = lines[0]
        elif len(lines) == 1 and len(lines[0]) <= 60 and not re.search(r"[.:;,!?]$", lines[0]):
            heading = lines[0]
        else:
            units.append((heading, line, _clean(" ".join(lines))))
    return units


TEXT_TAGS = ("p", "li", "td", "th", "dd", "dt", "pre", "blockquote")
SKIPPED_TAGS = ("script", "style", "nav", "footer", "head", "noscript", "template")


def _html_units(text: str) -> list[Unit]:
    """h1..h6 build the heading path; the outermost p/li/td/dd/... elements are the paragraphs (an li holding a p is
    one unit, not two)."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(text, "html.parser")
    for element in soup.find_all(SKIPPED_TAGS):
        element.decompose()
    units: list[Unit] = []
    stack: list[tuple[int, str]] = []
    for element in soup.find_all(["h1", "h2", "h3", "h4", "h5", "h6", *TEXT_TAGS]):
        content = _clean(" ".join(element.get_text(" ").split()))
        if element.name[0] == "h" and element.name[1:].isdigit():
            _push(stack, int(element.name[1]), content)
        elif content and element.find_parent(TEXT_TAGS) is None:
            prefix = "- " if element.name == "li" else ""
            units.append((_path(stack), element.sourceline or 1, prefix + content))
    return units


def _line(where: str) -> int:
    """The line a data reader's place names ("line 7", "row 3 (lines 4-5)"), else its row or item number."""
    match = re.search(r"lines? (\d+)", where) or re.search(r"(?:row|item) (\d+)", where)
    if match:
        return int(match.group(1))
    index = re.search(r"\[(\d+)\]", where)
    return int(index.group(1)) + 1 if index else 1


def _qa_passages(path: Path, source: str) -> list[Passage]:
    passages = qa_passages(read_file(path).conversations, source)
    if not passages:
        raise DataError(path, None, None, "no question/answer pairs to index")
    return passages


def qa_passages(conversations: list[Conversation], source: str) -> list[Passage]:
    """Each customer turn and the answer after it, as one Q&A passage (`question` = the turn, `text` = the
    answer, `heading` = the intent). A turn without an answer, or an empty one, is an error at its place: it would
    be a passage that cannot ground anything."""
    passages = []
    for conversation in conversations:
        file, _, where = conversation.source.rpartition(":")
        turns = [{"role": ROLE_ALIASES.get(m["role"], m["role"]), "content": m["content"]}
                 for m in conversation.messages]
        turns = [m for m in turns if m["role"] != "system"]
        for position, message in enumerate(turns):
            if message["role"] != "user":
                continue
            answer = turns[position + 1] if position + 1 < len(turns) else None
            if answer is None or answer["role"] != "assistant" or not answer["content"] or not message["content"]:
                raise DataError(file or source, where, "messages", "every customer turn needs a non-empty answer "
                                "after it to be a knowledge passage")
            passages.append(Passage(source, conversation.intent or "", _line(where), answer["content"],
                                    question=message["content"]))
    return passages
