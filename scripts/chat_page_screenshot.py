"""Screenshot of the chat page with a streamed answer: docs/chat_page.png.

    .venv/bin/python scripts/chat_page_screenshot.py [--out docs/chat_page.png]

Starts `paperclub serve` on a free loopback port (the embedded default model), asks one question in headless
Chromium (Debian's `chromium`, driven by Playwright), waits for the streamed answer and its tokens/s line, saves
the screenshot and stops the server.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

QUESTION = "Give me three tips for writing clear Python code."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/chat_page.png")
    args = ap.parse_args()
    chromium = shutil.which("chromium") or sys.exit("needs Debian's chromium: apt-get install chromium")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "paperclub.cli", "serve", "--port", str(port)])
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 600  # a cold start compiles the CPU kernels first
        while True:
            if server.poll() is not None:
                sys.exit(f"the server exited with {server.returncode}")
            if time.monotonic() > deadline:
                sys.exit("the server did not come up in 600 s")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1000, "height": 700})
            page.goto(url + "/")
            page.fill("#temperature", "0")
            page.fill("#max-tokens", "200")
            page.fill("#input", QUESTION)
            page.press("#input", "Enter")
            page.wait_for_selector(".stats[data-done='1']", timeout=120_000)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=args.out)
            print(page.inner_text(".stats"))
            browser.close()
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(30)


if __name__ == "__main__":
    main()
