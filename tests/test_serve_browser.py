"""``flex serve`` in a real headless Chromium (Debian's chromium + chromium-driver, driven by
Selenium): load the page, stream on the tiny model, see frames arrive, switch the prompt, stop,
save; the page is screenshotted into the test output. A browser that cannot start FAILS the
test: install it with .ci/install-browser.sh."""
import os
import shutil

import pytest

from test_serve import serve_args  # noqa: F401  (the same tiny-model server arguments)
from tiny_assets import make_dit_checkpoint, make_wan_dir
from flex.cli import serve as serve_cli

CHROMIUM = os.environ.get("FLEX_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = os.environ.get("FLEX_CHROMEDRIVER") or shutil.which("chromedriver")
WAIT_S = 120  # generous: the 2-core CI machine runs the model and the browser at once


def start_browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as err:
        pytest.fail(f"the browser test needs selenium (pip install -e '.[serve]'): {err}")
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.fail("the browser test needs Chromium and its driver: run .ci/install-browser.sh "
                    f"(found chromium={CHROMIUM}, chromedriver={CHROMEDRIVER})")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=800,860", "--disable-extensions", "--no-first-run"):
        options.add_argument(flag)
    try:  # an explicit driver path: Selenium never tries to download one
        return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    except Exception as err:
        pytest.fail(f"Chromium did not start ({CHROMIUM}, driver {CHROMEDRIVER}): {err}")


def test_page_streams_switches_stops_and_saves(tmp_path, one_thread):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    assets = {"wan": make_wan_dir(tmp_path / "wan"), "dit": make_dit_checkpoint(tmp_path / "tiny.pt")}
    out = tmp_path / "videos"
    args = serve_args(assets, out, "--frames", "60", "--prompts", str(_prompt_file(tmp_path)))
    browser = start_browser()
    try:
        with serve_cli.serve_in_thread(args) as (url, _):
            wait = WebDriverWait(browser, WAIT_S)

            def text(element_id):
                return browser.find_element(By.ID, element_id).text

            def number(element_id):
                return int(text(element_id) or 0)

            browser.get(url)
            wait.until(lambda b: text("status").startswith("ready"))
            menu = browser.find_element(By.ID, "prompts")
            assert menu.is_displayed() and len(menu.find_elements(By.TAG_NAME, "option")) == 2
            assert browser.find_element(By.ID, "prompt").get_attribute("value") == "a cat runs on the beach"

            browser.find_element(By.ID, "start").click()
            wait.until(lambda b: number("frames") >= 9 and number("shown") >= 1)
            assert browser.execute_script("return document.getElementById('video').naturalWidth") == 96
            assert float(text("latent-fps")) > 0 and float(text("decoded-fps")) > 0

            prompt = browser.find_element(By.ID, "prompt")
            prompt.clear()
            prompt.send_keys("a dog jumps in snow")
            browser.find_element(By.ID, "switch").click()
            wait.until(lambda b: "switched at frame" in text("log"))
            assert "a dog jumps in snow" in text("status")

            shown = number("shown")
            wait.until(lambda b: number("shown") > shown)  # frames keep arriving after the switch
            browser.find_element(By.ID, "stop").click()
            wait.until(lambda b: text("status").startswith("stopped"))
            frames = number("frames")
            assert 0 < frames < 4 * 60 - 3

            browser.find_element(By.ID, "save").click()
            wait.until(lambda b: text("status").startswith("saved"))
            assert f"({frames} frames)" in text("status")
            assert len(list(out.glob("flex-*.mp4"))) == 1
            _screenshot(browser, tmp_path)
    finally:
        browser.quit()


def _prompt_file(folder):
    path = folder / "prompts.txt"
    path.write_text("a cat runs on the beach\na red car in the city at night\n")
    return path


def _screenshot(browser, folder):
    """Into the test's output folder, and FLEX_SCREENSHOT_DIR when set (the docs' image)."""
    path = folder / "flex-serve.png"
    assert browser.save_screenshot(str(path)), "the screenshot failed"
    print(f"screenshot: {path}")
    if os.environ.get("FLEX_SCREENSHOT_DIR"):
        shutil.copy(path, os.path.join(os.environ["FLEX_SCREENSHOT_DIR"], "flex-serve.png"))
