"""The chat page in headless Chromium (Debian's `chromium`, driven by Playwright; no browser download):
type a message, watch the reply stream, stop it, continue the conversation; a screenshot is saved in the
test's temp dir. The engine is paced (50 ms a step) so a reply is still streaming when Stop is clicked."""
from __future__ import annotations

import os
import shutil
import time

import httpx

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [pytest.mark.xdist_group("serve"),  # one worker: one compiled artifact, one server
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium package")]


def test_chat_page_streams_stops_and_keeps_the_conversation(paced_server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                   headless=True, args=FLAGS)
        try:
            page = ctx.pages[0] if ctx.pages else ctx.new_page()
            page.goto(paced_server.url + "/")
            page.wait_for_function("document.getElementById('model').textContent.includes('context')")
            page.click("#settings summary")
            page.fill("#max_tokens", "100")
            page.fill("#temperature", "0")  # greedy: this reply has no end-of-sequence in its 100 tokens
            page.fill("#input", "hello")
            page.press("#input", "Enter")
            reply = page.locator(".msg.assistant").nth(0)
            # a rate needs two tokens: stopping after the first one left #speed empty (seen once in CI-like runs)
            page.wait_for_function("document.querySelector('.msg.assistant').textContent.length > 0 && "
                                   "document.getElementById('speed').textContent.includes('tokens/s')")
            assert page.is_enabled("#stop") and not page.is_enabled("#send")  # still streaming
            page.click("#stop")
            page.wait_for_selector(".msg.assistant.stopped")
            assert "tokens/s" in page.text_content("#speed")
            stopped_text = reply.text_content()
            assert stopped_text and page.is_enabled("#send")
            for _ in range(500):  # the abort frees the slot at the engine's next step (bounded wait)
                if not any(s["is_processing"] for s in httpx.get(paced_server.url + "/slots").json()):
                    break
                time.sleep(0.02)
            assert paced_server.engine.metrics["requests_cancelled"] >= 1
            assert not any(s["is_processing"] for s in httpx.get(paced_server.url + "/slots").json())
            page.fill("#max_tokens", "3")
            page.fill("#input", "and more")
            page.press("#input", "Enter")
            page.wait_for_function("document.querySelectorAll('.msg.assistant').length == 2 && "
                                   "!document.getElementById('send').disabled")
            assert page.locator(".msg.user").all_text_contents() == ["hello", "and more"]
            assert reply.text_content() == stopped_text
            page.screenshot(path=str(tmp_path / "chat.png"))
        finally:
            ctx.close()
    assert (tmp_path / "chat.png").stat().st_size > 1000
