import json
import re
from collections import Counter

import pytest

from ecombot.data import (builtin_path, clean, leaked_questions, load_conversations, normalise_text, prepare,
                          read_file, split_conversations, write_split)
from ecombot.data.builtin import policy_text
from ecombot.errors import DataError


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(rows):
    return "".join(json.dumps(r) + "\n" for r in rows)


# --- readers: one test per format, detected from content -------------------------------------------------

def test_faq_json(tmp_path):
    path = write(tmp_path, "faq.json", json.dumps({"questions": [
        {"question": "Do you ship to Canada?", "answer": "Yes, in 5-10 days."},
        {"question": "Can I pay with PayPal?", "answer": "Yes.", "intent": "payment"}]}))
    raw = read_file(path)
    assert raw.format == "faq-json"
    assert [c.messages for c in raw.conversations][0] == [
        {"role": "user", "content": "Do you ship to Canada?"}, {"role": "assistant", "content": "Yes, in 5-10 days."}]
    assert raw.conversations[1].intent == "payment"
    assert raw.conversations[1].source == "faq.json:questions[1]"


@pytest.mark.parametrize("indent", [2, None])  # pretty-printed, and on one line (not JSON Lines)
def test_faq_json_under_another_key(tmp_path, indent):
    """A shop's export wraps its FAQ in an object ({"store": ..., "faqs": [...]}): the records are read from the
    object's list, each placed by its key and index, and the summary says where they came from."""
    faqs = [{"category": "Delivery", "question": "Do you ship to Ireland?", "answer": "Yes:\n- Standard 3-7 days"},
            {"category": "Returns", "question": "How long do I have?", "answer": "30 days."}]
    raw = read_file(write(tmp_path, "faq.json", json.dumps({"store": "Voltwise", "faqs": faqs}, indent=indent)))
    assert raw.format == "faq-json" and raw.read_from == 'the list under "faqs"'
    assert [c.answer for c in raw.conversations] == ["Yes:\n- Standard 3-7 days", "30 days."]
    assert [c.source for c in raw.conversations] == ["faq.json:faqs[0]", "faq.json:faqs[1]"]
    assert raw.conversations[1].category == "Returns"
    with pytest.raises(DataError, match=r"faq.json:faqs\[1\]: field 'answer': missing required field"):
        read_file(write(tmp_path, "faq.json", json.dumps({"faqs": [faqs[0], {"question": "Where?"}]})))
    # a key of the shop's own naming, minified on one line: the list's items are records, so it is no JSON Lines line
    raw = read_file(write(tmp_path, "shop.json", json.dumps({"store": "Voltwise", "faq_list": faqs}, indent=indent)))
    assert raw.read_from == 'the list under "faq_list"' and len(raw.conversations) == 2


@pytest.mark.parametrize("question,answer", [("Question", "Answer"), ("q", "a"), ("prompt", "response"),
                                             ("customer_message", "agent_reply")])
def test_json_pairs_under_other_field_names(tmp_path, question, answer):
    """An export's own field names ({"Question": …, "Answer": …}) are found as a CSV file's column names are, in a
    JSON list and in JSON Lines, labels in any case; a later record without the field is an error at its place."""
    rows = [{question: "Do you ship to Ireland?", answer: "Yes:\n- 3-7 days", "Category": "Delivery"},
            {question: "How long do I have?", answer: "30 days."}]
    for name, text in (("faq.json", json.dumps(rows, indent=1)), ("faq.jsonl", jsonl(rows))):
        raw = read_file(write(tmp_path, name, text))
        assert raw.format == "faq-json"
        assert raw.read_from == f"fields {question.lower()} (customer) and {answer.lower()} (answer)"
        assert [(c.question, c.answer, c.category) for c in raw.conversations] == [
            ("Do you ship to Ireland?", "Yes:\n- 3-7 days", "Delivery"), ("How long do I have?", "30 days.", None)]
    with pytest.raises(DataError, match=rf"faq.jsonl:line 2: field '{answer.lower()}': missing required field"):
        read_file(write(tmp_path, "faq.jsonl", jsonl([rows[0], {question: "Where?"}])))


def test_json_fields_that_could_each_be_the_question_are_not_guessed_between(tmp_path):
    rows = [{"customer_message": "Where is it?", "customer_note": "VIP", "reply": "On its way."}]
    with pytest.raises(DataError, match=r"item 1: unrecognised record.*found keys: customer_message, customer_note"):
        read_file(write(tmp_path, "a.json", json.dumps(rows)))


@pytest.mark.parametrize("indent", [2, None])
def test_faq_page_sections_give_their_questions_with_the_heading_as_category(tmp_path, indent):
    """An FAQ page exported by heading ({"faq": [{"category": "Shipping", "questions": [...]}, ...]}): every
    section's questions are read, placed inside their section, labelled with its heading unless they name one."""
    page = {"store": "Voltwise", "faq": [
        {"category": "Shipping", "questions": [{"question": "Do you ship to Ireland?", "answer": "Yes."},
                                               {"question": "How fast?", "answer": "3-7 days.", "category": "Speed"}]},
        {"category": "Returns", "questions": [{"question": "How long do I have?", "answer": "30 days."}]}]}
    raw = read_file(write(tmp_path, "page.json", json.dumps(page, indent=indent)))
    assert raw.read_from == 'the list under "faq", sections holding their records under "questions"'
    assert [(c.source, c.category) for c in raw.conversations] == [
        ("page.json:faq[0].questions[0]", "Shipping"), ("page.json:faq[0].questions[1]", "Speed"),
        ("page.json:faq[1].questions[0]", "Returns")]
    sections = [{"Title": "Orders", "Items": [{"Q": "Where is it?", "A": "Tracked."}]}]
    raw = read_file(write(tmp_path, "top.json", json.dumps(sections)))
    assert [(c.question, c.category) for c in raw.conversations] == [("Where is it?", "Orders")]
    page["faq"].append({"category": "Payment"})
    with pytest.raises(DataError, match=r"page.json:faq\[2\]: field 'questions': expected a section holding its "
                                        r"records under 'questions', as the others do"):
        read_file(write(tmp_path, "page.json", json.dumps(page, indent=indent)))


