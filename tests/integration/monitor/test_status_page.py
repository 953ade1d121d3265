"""The status page in a real browser: headless Chromium (Debian's package) driven by Selenium."""

from __future__ import annotations

import os
import shutil
import threading
import time
from typing import Any

import httpx
import pytest

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver (make test installs them)"
)
EVIL_TEXT = "<img src=x onerror=window.pwned=1><script>window.pwned=2</script>"
BODY = {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


@pytest.fixture
def browser() -> Any:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    yield driver
    driver.quit()


def _texts(browser: Any, selector: str) -> list[str]:
    """Read in one script call: the page replaces its rows every second, so element handles go stale."""
    script = "return Array.from(document.querySelectorAll(arguments[0])).map(e => e.innerText)"
    return browser.execute_script(script, selector)


def _cell_texts(browser: Any, table: str) -> list[str]:
    return _texts(browser, f"#{table} tbody td")


def _rows(browser: Any) -> list[str]:
    return [" ".join(row.split()) for row in _texts(browser, "#models tbody tr")]


def test_page_shows_a_model_turn_ready_and_charts_update(repo, start_server, browser):
    """Model names cannot hold markup (the repository refuses them); error text and load reasons can."""
    repo.identity("identity")
    repo.config("broken", f'platform: "{EVIL_TEXT}"\nmax_batch_size: 0\n')
    server = start_server(repo.root, model_control_mode="explicit", exit_on_error=False)
    base = f"http://{server.http_url}"
    browser.get(base + "/")
    wait = WebDriverWait(browser, 20, poll_frequency=0.2)
    wait.until(lambda b: b.find_element(By.ID, "server-state").text == "READY")
    assert not any(r.startswith("identity") for r in _rows(browser))

    assert httpx.post(f"{base}/v2/repository/models/identity/load").status_code == 200
    httpx.post(f"{base}/v2/repository/models/broken/load")  # fails: its reason holds markup
    wait.until(lambda b: any(r.startswith("identity 1 READY") for r in _rows(b)))
    wait.until(lambda b: any(r.startswith("broken") for r in _rows(b)))

    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=base) as client:
            while not stop.is_set():
                client.post("/v2/models/identity/infer", json=BODY)
                time.sleep(0.005)

    worker = threading.Thread(target=load)
    worker.start()
    try:
        wait.until(
            lambda b: float(b.find_element(By.ID, "chart-throughput").get_attribute("data-last") or 0) > 0
        )
        wait.until(lambda b: b.find_element(By.ID, "now-throughput").text not in ("\u2013", "0.0"))
        bad_input = {"inputs": [{**BODY["inputs"][0], "name": EVIL_TEXT}]}
        assert httpx.post(f"{base}/v2/models/identity/infer", json=bad_input).status_code == 400
        wait.until(lambda b: any(EVIL_TEXT in t for t in _cell_texts(b, "errors")))
        if os.environ.get("NEREID_STATUS_SCREENSHOT"):
            time.sleep(4)
            browser.save_screenshot(os.environ["NEREID_STATUS_SCREENSHOT"])
    finally:
        stop.set()
        worker.join()
    assert int(browser.find_element(By.ID, "chart-latency").get_attribute("data-points")) >= 1
    # Names and error text were shown as text: no element was injected, no script ran.
    assert browser.execute_script("return window.pwned === undefined")
    assert browser.find_elements(By.CSS_SELECTOR, "main img, main script") == []
    assert any(EVIL_TEXT in t for t in _cell_texts(browser, "models"))  # the load error's reason


def test_status_data_and_assets(repo, start_server):
    repo.identity("identity")
    routing = 'parameters { key: "nereid.routing" value: { string_value: "weights: {1: 90, 2: 10}" } }'
    repo.identity("split", versions=(1, 2), extra=f"version_policy: {{ all: {{}} }}\n{routing}")
    server = start_server(repo.root)
    base = f"http://{server.http_url}"
    for path in ("/", "/status", "/status/status.js", "/status/status.css"):
        response = httpx.get(base + path)
        assert response.status_code == 200, path
    assert "default-src 'self'" in httpx.get(base + "/").headers["content-security-policy"]
    data = httpx.get(base + "/status/data").json()
    rows = {(m["name"], m["version"]): m for m in data["models"]}
    assert rows["identity", "1"] == {
        "name": "identity",
        "version": "1",
        "state": "READY",
        "reason": "",
        "configured_share": None,
    }
    assert (rows["split", "1"]["configured_share"], rows["split", "2"]["configured_share"]) == (90, 10)
    assert data["server"]["ready"] and data["stats"][0]["model"] == "identity"
    assert httpx.get(base + "/status/nope").status_code == 404
    assert httpx.post(base + "/status/data").status_code == 405
