"""The web page at / in headless Chromium (Debian's `chromium`, driven by Playwright): a text search and an
image upload show result cards with images, captions and scores. Screenshots go to the test's tmp dir."""

from __future__ import annotations

import os
import shutil

import pytest
from test_serve_api import PQ_FACTORY, make_collection

from vlm.serve.process import ServerProcess

CHROMIUM = os.environ.get("VLM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ALL_IMAGES_SHOWN = """() => {
  const imgs = [...document.querySelectorAll('.result img')];
  return imgs.length > 0 && imgs.every(i => i.src.startsWith('blob:') && i.complete && i.naturalWidth > 0);
}"""


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    if not (os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM)):
        pytest.skip(f"no Chromium at {CHROMIUM} (make browser installs Debian's chromium with apt-get)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module", params=["flat", "pq-mapped"])
def collection(request, tmp_path_factory):
    """The page on an exact index, and on a compressed (IVF-PQ) one served read-only, memory-mapped."""
    if request.param == "flat":
        return {**make_collection(tmp_path_factory.mktemp("web")), "serve_args": []}
    made = make_collection(tmp_path_factory.mktemp("web-pq"), "--index-factory", PQ_FACTORY)
    return {**made, "serve_args": ["--read-only"]}


@pytest.fixture(scope="module")
def server(collection):
    with ServerProcess(collection["checkpoint"], collection["index"], *collection["serve_args"],
                       log_path=collection["root"] / "server.log") as s:
        yield s


def test_text_search_shows_result_images(browser, server, tmp_path):
    page = browser.new_page(viewport={"width": 1100, "height": 700})
    page.goto(server.url)
    page.wait_for_function("() => document.getElementById('status').textContent.includes('12 items')")
    page.fill("#query", "a red circle")
    page.select_option("#k", "10")
    page.click("#search-button")
    page.wait_for_function(ALL_IMAGES_SHOWN, timeout=20_000)
    cards = page.locator(".result")
    assert cards.count() == 10
    captions = page.locator(".result .caption").all_text_contents()
    assert set(captions) <= {f"a {c} {s}" for c in ("red", "green", "blue", "yellow", "purple", "orange")
                             for s in ("circle", "square")}
    assert all("score" in text for text in page.locator(".result .score").all_text_contents())
    assert page.locator("#message").text_content() == ""
    page.screenshot(path=str(tmp_path / "web_text_search.png"), full_page=True)
    assert (tmp_path / "web_text_search.png").stat().st_size > 10_000
    page.close()


def test_image_upload_finds_the_uploaded_image_first(browser, server, collection, tmp_path):
    page = browser.new_page(viewport={"width": 1100, "height": 700})
    page.goto(server.url)
    page.set_input_files("#image-file", str(collection["root"] / "images" / "4.png"))
    page.wait_for_function(ALL_IMAGES_SHOWN, timeout=20_000)
    assert page.locator(".result .caption").first.text_content() == collection["captions"][4]
    page.screenshot(path=str(tmp_path / "web_image_search.png"), full_page=True)
    page.close()