@pytest.mark.parametrize("indent", [None, 2])
def test_faq_kept_as_a_lookup_table_of_question_to_answer(tmp_path, indent):
    """{"How do I return?": "Within 30 days.", ...}, or by section {"Shipping": {question: answer}}: each entry a pair,
    placed by its question, a section's heading its category; read the same minified or indented."""
    table = {"How do I return an item?": "Within 30 days.", "Shipping times": "3-5 days.",
             "Payments": {"Do you take PayPal?": "Yes.", "Can I pay later?": "With Klarna."}}
    raw = read_file(write(tmp_path, "t.json", json.dumps(table, indent=indent)))
    assert raw.format == "faq-json" and raw.read_from == "an object mapping each question to its answer, 1 section by heading"
    assert [(c.source, c.question, c.answer, c.category) for c in raw.conversations] == [
        ('t.json:key "How do I return an item?"', "How do I return an item?", "Within 30 days.", None),
        ('t.json:key "Shipping times"', "Shipping times", "3-5 days.", None),
        ('t.json:key "Payments" → "Do you take PayPal?"', "Do you take PayPal?", "Yes.", "Payments"),
        ('t.json:key "Payments" → "Can I pay later?"', "Can I pay later?", "With Klarna.", "Payments")]
    with pytest.raises(DataError, match=r'b.json:key "Where is it\?": field \'answer\': expected text, got int'):
        read_file(write(tmp_path, "b.json", json.dumps({"How do I return?": "x", "Where is it?": 5}, indent=indent)))
    # questions holding a pair field's words are still questions, not one record's fields
    words = {"How do I contact customer service?": "Use chat.", "How long until I get a reply?": "1 day",
             "Do you ship abroad?": "Yes"}
    raw = read_file(write(tmp_path, "w.json", json.dumps(words, indent=indent)))
    assert [(c.question, c.answer) for c in raw.conversations] == list(words.items())
    # a note about the file is left out and said; a wrapper's key is no category; a question twice is refused
    noted = {"Last updated": "2024-01-01", "faqs": {"Do you ship?": "Yes.", "Can I return?": "30 days."}}
    raw = read_file(write(tmp_path, "n.json", json.dumps(noted, indent=indent)))
    assert [(c.question, c.category) for c in raw.conversations] == [("Do you ship?", None), ("Can I return?", None)]
    assert raw.read_from.endswith('left out as notes about the file: "Last updated"')
    twice = '{"Do you ship?": "Yes", "Do you ship?": "No, EU only", "Can I return?": "30 days"}'
    with pytest.raises(DataError, match=r"d.json: field 'Do you ship\?': this question is a key twice"):
        read_file(write(tmp_path, "d.json", twice if indent is None else twice.replace('", "', '",\n  "')))
    # field names are no questions: one record with unknown fields is still refused, not read as a pair per field
    with pytest.raises(DataError, match=r"r.json:.*(unrecognised record|the object.s keys: Order Id, Ticket Text)"):
        read_file(write(tmp_path, "r.json", json.dumps({"Order Id": "1", "Ticket Text": "Late"}, indent=indent)))


def test_json_object_without_one_clear_list_names_what_it_holds(tmp_path):
    with pytest.raises(DataError, match=r"a.json: .*the object's lists: current, archive \(keep one, or name it "
                                        r"'data'\)"):
        read_file(write(tmp_path, "a.json", json.dumps({"current": [], "archive": []}, indent=1)))
    with pytest.raises(DataError, match=r"b.json: .*the object's keys: store, updated"):
        read_file(write(tmp_path, "b.json", json.dumps({"store": "V", "updated": "2026"}, indent=1)))
    # one record is not a wrapper of its own lists
    with pytest.raises(DataError, match=r"d.json: one record, not a list of them: put it in \[ \] or write JSON Lines"):
        read_file(write(tmp_path, "d.json", json.dumps({"question": "q", "answer": "a", "tags": ["x"]}, indent=1)))
    # an empty known list does not hide the records
    raw = read_file(write(tmp_path, "e.json", json.dumps({"data": [], "faqs": [{"question": "q", "answer": "a"}]})))
    assert raw.read_from == 'the list under "faqs"'
    # a known key wins over other lists
    wrapped = {"tags": ["x"], "data": [{"prompt": "a", "completion": "b"}]}
    raw = read_file(write(tmp_path, "c.json", json.dumps(wrapped)))
    assert raw.format == "prompt-completion" and raw.conversations[0].source == "c.json:data[0]"


TICKETS = """Ticket ID,Sender,Message,Created At
T1,agent,"Hi! How can I help?",2025-01-01
T1,customer,"Where is my order VW-1?",2025-01-01
T1,customer,"It's been a week.",2025-01-01
T1,agent,"It left today.
Track it at /orders.",2025-01-02
T1,customer,Thanks!,2025-01-02
T2,Customer,"Can I return socks?",2025-01-03
T3,customer,"Do you ship to Ireland?",2025-01-03
T2,Agent,,2025-01-03
T2,Agent,"Yes, within 30 days.",2025-01-03
T3,Support,"Yes, 3-7 days.",2025-01-04
T3,customer,"And to Malta?",2025-01-04
T3,support,"Not yet.",2025-01-04
T4,customer,"Hello?",2025-01-05
"""


def test_ticket_export_with_one_message_per_row_reads_as_threads(tmp_path):
    """A help desk's export (ticket id, sender, message per row): each ticket is one conversation in file order, a
    writer's messages in a row one turn; the greeting before the customer's first message, the thanks after the last
    answer and an empty (attachment) row are left out and counted; a ticket never answered is left to `clean`."""
    raw = read_file(write(tmp_path, "tickets.csv", TICKETS))
    assert raw.format == "csv-threads"
    assert raw.read_from == ("threads by ticket id in order of created at, writer in sender, text in message; 1 empty "
                             "message left out; 1 agent message before the customer's first left out; 1 customer "
                             "message after the last answer left out")
    assert [c.messages for c in raw.conversations[:3]] == [
        [{"role": "user", "content": "Where is my order VW-1?\n\nIt's been a week."},
         {"role": "assistant", "content": "It left today.\nTrack it at /orders."}],
        [{"role": "user", "content": "Can I return socks?"}, {"role": "assistant", "content": "Yes, within 30 days."}],
        [{"role": "user", "content": "Do you ship to Ireland?"}, {"role": "assistant", "content": "Yes, 3-7 days."},
         {"role": "user", "content": "And to Malta?"}, {"role": "assistant", "content": "Not yet."}]]
    assert raw.conversations[1].source == "tickets.csv:row 7 (line 8) (ticket id T2)"
    kept, report = clean(raw)
    assert len(kept) == 3 and report.dropped == {"does not end with an assistant turn": 1}
    unanswered = report.dropped_examples["does not end with an assistant turn"]
    assert unanswered == ["tickets.csv:row 14 (line 15) (ticket id T4)"]


