"""The chat page in a real browser: headless Chromium (Debian's) types a message and sees a streamed reply."""

from __future__ import annotations

import shutil

import httpx
import pytest

from tests.serve.conftest import API_KEY

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# counts the changes inside assistant bubbles only (not the stats line, not the bubbles' insertion): a streamed
# reply rewrites its bubble once per piece, a reply delivered at once just once
OBSERVE = """() => {
  window.__updates = 0;
  new MutationObserver((records) => {
    for (const r of records) {
      const el = r.target.nodeType === Node.ELEMENT_NODE ? r.target : r.target.parentElement;
      if (el && el.closest('.msg.assistant')) window.__updates += 1;
    }
  }).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true});
}"""


def ask(page, text: str) -> None:
    page.fill("#input", text)
    page.press("#input", "Enter")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_the_chat_page_streams_a_reply_in_a_browser(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 700})
            page.goto(server.url + "/")
            # without the key the server says 401, and the page shows it rather than failing silently
            ask(page, "hello")
            page.wait_for_selector(".error", timeout=30_000)
            assert "401" in page.inner_text(".error")
            page.fill("#key", API_KEY)
            page.dispatch_event("#key", "change")
            page.click("#reset")
            page.fill("#temperature", "0")  # greedy: the API's answer is the page's
            page.fill("#max-tokens", "48")
            page.evaluate(OBSERVE)
            ask(page, "What is the capital of France?")
            page.wait_for_selector(".stats[data-done='1']", timeout=90_000)
            reply = page.inner_text(".msg.assistant")
            stats = page.inner_text(".stats")
            updates = page.evaluate("window.__updates")
            page.screenshot(path=str(tmp_path / "chat.png"))
        finally:
            browser.close()
    api = httpx.post(f"{server.url}/v1/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"}, json={
        "messages": [{"role": "user", "content": "What is the capital of France?"}], "temperature": 0,
        "max_tokens": 48}, timeout=60).json()
    assert reply == api["choices"][0]["message"]["content"].strip() and reply
    tokens, rate = stats.split(" tokens, ")[0], stats.split(" tokens, ")[1].split(" tok/s")[0]
    assert int(tokens) > 1 and float(rate) > 0
    assert updates > 3, updates  # the bubble's text grew piece by piece: streamed, not delivered at once
    assert (tmp_path / "chat.png").stat().st_size > 10_000
