"""The browser demo at / in real headless Chromium: API key, model list, confidence slider, upload, boxes drawn."""

from __future__ import annotations

import shutil

import httpx
import pytest
from service_fixtures import REPO, cell_photo, servers  # noqa: F401  # fixtures

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
API_KEY = "browser-key"
ARTIFACTS = REPO / "artifacts"

pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver")

# The demo draws class i in PALETTE[i % 8] (Okabe-Ito, the engine's colours); counts pixels of each colour.
_COUNT_PALETTE_PIXELS = """
const canvas = document.getElementById("canvas");
const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
const counts = PALETTE.map(() => 0);
for (let i = 0; i < data.length; i += 4) {
  const index = PALETTE.findIndex(([r, g, b]) => data[i] === r && data[i + 1] === g && data[i + 2] === b);
  if (index >= 0) counts[index] += 1;
}
return {counts, width: canvas.width, height: canvas.height};
"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
        "--window-size=1280,1000",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_demo_page_detects_and_draws(servers, trained_onnx_dynamic, browser, cell_photo, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    server = servers({"MODELS": str(trained_onnx_dynamic), "API_KEYS": API_KEY})
    data, conf = cell_photo
    photo = tmp_path / "cells.jpg"
    photo.write_bytes(data)
    expected = httpx.post(
        server.url + "/v1/detect",
        files={"image": ("cells.jpg", data)},
        data={"conf": conf},
        headers={"X-API-Key": API_KEY},
        timeout=30,
    ).json()["results"][0]["detections"]
    wait = WebDriverWait(browser, 30)

    browser.get(server.url + "/")
    error = browser.find_element(By.ID, "error")
    wait.until(lambda _: error.is_displayed())
    assert "401" in error.text and "API key is required" in error.text  # no key yet: the server says why

    browser.find_element(By.ID, "api-key").send_keys(API_KEY, Keys.TAB)
    wait.until(lambda _: browser.find_element(By.ID, "model").get_attribute("value") == "bccd")
    wait.until(expected_conditions.invisibility_of_element(error))
    browser.execute_script(
        "const slider = document.getElementById('conf'); slider.value = arguments[0];"
        "slider.dispatchEvent(new Event('input'));",
        str(conf),
    )
    assert browser.find_element(By.ID, "conf-value").text == f"{conf:.2f}"
    browser.find_element(By.ID, "file").send_keys(str(photo))

    status = browser.find_element(By.ID, "status")
    wait.until(lambda _: status.get_attribute("data-count") is not None)
    count = int(status.get_attribute("data-count"))
    assert count == len(expected) > 0
    assert status.text.startswith(f"{count} boxes · model bccd")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#detections tbody tr")) == count

    drawn = browser.execute_script(_COUNT_PALETTE_PIXELS)
    assert drawn["width"] > 300 and drawn["height"] > 300
    for class_id in {item["class"] for item in expected}:  # every detected class has its colour on the canvas
        assert drawn["counts"][class_id] > 100, drawn["counts"]

    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "service-demo.png"))
    assert (ARTIFACTS / "service-demo.png").stat().st_size > 10_000

    key = browser.find_element(By.ID, "api-key")  # a wrong key: both failures are shown with the server's reason
    key.clear()
    key.send_keys("wrong", Keys.TAB)
    wait.until(lambda _: "Models could not be listed: 401" in error.text)
    browser.find_element(By.ID, "detect").click()
    wait.until(lambda _: status.text == "Detection failed.")
    assert "401" in error.text and "the API key is not valid" in error.text


def test_api_docs_render_offline(servers, trained_onnx_dynamic, browser):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    server = servers({"MODELS": str(trained_onnx_dynamic)}, wait_ready=False)
    browser.get(server.url + "/docs")
    WebDriverWait(browser, 30).until(lambda _: browser.find_elements(By.CSS_SELECTOR, ".swagger-ui .info .title"))
    assert "Attention-YOLO detection service" in browser.find_element(By.CSS_SELECTOR, ".swagger-ui .info .title").text
    assert browser.find_elements(By.CSS_SELECTOR, "#operations-detection-detect_v1_detect_post")