def test_ticket_export_errors_name_the_row_and_column(tmp_path):
    with pytest.raises(DataError, match=r"tickets.csv:row 4: field 'sender': 'Dana' is neither the "
                                        r"customer \(user, customer, .*\) nor the store \(assistant, agent, "):
        read_file(write(tmp_path, "tickets.csv", TICKETS.replace("T1,customer,\"It's", "T1,Dana,\"It's")))
    with pytest.raises(DataError, match=r"tickets.csv:row 3: field 'ticket id': empty thread id"):
        read_file(write(tmp_path, "tickets.csv", TICKETS.replace("T1,customer,\"Where", ",customer,\"Where")))
    with pytest.raises(DataError, match=r"row 1: columns message, body could each be the message text of a "
                                        r"one-message-per-row export: keep one"):
        read_file(write(tmp_path, "two.csv", "Ticket ID,Sender,Message,Body\nT1,customer,a,b\n"))
    # a chat log's "utterance" column is the text of its threads, not a question column missing its answer
    raw = read_file(write(tmp_path, "chat.csv", "conversation_id,speaker,utterance\n1,user,Hi?\n1,bot,Hello.\n"))
    assert raw.format == "csv-threads" and raw.conversations[0].answer == "Hello."


def test_ticket_threads_in_time_order_and_labelled_by_their_first_kept_message(tmp_path):
    """A help desk that exports newest first: ISO times put each thread back in order (other times leave file order,
    and say so); the labels are the first kept message's, not the dropped greeting's; a thread of empty rows is no
    conversation, only counted."""
    newest_first = ("ticket_id,created_at,author_type,body,intent\n"
                    "T1,2025-01-02T10:05:00,agent,\"No, not Ireland yet.\",refund\n"
                    "T1,2025-01-02T10:04:00,customer,Do you ship to Ireland?,refund\n"
                    "T1,2025-01-02T10:01:00,agent,\"Yes, 3-7 days.\",refund\n"
                    "T1,2025-01-02T10:00:00,customer,Do you ship to Malta?,refund\n"
                    "T1,2025-01-02T09:59:00,agent,Hi there!,greeting\n"
                    "T2,2025-01-03T10:00:00,customer,,\n")
    raw = read_file(write(tmp_path, "desk.csv", newest_first))
    [conv] = raw.conversations
    assert [m["content"] for m in conv.messages] == ["Do you ship to Malta?", "Yes, 3-7 days.",
                                                     "Do you ship to Ireland?", "No, not Ireland yet."]
    assert conv.intent == "refund" and conv.source == "desk.csv:row 5 (ticket_id T1)"
    assert raw.read_from == ("threads by ticket_id in order of created_at, writer in author_type, text in body; "
                             "1 empty message left out; 1 agent message before the customer's first left out")
    local = read_file(write(tmp_path, "local.csv", newest_first.replace("2025-01-02T", "1/2/2025 ")))
    assert local.read_from.startswith("threads by ticket_id in file order (created_at not ISO date-times)")
    assert local.conversations[0].messages[0]["content"] == "Do you ship to Ireland?"


@pytest.mark.parametrize("header,problem", [
    ("Ticket Number,Conversation ID,Sender,Message", r"columns ticket number, conversation id could each be the thread "
                                                     r"id of a one-message-per-row export: keep one"),
    # a pair file whose question columns are unclear is that error, not a thread export's
    ("Ticket ID,From,Customer Message,Customer Note,Agent Reply",
     r"field 'instruction': columns customer message, customer note could each be the customer's message"),
    ("Ticket ID,Sender,Question,Comment", r"columns question, comment could each be the message text .*name the "
                                          r"answer's column 'answer'")])
def test_a_one_message_per_row_export_is_not_guessed_at(tmp_path, header, problem):
    with pytest.raises(DataError, match=r"x.csv:row 1: " + problem):
        read_file(write(tmp_path, "x.csv", header + "\n" + ",".join(["1"] * header.count(",")) + ",a\n"))


def test_pairs_or_threads_decided_by_the_writer_column(tmp_path):
    """A thread export with "Customer"/"Agent" columns of names is threads (every sender is a side), not pairs of
    names; a pair export with a "From" column of addresses stays pairs."""
    threads = ("Ticket ID,Sender,Message,Customer,Agent\n"
               "T1,customer,Where is it?,Dana,Mike\nT1,agent,Shipped.,Dana,Mike\n")
    raw = read_file(write(tmp_path, "threads.csv", threads))
    assert raw.format == "csv-threads" and raw.conversations[0].answer == "Shipped."
    pairs = "Ticket ID,From,Customer Message,Agent Reply\nT1,dana@example.com,Where is it?,Shipped.\n"
    raw = read_file(write(tmp_path, "pairs.csv", pairs))
    assert raw.format == "csv" and raw.conversations[0].answer == "Shipped."


def test_an_faq_split_into_sheets_by_topic_reads_every_sheet(tmp_path):
    """An FAQ kept as one sheet per topic: every sheet of conversations is read (before, only the first was, and the
    rest were named), each sheet's name the category of rows without one; a cover page, a notes sheet (an error
    value in it is no error: it is not read) and a sheet of another layout are named, not read."""
    from openpyxl import Workbook

    workbook = Workbook()
    cover = workbook.active
    cover.title = "Cover"
    for row in (["Voltwise customer FAQ"], ["Updated weekly by the support team"]):
        cover.append(row)
    shipping = workbook.create_sheet("Shipping")
    for row in (["Question", "Answer"], ["Do you ship to Ireland?", "Yes, 3-7 days."],
                ["Is shipping free?", "Over $50."]):
        shipping.append(row)
    returns = workbook.create_sheet("Returns")
    for row in (["Question", "Answer", "Category"], ["How long do I have?", "30 days.", ""],
                ["When is my refund paid?", "Within 5 days.", "Refunds"]):
        returns.append(row)
    notes = workbook.create_sheet("Notes")
    for row in (["Owner", "Check"], ["Dana", "#N/A"]):
        notes.append(row)
    tickets = workbook.create_sheet("Tickets")
    for row in (["Ticket", "From", "Body"], ["T1", "customer", "Hi"], ["T1", "agent", "Hello"]):
        tickets.append(row)
    workbook.save(tmp_path / "topics.xlsx")
    raw = read_file(tmp_path / "topics.xlsx")
    assert raw.format == "xlsx"
    assert [(c.question, c.category, c.source) for c in raw.conversations] == [
        ("Do you ship to Ireland?", "Shipping", "topics.xlsx:sheet 'Shipping' row 2"),
        ("Is shipping free?", "Shipping", "topics.xlsx:sheet 'Shipping' row 3"),
        ("How long do I have?", "Returns", "topics.xlsx:sheet 'Returns' row 2"),
        ("When is my refund paid?", "Refunds", "topics.xlsx:sheet 'Returns' row 3")]
    assert raw.read_from == ("sheet 'Shipping', columns question (customer) and answer (answer); sheet 'Returns', "
                             "columns question (customer) and answer (answer) (not read: 'Cover', 'Notes', "
                             "'Tickets' (another layout))")

    returns["B2"] = "#N/A"  # in a sheet of conversations, a cell that cannot be read is an error
    workbook.save(tmp_path / "broken.xlsx")
    with pytest.raises(DataError, match=r"broken.xlsx:sheet 'Returns' row 2: field 'column 2': an Excel error value"):
        read_file(tmp_path / "broken.xlsx")
    for sheet in (shipping, returns, tickets):
        workbook.remove(sheet)
    workbook.save(tmp_path / "notes.xlsx")
    with pytest.raises(DataError, match=r"notes.xlsx: no sheet has question and answer columns \(sheets: 'Cover', "
                                        r"'Notes'\); sheet 'Cover': missing required column \(header has: voltwise"):
        read_file(tmp_path / "notes.xlsx")


