"""demos/serve.py's web page in a real headless browser (Debian's chromium + chromedriver, driven by Selenium):
it loads, describes the model, and an image uploaded through its file input is shown with the top-1 that the
API answers for the same file.

The browser comes from z_task_shell/install_browser.sh (run_tests.sh runs it); without it this test is skipped
on a developer's machine, and fails under CI (CI=true), where a skip would hide that the page went untested."""
from __future__ import annotations

import contextlib
import io
import os
import shutil

import pytest
import requests

from helpers import calibrated_checkpoint, run_main, serving


def browser_or_reason() -> tuple[str, str] | str:
    """(chromium, chromedriver) paths, or why the browser test cannot run."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: .venv/bin/pip install -r requirements.txt"
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        return "chromium and chromedriver are not on PATH: run z_task_shell/install_browser.sh (apt-get)"
    return chromium, driver


@pytest.fixture
def browser(tmp_path):
    """A headless chromium driven by Selenium (no Selenium Manager: nothing is downloaded)."""
    found = browser_or_reason()
    if isinstance(found, str):
        if os.environ.get("CI") == "true":
            pytest.fail(f"the web page test needs a browser under CI: {found}")
        pytest.skip(found)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=900,700", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=found[1]), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_page_shows_the_top1_the_api_answers(tiny_data, tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    data = tiny_data["folder"]
    ckpt = calibrated_checkpoint(tmp_path / "run", "resnet18", data, 16)
    with contextlib.redirect_stdout(io.StringIO()):
        assert run_main(["--onnx", "--resume", str(ckpt), "--data", str(data), "-j", "0"]) == 0
    images = sorted((data / "test").rglob("*.png"))[::4][:3]
    with serving(tmp_path / "run" / "export" / "model.onnx", "--topk", "3", cwd=tmp_path) as served:
        api = [requests.post(served.url + "/predict", data=p.read_bytes(), timeout=60).json()["answer"] for p in images]
        browser.get(served.url + "/")
        assert browser.title == "Image classifier"
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: "model.onnx (onnxruntime), 3 classes" in b.find_element(By.ID, "model").text)
        browser.find_element(By.ID, "file").send_keys("\n".join(str(p) for p in images))
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".result[data-state=done]")) == len(images))
        cards = browser.find_elements(By.CSS_SELECTOR, ".result")
        shown = {c.find_element(By.CLASS_NAME, "name").text: c.get_attribute("data-top1") for c in cards}
        assert shown == {p.name: a for p, a in zip(images, api)}
        for card in cards:  # top-k bars, the first one the top-1
            bars = card.find_elements(By.CLASS_NAME, "bar")
            assert len(bars) == 3 and bars[0].text.split()[0] == card.get_attribute("data-top1")
            assert card.find_element(By.CLASS_NAME, "top1").text == card.get_attribute("data-top1")
        browser.save_screenshot(str(tmp_path / "page.png"))
        if os.environ.get("SERVE_SCREENSHOT"):  # a developer's look at the page
            shutil.copy(tmp_path / "page.png", os.environ["SERVE_SCREENSHOT"])
