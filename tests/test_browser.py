"""The customer chat page in headless Chromium (Debian's `chromium`, driven by Playwright), on a phone-size screen.

The page runs under its Content-Security-Policy, so waits use selectors (no string evaluation, which it forbids)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from fake_knowledge import COVERED, HANDOFF, NOT_COVERED, RETURN_PAIR, RETURNS, fake_grounder
from scripted_engine import ScriptedEngine

from ecombot.chat import Decoding, open_engine
from ecombot.knowledge import Passage
from ecombot.serve import Store, create_app
from ecombot.serve.security import SessionTokens

CHROMIUM = os.environ.get("ECOMBOT_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(os.environ.get("ECOMBOT_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"))


@pytest.fixture(scope="module")
def browser():
    if not shutil.which(CHROMIUM):
        if os.environ.get("ECOMBOT_REQUIRE_SYSTEM_TESTS") == "1":
            pytest.fail(f"{CHROMIUM} not found (apt-get install chromium chromium-driver)")
        pytest.skip(f"{CHROMIUM} not found: apt-get install chromium chromium-driver (CI always does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield browser
        browser.close()


def test_customer_chats_streams_rates_and_asks_for_a_human(browser, talkative_model_dir, adapter_dirs, tmp_path,
                                                          running_server):
    engine = open_engine(str(talkative_model_dir), [("support", adapter_dirs["support"])],
                          Decoding(max_new_tokens=24, repetition_penalty=3.0), precision="fp32")
    store = Store(f"sqlite:///{tmp_path / 'web.db'}")
    with running_server(create_app(engine, store)) as server:
        page = browser.new_page(viewport={"width": 390, "height": 780})  # a phone
        page.on("console", lambda m: print("console:", m.text))
        page.on("pageerror", lambda e: print("pageerror:", e))
        page.goto(server.url)
        # count how often the answer's text changes while it streams: every change, not every observer call (a
        # fast machine delivers several pieces in one network read, and one call then reports all their changes)
        page.evaluate("""() => { window.answerUpdates = 0;
            new MutationObserver((changes) => { window.answerUpdates += changes.length; }).observe(
                document.getElementById('messages'),
                {subtree: true, characterData: true, childList: true}); }""")
        page.fill("#question", "Where is my order?")
        page.keyboard.press("Enter")
        page.wait_for_selector(".answer:not(.streaming) .rate", timeout=30_000)
        answer = page.inner_text(".answer").split("\n")[0]
        assert answer.strip() and page.evaluate("window.answerUpdates") >= 4  # text arrived piece by piece
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling on a phone

        page.fill("#question", "And can I return it?")
        page.click("#send")
        page.locator(".answer .rate").nth(1).wait_for(timeout=30_000)
        page.locator(".answer").nth(1).locator("button.down").click()
        page.fill(".correction", "Yes, within 30 days from the Orders page.")
        page.click(".submit-correction")
        page.wait_for_selector(".thanks")
        page.locator(".answer").nth(0).locator("button.up").click()
        page.locator(".thanks").nth(1).wait_for()
        page.click("#human")
        page.wait_for_selector(".notice")
        assert "team" in page.inner_text(".notice")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "chat_page.png"), full_page=True)
        page.close()

    [conversation] = store.conversations()
    assert conversation.channel == "web" and conversation.handoff_at is not None
    roles = [m.role for m in conversation.messages]
    assert roles == ["user", "assistant", "user", "assistant"]
    first, second = conversation.messages[1], conversation.messages[3]
    assert (first.feedback.rating, first.feedback.correction) == (1, None)
    assert (second.feedback.rating, second.feedback.correction) == (-1, "Yes, within 30 days from the Orders page.")
    assert (ARTIFACTS / "chat_page.png").stat().st_size > 10_000


def test_the_page_recovers_by_itself_when_its_session_ends(browser, tmp_path, running_server):
    """A server that restarted without its secret (or a session past its 12 hours): the next question gets a 401,
    then the old conversation's 404; the page opens a new session and conversation and the customer sees only the
    answer."""
    store = Store(f"sqlite:///{tmp_path / 'web.db'}")
    app = create_app(ScriptedEngine("Parcels arrive in 3 days."), store)
    with running_server(app) as server:
        page = browser.new_page(viewport={"width": 390, "height": 780})
        page.goto(server.url)
        page.fill("#question", "When will it arrive?")
        page.keyboard.press("Enter")
        page.wait_for_selector(".answer:not(.streaming) .rate", timeout=30_000)
        first_session = page.evaluate("state.token")
        app.state.server.sessions = SessionTokens()  # a new secret: every token the page holds is now invalid
        page.fill("#question", "And to Peru?")
        page.keyboard.press("Enter")
        page.locator(".answer .rate").nth(1).wait_for(timeout=30_000)
        assert page.locator(".error").count() == 0
        assert page.inner_text(".answer >> nth=1").startswith("Parcels arrive in 3 days.")
        assert page.evaluate("state.token") != first_session
        page.locator(".answer").nth(1).locator("button.up").click()
        page.wait_for_selector(".thanks")
        page.close()
    first, second = store.conversations()
    assert first.client != second.client and [m.role for m in second.messages] == ["user", "assistant"]
    assert second.messages[0].content == "And to Peru?" and second.messages[1].feedback.rating == 1


def test_answers_name_their_sources_and_a_handoff_says_so(browser, tmp_path, running_server):
    """Labels come from the store's documents; they are written as text, so markup in one stays inert."""
    marked_up = Passage('<img src=x id="injected">.md', "Returns policy", 1, "Shoes can be returned within 30 days.")
    store = Store(f"sqlite:///{tmp_path / 'web.db'}")
    app = create_app(ScriptedEngine("Yes, within 30 days."), store, grounder=fake_grounder((RETURNS, marked_up)))
    with running_server(app) as server:
        page = browser.new_page(viewport={"width": 390, "height": 780})
        page.goto(server.url)
        page.fill("#question", COVERED)
        page.keyboard.press("Enter")
        page.wait_for_selector(".answer:not(.streaming) .rate", timeout=30_000)
        assert page.inner_text(".answer .sources") == (
            'from: Returns and exchanges (policy.md); Returns policy (<img src=x id="injected">.md)')
        assert page.locator("#injected").count() == 0 and page.locator(".handoff-note").count() == 0
        page.fill("#question", NOT_COVERED)
        page.keyboard.press("Enter")
        page.locator(".answer .rate").nth(1).wait_for(timeout=30_000)
        second = page.locator(".answer").nth(1)
        assert second.inner_text().startswith(HANDOFF) and second.locator(".sources").count() == 0
        assert second.locator(".handoff-note").inner_text() == "This conversation has been passed to our support team."
        page.close()
    [conversation] = store.conversations()
    assert conversation.handoff_at is not None
    reusing = create_app(ScriptedEngine("never said"), store, grounder=fake_grounder((RETURNS, RETURN_PAIR), reuse=0.8))
    with running_server(reusing) as server:  # a stored answer says so under it
        page = browser.new_page(viewport={"width": 390, "height": 780})
        page.goto(server.url)
        page.fill("#question", COVERED)
        page.keyboard.press("Enter")
        page.wait_for_selector(".answer:not(.streaming) .rate", timeout=30_000)
        assert page.inner_text(".answer").startswith("Yes: unworn shoes come back free within 30 days")
        assert page.inner_text(".answer .sources") == "from: returns (data: faq.json) (its stored answer, as written)"
        page.close()