def test_an_excel_workbook_reads_as_its_csv_export_would(tmp_path):
    """A shop's FAQ kept in Excel: the first sheet holding anything (a title row above the header is fine), cells
    as a CSV export writes them (line breaks kept, 30.0 as "30", dates in ISO form), places as Excel numbers rows;
    another sheet without question and answer columns is named, not read; one message per row reads as threads, in
    time order."""
    from datetime import datetime

    from openpyxl import Workbook

    workbook = Workbook()
    workbook.active.title = "Notes"  # an empty first sheet is skipped
    faq = workbook.create_sheet("FAQ")
    for row in (["Voltwise FAQ export"], [], ["Category", "Question", "Answer"],
                ["Returns", "How long do I have?", 30.0], ["Delivery", "Do you ship to Ireland?", "Yes:\n- 3-7 days"]):
        faq.append(row)
    workbook.create_sheet("Archive").append(["old", "stuff"])
    workbook.save(tmp_path / "faq.xlsx")
    raw = read_file(tmp_path / "faq.xlsx")
    assert raw.format == "xlsx"
    assert raw.read_from == ("sheet 'FAQ', header on row 3, columns question (customer) and answer (answer) "
                             "(not read: 'Archive')")
    assert [(c.question, c.answer, c.category, c.source) for c in raw.conversations] == [
        ("How long do I have?", "30", "Returns", "faq.xlsx:sheet 'FAQ' row 4"),
        ("Do you ship to Ireland?", "Yes:\n- 3-7 days", "Delivery", "faq.xlsx:sheet 'FAQ' row 5")]

    faq["E5"] = "a stray note"
    workbook.save(tmp_path / "stray.xlsx")
    with pytest.raises(DataError, match=r"stray.xlsx:sheet 'FAQ' row 5: a value in column 5 but the header has 3"):
        read_file(tmp_path / "stray.xlsx")

    tickets = Workbook()
    for row in (["Ticket", "Sent", "From", "Body"], ["T1", datetime(2025, 1, 2, 10, 5), "agent", "Yes, 3-7 days."],
                ["T1", datetime(2025, 1, 2, 10, 0), "customer", "Do you ship to Ireland?"]):
        tickets.active.append(row)
    tickets.save(tmp_path / "tickets.xlsx")
    raw = read_file(tmp_path / "tickets.xlsx")
    assert raw.format == "xlsx-threads"
    assert raw.read_from.startswith("sheet 'Sheet', threads by ticket in order of sent")
    assert [m["content"] for m in raw.conversations[0].messages] == ["Do you ship to Ireland?", "Yes, 3-7 days."]


def test_a_sheet_with_a_header_and_no_rows_beside_filled_ones_is_named_not_read(tmp_path):
    """A workbook with a sheet per topic where one topic is not written yet (its header only): the other sheets are
    read and the empty one named (it was an error for the whole workbook); alone, or every sheet so, still an error."""
    from openpyxl import Workbook

    workbook = Workbook()
    shipping = workbook.active
    shipping.title = "Shipping"
    for row in (["Question", "Answer"], ["Do you ship to Ireland?", "Yes, 3-7 days."]):
        shipping.append(row)
    returns = workbook.create_sheet("Returns")
    returns.append(["Question", "Answer"])
    workbook.save(tmp_path / "topics.xlsx")
    raw = read_file(tmp_path / "topics.xlsx")
    assert [(c.question, c.category) for c in raw.conversations] == [("Do you ship to Ireland?", None)]
    assert raw.read_from == "sheet 'Shipping', columns question (customer) and answer (answer) (not read: 'Returns' " \
                            "(no rows))"

    workbook.remove(shipping)
    workbook.save(tmp_path / "one.xlsx")
    with pytest.raises(DataError, match=r"one.xlsx: the sheet has a header but no rows"):
        read_file(tmp_path / "one.xlsx")
    workbook.create_sheet("Payments").append(["Question", "Answer"])
    workbook.save(tmp_path / "two.xlsx")
    with pytest.raises(DataError, match=r"two.xlsx: every sheet has a header but no rows \(sheets: 'Returns' \(no "
                                        r"rows\), 'Payments' \(no rows\)\)"):
        read_file(tmp_path / "two.xlsx")
    tickets = workbook.create_sheet("Tickets")  # a help desk's export, one message per row: the same for threads
    for row in (["Ticket", "From", "Body"], ["T1", "customer", "Hi, where is my order?"],
                ["T1", "agent", "On its way."]):
        tickets.append(row)
    workbook.create_sheet("Tickets 2").append(["Ticket", "From", "Body"])
    for name in ("Returns", "Payments"):
        workbook.remove(workbook[name])
    workbook.save(tmp_path / "threads.xlsx")
    raw = read_file(tmp_path / "threads.xlsx")
    assert [c.question for c in raw.conversations] == ["Hi, where is my order?"]
    assert raw.read_from.endswith("(not read: 'Tickets 2' (no rows))")


