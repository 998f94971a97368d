"""The FastAPI chat example's page in a real browser.

Playwright (the ``browser`` extra) drives Debian's Chromium headless
(``/usr/bin/chromium``; ``.ci/run`` installs both) against the example under
``uvicorn``, on a SQLite file made by its Alembic revisions and its offline test
double, which streams its reply word by word: send a message and watch the reply
stream in, regenerate, edit, approve a paused refund, and see a problem document
shown as an error. The page is saved as a screenshot under the artifacts directory
(``AGENT_SESSION_ARTIFACTS``, else ``<tmp>/agent-session-artifacts``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.chat_app import load_app, serving
from support.databases import running_under_ci

CHROMIUM = Path(os.environ.get("AGENT_SESSION_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(
    os.environ.get("AGENT_SESSION_ARTIFACTS")
    or Path(tempfile.gettempdir()) / "agent-session-artifacts"
)
TIMEOUT_MS = 10_000


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[browser]')"
    if not CHROMIUM.exists():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    return None


@pytest.fixture(scope="module")
def page_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    why = _missing()
    if why is not None:
        if running_under_ci():
            pytest.fail(why)
        pytest.skip(why)
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('browser') / 'chat.sqlite3'}"
    load_app().migrate(url)
    with serving({"AGENT_SESSION_DATABASE_URL": url, "CHAT_DEMO_DELAY": "0.04"}) as server:
        yield f"{server.url}/"


@pytest.mark.slow
def test_send_stream_regenerate_edit_approve_in_chromium(page_url: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            _scenario(page, expect, page_url)
        finally:
            browser.close()


def _scenario(page: Any, expect: Any, url: str) -> None:
    page.goto(url)
    page.fill("#user", "ann")

    def send(text: str) -> None:
        page.fill("#message", text)
        page.press("#message", "Enter")

    # Send: the reply appears piece by piece while the stream is open.
    send("Where is order 42?")
    streaming = page.locator(".msg.assistant.streaming .text")
    expect(streaming).to_contain_text("offline")
    partial = streaming.text_content() or ""
    assert "Anything else" not in partial  # seen before the end of the reply
    regenerate = page.locator("#regenerate")
    expect(regenerate).to_be_visible()
    last_reply = page.locator(".msg.assistant .text").last
    expect(last_reply).to_contain_text("You said: 'Where is order 42?'")
    first_answer = last_reply.text_content()

    # Regenerate: a new reply replaces the shown one.
    regenerate.click()
    expect(page.locator("#regenerate")).to_be_visible()
    expect(last_reply).not_to_have_text(first_answer or "")
    expect(last_reply).to_contain_text("You said: 'Where is order 42?'")

    # Edit: the browser's prompt answers with the new text.
    page.once("dialog", lambda dialog: dialog.accept("Where is order 43?"))
    page.locator(".msg.user .edit").first.click()
    expect(page.locator(".msg.user .text").first).to_have_text("Where is order 43?")
    expect(last_reply).to_contain_text("You said: 'Where is order 43?'")

    # A refund waits for approval; approving runs it.
    send("Refund 20, please")
    expect(page.locator("#pending")).to_contain_text("refund")
    page.locator("#approve").click()
    expect(page.locator("#pending")).to_be_hidden()
    expect(page.locator(".msg.assistant .text").last).to_have_text(
        "Done: refunded 20.00 on order 42."
    )
    expect(page.locator(".msg.tool .text").last).to_have_text("refunded 20.00 on order 42")

    # Another user's id: the 404 problem document is shown.
    page.evaluate("document.getElementById('user').value = 'bob'")
    page.locator("#regenerate").click()
    expect(page.locator("#error")).to_contain_text("Session not found")

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "fastapi_chat.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 1000
