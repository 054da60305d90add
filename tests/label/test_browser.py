"""The labelling page in real headless Chromium (Debian's, driven by Playwright).

One labeler logs in, labels by click and by keys 1-4, skips, undoes, and the database ends
with exactly the labels made. A caption full of markup must render as text.
"""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest

from mmft.label.storage import add_labeler

from .conftest import REPO_ROOT, db_labels, write_pairs

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
INJECTION = '<img src=x onerror=alert(1)><script>window.__pwned = 1; alert("xss")</script>'
SCREENSHOT = REPO_ROOT / "test-artifacts" / "label_page.png"


@pytest.fixture(scope="module")
def chromium() -> Path:
    """Debian's chromium, installed by scripts/install_chromium.sh when missing."""
    if not CHROMIUM.exists():
        result = subprocess.run(
            ["bash", str(REPO_ROOT / "scripts" / "install_chromium.sh")], capture_output=True, text=True
        )
        if not CHROMIUM.exists():
            pytest.skip(
                f"chromium cannot be installed (install_chromium.sh said: {result.stderr.strip()[-500:]})"
            )
    return CHROMIUM


@pytest.fixture
def browser(chromium):
    """A headless Chromium with a fresh temporary profile (Playwright makes and removes it)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(chromium),
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--no-first-run",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield browser
        browser.close()


def _watch(page) -> dict[str, list]:
    """Collect dialogs (an alert means injected script ran) and console errors of `page`."""
    seen: dict[str, list] = {"dialogs": [], "errors": []}

    def on_dialog(dialog):
        seen["dialogs"].append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("console", lambda msg: msg.type == "error" and seen["errors"].append(msg.text))
    page.on("pageerror", lambda err: seen["errors"].append(str(err)))
    return seen


def _expect_pair(page, pair_id: str) -> None:
    """Wait until `pair_id` is fully on screen (app.js sets data-pair-id after the image loads)."""
    page.wait_for_selector(f'#task[data-pair-id="{pair_id}"]:not([hidden])', timeout=30_000)
    page.wait_for_function("() => !document.querySelector('#undo').disabled")


def test_labelling_by_click_keys_skip_and_undo_lands_exactly_in_the_database(browser, tmp_path, start_server):
    pairs = write_pairs(tmp_path, 6, overrides={3: {"caption_a": INJECTION, "prompt": "<b>bold?</b> & more"}})
    db = tmp_path / "labels.sqlite"
    token = add_labeler(db, "carol")
    server = start_server(pairs, db)
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    seen = _watch(page)

    page.goto(server.url + "/")
    page.wait_for_selector("#login:not([hidden])")
    page.fill("#token-input", "wrong-token")
    page.click("#login-form button")
    page.wait_for_function(
        "() => document.querySelector('#login-error').textContent.includes('not accepted')"
    )
    page.fill("#token-input", token)
    page.click("#login-form button")

    _expect_pair(page, "p000")
    assert page.text_content("#progress") == "0 / 6 labelled"
    assert page.text_content("#who") == "as carol"
    page.click("text=A is better")  # p000 = A (click)
    _expect_pair(page, "p001")
    page.keyboard.press("2")  # p001 = B (key)
    _expect_pair(page, "p002")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.wait_for_function("() => document.querySelector('#image').naturalWidth === 16")
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    page.click("#undo")  # removes p001 = B, p001 comes back
    _expect_pair(page, "p001")
    assert page.text_content("#progress") == "1 / 6 labelled"
    page.keyboard.press("1")  # p001 = A
    _expect_pair(page, "p002")
    page.keyboard.press("s")  # skip p002: it returns after the others
    _expect_pair(page, "p003")

    # The markup caption and prompt are text: no element made, no script run, no alert.
    assert page.text_content("#caption-a") == INJECTION
    assert page.text_content("#prompt") == "<b>bold?</b> & more"
    assert page.locator("#caption-a *, #prompt *").count() == 0
    assert page.locator("img[src=x], script:not([src])").count() == 0
    assert page.evaluate("() => window.__pwned") is None
    page.keyboard.press("3")  # p003 = tie

    _expect_pair(page, "p004")
    page.click("text=Both bad")  # p004 = both_bad (click)
    _expect_pair(page, "p005")
    page.keyboard.press("4")  # p005 = both_bad (key)
    _expect_pair(page, "p002")  # the skipped pair
    page.click("text=B is better")  # p002 = B
    page.wait_for_selector("#finished:not([hidden])")
    assert page.text_content("#progress") == "6 / 6 labelled"
    page.keyboard.press("u")  # undo p002 = B from the finished view
    _expect_pair(page, "p002")
    page.keyboard.press("1")  # p002 = A
    page.wait_for_selector("#finished:not([hidden])")

    assert db_labels(db) == {
        ("carol", "p000"): "A",
        ("carol", "p001"): "A",
        ("carol", "p002"): "A",
        ("carol", "p003"): "tie",
        ("carol", "p004"): "both_bad",
        ("carol", "p005"): "both_bad",
    }
    # The token survives a reload (localStorage): straight back to the finished view.
    page.reload()
    page.wait_for_selector("#finished:not([hidden])")
    assert seen["dialogs"] == []
    # The console logs the deliberate 401 of the wrong token; nothing else may appear.
    assert [e for e in seen["errors"] if "status of 401" not in e] == [], seen["errors"]
    assert SCREENSHOT.stat().st_size > 5_000


def test_url_token_login_missing_image_and_held_keys(browser, tmp_path, start_server):
    pairs = write_pairs(tmp_path, 2)
    db = tmp_path / "labels.sqlite"
    token = add_labeler(db, "dave")
    server = start_server(pairs, db)
    page = browser.new_page()
    seen = _watch(page)
    page.goto(f"{server.url}/?token={token}")
    _expect_pair(page, "p000")
    assert "token" not in page.url
    assert page.evaluate("() => localStorage.getItem('mmft-label-token')") == token
    (pairs.parent / "images" / "1.png").unlink()  # p001's image disappears from the server
    page.keyboard.press("2")
    _expect_pair(page, "p001")
    assert "image failed to load (404)" in page.text_content("#status")
    # An auto-repeated key (held down) is ignored, so it cannot label the pairs that follow.
    page.evaluate("() => document.dispatchEvent(new KeyboardEvent('keydown', {key: '1', repeat: true}))")
    page.keyboard.press("s")  # skipping the only pair left brings it straight back
    _expect_pair(page, "p001")  # waits for the skip round trip too (buttons re-enabled)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT pair_id, state FROM queue WHERE labeler = 'dave'").fetchall() == [
            ("p001", "skipped")
        ]
    assert db_labels(db) == {("dave", "p000"): "B"}
    # Keys typed into the login box are not labels: log out, type "1" there.
    page.click("#logout")
    page.wait_for_selector("#login:not([hidden])")
    page.type("#token-input", "1234su")
    assert db_labels(db) == {("dave", "p000"): "B"}
    assert seen["dialogs"] == []
    assert [e for e in seen["errors"] if "status of 404" not in e] == [], seen["errors"]  # the deleted image


def test_install_script_is_a_no_op_when_chromium_is_present(chromium):
    """The Makefile runs the script before every test run; with chromium present it must not touch apt."""
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "install_chromium.sh")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""