def test_excel_cells_read_as_excel_shows_them(tmp_path):
    """What trains is what the shop sees: 15% not 0.15, $19.90, an order number's leading zeros, a date alone; a
    formula Excel never calculated, or an error value, is an error at its cell, not an empty or literal answer; a
    sheet whose stored dimension is stale is read whole."""
    import zipfile
    from datetime import datetime

    from openpyxl import Workbook

    shown = [(0.15, "0%", "15%"), (19.9, '"$"#,##0.00', "$19.90"), (1234, "00000000", "00001234"),
             (datetime(2025, 1, 2), "yyyy-mm-dd", "2025-01-02"), (1234.5, "General", "1234.5"),
             (1500000, "#,##0", "1,500,000")]
    workbook = Workbook()
    workbook.active.append(["question", "answer", "category"])
    for n, (value, form, _) in enumerate(shown, start=2):
        workbook.active.append([f"Q{n}?", value, "c"])
        workbook.active.cell(n, 2).number_format = form
    workbook.save(tmp_path / "shown.xlsx")
    assert [c.answer for c in read_file(tmp_path / "shown.xlsx").conversations] == [text for _, _, text in shown]

    # the same file with its dimension cut to A1:B3 (as some writers leave it): all 7 rows and the category read
    with zipfile.ZipFile(tmp_path / "shown.xlsx") as original, \
            zipfile.ZipFile(tmp_path / "stale.xlsx", "w") as stale:
        for item in original.infolist():
            data = original.read(item.filename)
            if item.filename == "xl/worksheets/sheet1.xml":
                data = re.sub(rb'<dimension ref="[^"]*"', b'<dimension ref="A1:B3"', data)
            stale.writestr(item, data)
    raw = read_file(tmp_path / "stale.xlsx")
    assert len(raw.conversations) == len(shown) and raw.conversations[-1].category == "c"

    for name, value in (("formula.xlsx", '="Yes, "&"3-7 days"'), ("error.xlsx", "#N/A")):
        workbook.active["B3"] = value
        workbook.save(tmp_path / name)
    with pytest.raises(DataError, match=r"formula.xlsx:sheet 'Sheet' row 3: field 'column 2': a formula Excel never "
                                        r"calculated"):
        read_file(tmp_path / "formula.xlsx")
    with pytest.raises(DataError, match=r"error.xlsx:sheet 'Sheet' row 3: field 'column 2': an Excel error value, "
                                        r"#N/A"):
        read_file(tmp_path / "error.xlsx")


def test_a_workbook_that_cannot_be_read_is_an_error_naming_why(tmp_path):
    from openpyxl import Workbook

    Workbook().save(tmp_path / "empty.xlsx")
    with pytest.raises(DataError, match=r"empty.xlsx: the workbook's visible sheets are empty"):
        read_file(tmp_path / "empty.xlsx")
    (tmp_path / "cut.xlsx").write_bytes((tmp_path / "empty.xlsx").read_bytes()[:300])
    with pytest.raises(DataError, match=r"cut.xlsx: not a readable Excel workbook \(.xlsx\): "):
        read_file(tmp_path / "cut.xlsx")
    for name in ("old.xls", "locked.xlsx"):  # an old workbook, or one saved with a password: an OLE container
        (tmp_path / name).write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(512))
    with pytest.raises(DataError, match=r"old.xls: a .xls spreadsheet: save it as .xlsx or CSV"):
        read_file(tmp_path / "old.xls")
    with pytest.raises(DataError, match=r"locked.xlsx: an old \(.xls\) or password-protected Excel workbook"):
        read_file(tmp_path / "locked.xlsx")
    header_only = Workbook()
    header_only.active.append(["question", "answer"])
    header_only.save(tmp_path / "header.xlsx")
    with pytest.raises(DataError, match=r"header.xlsx: the sheet has a header but no rows"):
        read_file(tmp_path / "header.xlsx")


def test_json_wrappers_sections_and_named_pairs_read_nothing_wrong(tmp_path):
    """What a JSON file holds is read whole or refused: a wrapper with pair-like fields of its own, a multi-turn
    record's turns, nested sections, an empty first section, labels in any case, a pair's input and system prompt."""
    tickets = [{"question": "Q1", "answer": "A1"}, {"question": "Q2", "answer": "A2"}]
    wrapper = {"customer": "Voltwise Ltd", "agent": "Acme BPO", "tickets": tickets}
    for indent in (None, 1):
        raw = read_file(write(tmp_path, "w.json", json.dumps(wrapper, indent=indent)))
        assert [c.answer for c in raw.conversations] == ["A1", "A2"] and raw.read_from == 'the list under "tickets"'
    dialog = {"dialog": [{"user": "Hi, my order is late", "agent": "Which order?"}, {"user": "VW-1", "agent": "Sent."}]}
    for name, text in (("d.jsonl", json.dumps(dialog)), ("d.json", json.dumps([dialog, dialog]))):
        with pytest.raises(DataError, match=r"unrecognised record"):
            read_file(write(tmp_path, name, text))
    nested = {"faq": [{"category": "Shipping", "questions": tickets,
                       "subcategories": [{"category": "Abroad", "questions": tickets}]}]}
    with pytest.raises(DataError, match=r"faq\[0\]: field 'subcategories': records under 'subcategories' as well"):
        read_file(write(tmp_path, "n.json", json.dumps(nested)))
    page = {"faq": [{"category": "Empty", "questions": []}, {"Category": 7, "questions": tickets},
                    {"category": "Own", "questions": [{"question": "Q3", "answer": "A3", "Category": "Mine"}]}]}
    raw = read_file(write(tmp_path, "p.json", json.dumps(page)))
    assert [(c.source, c.category) for c in raw.conversations] == [
        ("p.json:faq[1].questions[0]", "7"), ("p.json:faq[1].questions[1]", "7"),
        ("p.json:faq[2].questions[0]", "Mine")]
    pairs = [{"Instruction": "Check my order", "Input": "VW-123", "Response": "Shipped.", "System": "Be brief."}]
    [conv] = read_file(write(tmp_path, "i.json", json.dumps(pairs))).conversations
    assert conv.messages == [{"role": "system", "content": "Be brief."},
                             {"role": "user", "content": "Check my order\n\nVW-123"},
                             {"role": "assistant", "content": "Shipped."}]
    with pytest.raises(DataError, match=r"item 1: field 'Question': fields Question, question differ only in case"):
        read_file(write(tmp_path, "c.json", json.dumps([{"question": "a", "Question": "b", "Answer": "c"}])))
    with pytest.raises(DataError, match=r"item 1: field 'question': missing required field"):
        read_file(write(tmp_path, "m.json", json.dumps([{"Question": None, "Answer": "c"}])))


def test_a_thread_export_whose_messages_are_all_empty_names_the_text_column(tmp_path):
    """Rows but no text (a truncated export, attachments only): an error naming the column, not "no rows"."""
    with pytest.raises(DataError, match=r"e.csv: field 'message': the CSV file has no messages: this column is empty "
                                        r"in all 2 rows"):
        read_file(write(tmp_path, "e.csv", "ticket id,sender,message\nT1,customer,\nT1,agent\n"))


def test_a_column_read_twice_over_is_refused_not_read_from_its_last_copy(tmp_path):
    """Two columns of one name (an export's "Answer" in two languages, a pasted column): which to train on is not
    guessed, and a row's dict would keep only the last."""
    with pytest.raises(DataError, match=r"a.csv:row 1: field 'answer': 2 columns named 'answer' \(columns 2, 3\)"):
        read_file(write(tmp_path, "a.csv", "Question,Answer,answer \nWhere?,Here.,Hier.\n"))
    with pytest.raises(DataError, match=r"t.csv:row 1: field 'message': 2 columns named 'message' \(columns 3, 4\)"):
        read_file(write(tmp_path, "t.csv", "ticket id,sender,message,message\nT1,customer,Hi?,x\nT1,agent,Yes.,y\n"))
    raw = read_file(write(tmp_path, "ok.csv", "Question,Answer,note,note\nWhere?,Here.,a,b\n"))
    assert [c.answer for c in raw.conversations] == ["Here."]  # a repeated column not read is no loss


