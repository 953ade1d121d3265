"""Take docs/status-page.png: serve bench/models, send some traffic, photograph the status page.

.venv/bin/python docs/status_screenshot.py    # needs Debian's chromium and chromium-driver, and selenium
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import threading
import time
from pathlib import Path

import httpx
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from nereid.server.serve import NereidServer
from nereid.server.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
BODIES = {
    "add_sub": {"inputs": [{"name": n, "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16} for n in ("INPUT0", "INPUT1")]},
    "identity": {"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16}]},
    "sleep5ms": {"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16}]},
}  # fmt: skip


def main() -> int:
    settings = Settings(model_repository=[ROOT / "bench" / "models"], http_address="127.0.0.1", http_port=0,
                        grpc_port=0, metrics_port=0)  # fmt: skip
    server = NereidServer(settings)
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def run() -> None:
        await server.start()
        ready.set()
        await server.wait()
        await server.stop()

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    ready.wait(120)
    base = f"http://127.0.0.1:{server.ports['http']}"
    stop = threading.Event()

    def load(model: str, pause: float) -> None:
        with httpx.Client(base_url=base) as client:
            while not stop.is_set():
                client.post(f"/v2/models/{model}/infer", json=BODIES[model])
                time.sleep(pause)

    workers = [
        threading.Thread(target=load, args=(m, p))
        for m, p in (("add_sub", 0.002), ("identity", 0.01), ("sleep5ms", 0.0))
    ]
    for worker in workers:
        worker.start()
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(arg)
    browser = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    try:
        browser.get(base + "/")
        time.sleep(8)
        httpx.post(f"{base}/v2/models/add_sub/infer", json={"inputs": BODIES["add_sub"]["inputs"][:1]})
        time.sleep(4)
        browser.save_screenshot(str(ROOT / "docs" / "status-page.png"))
    finally:
        browser.quit()
        stop.set()
        for worker in workers:
            worker.join()
        loop.call_soon_threadsafe(server.request_stop)
        thread.join(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