def test_csv_saved_by_a_european_excel_with_semicolons_and_its_own_words(tmp_path):
    """Excel in German, French or Italian settings saves "CSV" with semicolons (commas then sit inside the text):
    the separator is read from the header and said; column names in the shop's language, accents and all."""
    raw = read_file(write(tmp_path, "de.csv", 'Frage;Antwort\n"Wo ist meine Bestellung?";"Unterwegs; morgen da, '
                                              'versprochen."\nKann ich zurückgeben?;Ja, 30 Tage.\n'))
    assert raw.read_from == "columns frage (customer) and antwort (answer), cells separated by ';'"
    assert [c.answer for c in raw.conversations] == ["Unterwegs; morgen da, versprochen.", "Ja, 30 Tage."]
    raw = read_file(write(tmp_path, "fr.csv", "Question client|Réponse\nOù est ma commande ?|En route, demain.\n"))
    assert raw.read_from == "columns question client (customer) and réponse (answer), cells separated by '|'"
    assert raw.conversations[0].answer == "En route, demain."
    # a comma file whose header holds a semicolon stays a comma file
    raw = read_file(write(tmp_path, "en.csv", "question,answer;final\nWhere?,Here; now.\n"))
    assert raw.read_from == "columns question (customer) and answer;final (answer)"


def test_csv_columns_found_by_the_words_of_their_names(tmp_path):
    """A ticket export's "Customer Message" / "agent_reply" columns hold the pairs; an id, an e-mail or a date column
    that shares a word is not text; two columns that could both be the question are an error, not a guess."""
    path = write(tmp_path, "tickets.csv", 'ticket_id,Customer Email,Customer Message,agent_reply,reply_date\n'
                 'T1,a@b.example,"Where is VW-100234?","It left today.\nTrack it here.",2025-01-06\n')
    raw = read_file(path)
    assert raw.read_from == "columns customer message (customer) and agent_reply (answer)"
    assert raw.conversations[0].messages == [{"role": "user", "content": "Where is VW-100234?"},
                                             {"role": "assistant", "content": "It left today.\nTrack it here."}]
    with pytest.raises(DataError, match=r"row 1: field 'instruction': columns customer_message, customer_note could "
                                        r"each be the customer's message: rename the one to read 'question'"):
        read_file(write(tmp_path, "two.csv", "customer_message,customer_note,agent_reply\nq,n,a\n"))
    # an exact spelling is taken before a worded one
    raw = read_file(write(tmp_path, "both.csv", "user_text,question,answer\nu,q,a\n"))
    assert raw.conversations[0].question == "q" and raw.read_from == "columns question (customer) and answer (answer)"


@pytest.mark.parametrize("header, question, answer", [
    ("customer,customer_message,agent,agent_response", "customer_message", "agent_response"),  # names vs text
    ("Customer,Agent", "customer", "agent"),  # alone, they are the text
    ("customer,agent,customer_segment", "customer", "agent"),  # the word alone over a column that only holds it
    ("customer,customer_intent,agent", "customer", "agent"),
    ("customer,agent,user_agent", "customer", "agent"),  # both sides' words: neither side's
    ("customer,reply_message,customer_reply", "customer", "reply_message"),
    ("CustomerMessage,AgentReply,TicketId", "customermessage", "agentreply"),  # camelCase words
    ("customer_message_id,customer_message,agent_reply", "customer_message", "agent_reply"),
    ("Question\tAnswer\tintent", "question", "answer"),  # a TSV, with its intent column
])
def test_csv_column_choice(tmp_path, header, question, answer):
    tsv = "\t" in header
    names = header.split("\t" if tsv else ",")
    row = ("\t" if tsv else ",").join(f"cell of {n}" for n in names)
    raw = read_file(write(tmp_path, "export.tsv" if tsv else "export.csv", f"{header}\n{row}\n"))
    assert raw.read_from == f"columns {question} (customer) and {answer} (answer)"
    [original] = [n for n in names if n.lower() == question]
    assert raw.conversations[0].question == f"cell of {original}"


def test_csv_with_optional_columns(tmp_path):
    path = write(tmp_path, "bitext.csv", 'flags,instruction,category,intent,response\n'
                 'B,"where is my order {{Order Number}}",ORDER,track_order,"Check the Orders page."\n'
                 'BL,"cancel it, please",ORDER,cancel_order,"Done, it is cancelled."\n')
    raw = read_file(path)
    assert raw.format == "csv"
    first, second = raw.conversations
    assert first.question == "where is my order {{Order Number}}" and first.answer == "Check the Orders page."
    assert (second.intent, second.category, second.meta["flags"]) == ("cancel_order", "ORDER", "BL")
    assert second.source == "bitext.csv:row 3"


def test_chat_jsonl_multi_turn(tmp_path):
    path = write(tmp_path, "chat.jsonl", jsonl([{"messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Refund?"},
        {"role": "assistant", "content": "Within 5 days."}], "intent": "refund"}]))
    raw = read_file(path)
    assert raw.format == "chat-jsonl"
    assert [m["role"] for m in raw.conversations[0].messages] == ["system", "user", "assistant", "user", "assistant"]


def test_sharegpt_json_and_jsonl(tmp_path):
    record = {"conversations": [{"from": "human", "value": "Where is my parcel?"},
                                {"from": "gpt", "value": "Use the tracking link."}], "system": "Be kind."}
    for name, text in (("s.json", json.dumps([record])), ("s.jsonl", jsonl([record]))):
        convs, report = clean(read_file(write(tmp_path, name, text)))
        assert report.format == "sharegpt"
        assert [m["role"] for m in convs[0].messages] == ["system", "user", "assistant"]


def test_alpaca_json(tmp_path):
    path = write(tmp_path, "alpaca.json", json.dumps([
        {"instruction": "Answer the customer.", "input": "Can I return socks?", "output": "Yes, within 30 days."},
        {"instruction": "What payment methods?", "input": "", "output": "Cards and PayPal."}]))
    raw = read_file(path)
    assert raw.format == "alpaca"
    assert raw.conversations[0].question == "Answer the customer.\n\nCan I return socks?"
    assert raw.conversations[1].question == "What payment methods?"


def test_prompt_completion_jsonl(tmp_path):
    path = write(tmp_path, "pc.jsonl", jsonl([{"prompt": "Do you sell gift cards?", "completion": "Yes."},
                                             {"prompt": [{"role": "user", "content": "Hi"}],
                                              "completion": [{"role": "assistant", "content": "Hello"}]}]))
    raw = read_file(path)
    assert raw.format == "prompt-completion"
    assert raw.conversations[0].answer == "Yes."
    assert raw.conversations[1].messages[-1] == {"role": "assistant", "content": "Hello"}


def test_csv_keeps_line_breaks_inside_quoted_cells(tmp_path):
    """Numbered steps in one cell are how support exports look; CRLF everywhere, commas and quotes in cells."""
    path = tmp_path / "export.csv"
    path.write_bytes(b'question,answer,intent\r\n'
                     b'"How do I reset my password, please?","Steps:\r\n1. Log in\r\n2. Click ""Forgot password""'
                     b'\r\n\r\n3. Check your mail",account\r\n'
                     b'Is it free?,"Yes, always.",pricing\r\n')
    first, second = read_file(path).conversations
    assert first.question == "How do I reset my password, please?"
    assert first.answer == 'Steps:\n1. Log in\n2. Click "Forgot password"\n\n3. Check your mail'
    assert (second.question, second.answer) == ("Is it free?", "Yes, always.")
    # row as a spreadsheet counts it, and the file's line where it differs
    assert (first.source, second.source) == ("export.csv:row 2 (lines 2-6)", "export.csv:row 3 (line 7)")


def test_csv_errors_name_the_row_and_the_lines_it_spans(tmp_path):
    with pytest.raises(DataError, match=r"row 3 \(lines 3-4\): 3 cells but the header has 2 columns"):
        read_file(write(tmp_path, "a.csv", 'question,answer\nq,a\n"two\nlines",a,extra\n'))
    with pytest.raises(DataError, match=r"row 3 \(lines 3-4\): malformed CSV: unexpected end of data"):
        read_file(write(tmp_path, "cut.csv", 'question,answer\nq,a\nq2,"an answer cut\noff'))
    with pytest.raises(DataError, match=r"row 2: malformed CSV: ',' expected after '\"'"):
        read_file(write(tmp_path, "stray.csv", 'question,answer\n"q" oops,a\n'))


def test_jsonl_lines_end_at_newline_only(tmp_path):
    """U+2028, U+2029 and U+0085 are legal inside JSON strings, and ecombot's writers emit them raw."""
    content = "Line one\u2028line two\u2029next paragraph\u0085end, \U0001F600"
    rows = [{"messages": [{"role": "user", "content": content}, {"role": "assistant", "content": "Noted."}]},
            {"prompt": "x"}]
    path = tmp_path / "chat.jsonl"
    path.write_bytes("\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows).encode())
    with pytest.raises(DataError, match=r"chat.jsonl:line 2: field 'messages': missing"):
        read_file(path)
    path.write_bytes((json.dumps(rows[0], ensure_ascii=False) + "\r\n").encode())
    assert read_file(path).conversations[0].question == content


def test_text_keeps_inner_whitespace_and_strips_the_ends(tmp_path):
    rows = [{"prompt": "  Where is it?\r\n\r\n  Order 12\t ", "completion": "\n Shipped:\n  - box 1\r\n  - box 2 \n"}]
    conv = read_file(write(tmp_path, "pc.jsonl", jsonl(rows))).conversations[0]
    assert (conv.question, conv.answer) == ("Where is it?\n\n  Order 12", "Shipped:\n  - box 1\n  - box 2")


# --- malformed input: errors name file, line/row and field ---------------------------------------------

def test_missing_field_names_line_and_field(tmp_path):
    path = write(tmp_path, "bad.jsonl", jsonl([{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"},
                                               {"prompt": "e"}]))
    with pytest.raises(DataError) as exc:
        read_file(path)
    assert exc.value.where == "line 3" and exc.value.field == "completion"
    assert "bad.jsonl:line 3" in str(exc.value)


def test_invalid_json_line(tmp_path):
    path = write(tmp_path, "broken.jsonl", '{"prompt": "a", "completion": "b"}\n{"prompt": "c", \n')
    with pytest.raises(DataError, match=r"broken.jsonl:line 2: invalid JSON"):
        read_file(path)


def test_invalid_json_document_reports_line(tmp_path):
    path = write(tmp_path, "broken.json", '{"questions": [\n {"question": "a", "answer": "b"},\n {"question": }\n]}')
    with pytest.raises(DataError, match=r"broken.json:line 3"):
        read_file(path)


def test_csv_errors(tmp_path):
    with pytest.raises(DataError, match=r"row 1: field 'response': missing required column"):
        read_file(write(tmp_path, "a.csv", "instruction,category\nhi,X\n"))
    with pytest.raises(DataError, match=r"row 3: 3 cells but the header has 2 columns"):
        read_file(write(tmp_path, "b.csv", "instruction,response\nq,a\nq2,a2,extra\n"))


def test_wrong_types_and_unknown_records(tmp_path):
    with pytest.raises(DataError, match=r"item 1: field 'messages': expected a list"):
        read_file(write(tmp_path, "c.json", json.dumps([{"messages": "hello"}])))
    # values that would not read back as written (1.10 -> "1.1", true -> "True") are errors, not text
    for value, kind in ((True, "bool"), (1.10, "float"), (30, "int")):
        with pytest.raises(DataError, match=rf"line 2: field 'answer': expected text, got {kind}"):
            read_file(write(tmp_path, "e.jsonl", jsonl([{"question": "a", "answer": "b"},
                                                        {"question": "c", "answer": value}])))
    with pytest.raises(DataError, match=r"line 1: field 'system': expected text, got list"):
        read_file(write(tmp_path, "f.jsonl", jsonl([{"conversations": [], "system": ["Be kind."]}])))
    labelled = write(tmp_path, "g.jsonl", jsonl([{"question": "a", "answer": "b", "intent": 7}]))
    assert read_file(labelled).conversations[0].intent == "7"  # a class id
    with pytest.raises(DataError, match=r"line 1: unrecognised record.*found keys: text"):
        read_file(write(tmp_path, "d.jsonl", jsonl([{"text": "x"}])))


def test_unreadable_files(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_file(tmp_path / "missing.json")
    with pytest.raises(DataError, match="the file is empty"):
        read_file(write(tmp_path, "empty.jsonl", "\n"))
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes('{"prompt": "tea", "completion": "ok"}\n{"prompt": "caf\xe9"}'.encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.jsonl:line 2: not UTF-8 text \(byte 0xe9\); save the data file as "
                                        r"UTF-8 \(in Excel: Save As \"CSV UTF-8\"\)"):
        read_file(bad)


# --- validation and de-duplication -----------------------------------------------------------------------

def test_clean_drops_and_counts_each_reason(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "Where is my order?"}, {"role": "assistant", "content": "Orders page."}]},
        {"messages": [{"role": "user", "content": "Where is my order?"}, {"role": "assistant", "content": "Orders page."}]},
        {"messages": [{"role": "user", "content": "where is my ORDER"}, {"role": "assistant", "content": "orders page"}]},
        {"messages": [{"role": "user", "content": "Refund?"}, {"role": "assistant", "content": ""}]},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "wizard", "content": "Boo"}]},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"},
                      {"role": "user", "content": "Anyone?"}]},
        {"messages": [{"role": "human", "content": "Cancel please"}, {"role": "gpt", "content": "Done."}]},
    ]
    convs, report = clean(read_file(write(tmp_path, "d.jsonl", jsonl(rows))))
    assert report.rows_read == 7 and report.kept == 2 == len(convs)
    assert report.dropped == {"exact duplicate": 1, "duplicate after normalising case, punctuation and spaces": 1,
                              "empty answer": 1, "unknown role 'wizard'": 1, "does not end with an assistant turn": 1}
    assert report.dropped_examples["empty answer"] == ["d.jsonl:line 4"]
    assert convs[1].messages == [{"role": "user", "content": "Cancel please"}, {"role": "assistant", "content": "Done."}]


def test_normalise_text():
    assert normalise_text("  Where's my ORDER?!  ") == normalise_text("where s my order") == "where s my order"


# --- split -----------------------------------------------------------------------------------------------

def test_split_is_deterministic_stratified_and_leak_free():
    convs, _ = load_conversations(None)
    a = split_conversations(convs, 0.1, 0.1, seed=7)
    b = split_conversations(convs, 0.1, 0.1, seed=7)
    c = split_conversations(convs, 0.1, 0.1, seed=8)
    assert [x.question for x in a.test] == [x.question for x in b.test]
    assert [x.question for x in a.test] != [x.question for x in c.test]
    assert sum(a.counts().values()) == len(convs)
    assert abs(len(a.test) - 0.1 * len(convs)) < 0.02 * len(convs)
    per_intent = Counter(x.intent for x in a.test)
    total = Counter(x.intent for x in convs)
    assert set(per_intent) == set(total)  # every intent is tested
    for intent, n in total.items():
        assert abs(per_intent[intent] - 0.1 * n) <= 3, intent
    assert leaked_questions(a.train, a.test) == []


def test_split_keeps_same_question_together():
    from ecombot.data import Conversation

    convs = [Conversation([{"role": "user", "content": "Where is my order?" if i % 2 else f"Question {i}"},
                           {"role": "assistant", "content": f"Answer {i}"}], intent="x") for i in range(40)]
    split = split_conversations(convs, 0.2, 0.2, seed=1)
    homes = {name for name in ("train", "validation", "test")
             if any(c.question == "Where is my order?" for c in getattr(split, name))}
    assert len(homes) == 1
    assert leaked_questions(split.train, split.test) == [] and leaked_questions(split.train, split.validation) == []


def test_any_first_n_of_a_split_spans_the_intents_even_when_questions_repeat():
    from ecombot.data import Conversation

    # a support log whose questions repeat word for word: 6 intents x 4 questions, each asked 10 times
    convs = [Conversation([{"role": "user", "content": f"{intent} question {q}"},
                           {"role": "assistant", "content": f"Answer {intent} {q} {i}"}], intent=intent)
             for intent in "abcdef" for q in range(4) for i in range(10)]
    split = split_conversations(convs, 0.25, 0.25, seed=3)
    for part in (split.validation, split.test):
        assert len(part) == 60 and len({c.intent for c in part[:6]}) == 6  # was 1: whole groups came one by one
        assert len({c.question for c in part[:6]}) == 6
    assert Counter(c.intent for c in split.test) == dict.fromkeys("abcdef", 10)  # one question of each intent


def test_a_run_whose_split_files_hold_the_same_conversations_in_another_order_has_unchanged_data(tmp_path):
    from ecombot.data import split_files
    from ecombot.run_dir import RunDir

    files = split_files(prepare(None, seed=3).split)
    run = RunDir(tmp_path / "run")
    run.data_dir.mkdir(parents=True)
    for name, text in files.items():  # as a run made before the split's order changed kept them
        (run.data_dir / name).write_text("".join(reversed(text.splitlines(keepends=True))))
    assert run.changed_split_files(files) == []
    (run.data_dir / "test.jsonl").write_text(files["test.jsonl"].split("\n", 1)[1])  # one conversation fewer
    assert run.changed_split_files(files) == ["test.jsonl"]


def test_write_split_round_trips(tmp_path):
    prepared = prepare(None, seed=3)
    out = write_split(prepared.split, tmp_path / "split")
    for name, expected in prepared.split.counts().items():
        raw = read_file(out / f"{name}.jsonl")
        assert len(raw.conversations) == expected
    info = json.loads((out / "split.json").read_text())
    assert info["leaked_test_questions"] == 0
    assert read_file(out / "test.jsonl").conversations[0].intent == prepared.split.test[0].intent


# --- the built-in dataset ----------------------------------------------------------------------------------

def test_builtin_dataset_meets_its_promises():
    convs, report = load_conversations(None)
    assert report.kept >= 2000 and report.dropped == {}
    assert len(report.intents) >= 25
    assert report.multi_turn >= 100
    answers = " ".join(c.answer for c in convs)
    assert "{{Order Number}}" in answers
    policy = policy_text()
    # spot-check that answers use the policy's numbers
    for fact in ("30 days", "5 business days", "$4.95", "1-800-555-0142", "60 minutes", "14 days"):
        assert fact in policy and fact in answers, fact
    assert str(builtin_path()).endswith("harbor_pine_support.jsonl")


def test_builtin_unseen_intents_are_in_no_split_and_the_report_says_so():
    from ecombot.data import UNSEEN_INTENTS

    prepared = prepare(None)
    everything = prepared.split.train + prepared.split.validation + prepared.split.test
    assert len(UNSEEN_INTENTS) == 3 and not {c.intent for c in everything} & set(UNSEEN_INTENTS)
    raw, _ = clean(read_file(builtin_path()))
    held = [c for c in raw if c.intent in UNSEEN_INTENTS]
    report = prepared.report
    assert report.held_out["conversations"] == len(held) == len(raw) - len(everything) > 0
    assert report.held_out["intents"] == sorted(UNSEEN_INTENTS) and "unseen topics" in report.held_out["reason"]
    assert report.kept == len(everything) and not set(report.intents) & set(UNSEEN_INTENTS)
    assert report.to_dict()["held_out"] == report.held_out
    assert "held_out" not in load_conversations(builtin_path())[1].to_dict()  # a file given by path is used whole
