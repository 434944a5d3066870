"""The preview in a real browser: headless Chromium (Debian's `chromium`) driven by Playwright.

Playwright only drives the browser here; it never downloads one. Screenshots of
the desktop frame, the phone frame and the whole page go to test-output/.

Run this file to regenerate the README's screenshot, docs/preview.png, through
the same code as the test:

    .venv/bin/python tests/test_preview_browser.py
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_support import chromium_page

from newsletter.web import preview

REPO = Path(__file__).resolve().parents[1]
SAMPLE_ISSUE = "2024-11-25-motivated-biden-authorize-ukraines-use-atacms.md"
SECRET = "preview-browser-test-secret-0123456789abcdef"
VIEWPORT = {"width": 1600, "height": 1000}
TEST_OUTPUT = REPO / "test-output"
README_SCREENSHOT = REPO / "docs" / "preview.png"
FRAMES_LOADED = """() => {
  const frames = [...document.querySelectorAll("iframe[data-frame]")];
  const version = document.body.dataset.version;
  return frames.length === 2 && frames.every(f => f.dataset.loaded === version);
}"""

try:
    from playwright.sync_api import Frame, Page, expect
except ImportError:  # pragma: no cover - reported by the `browser` marker (tests/services.py)
    expect = None  # type: ignore[assignment]


def copy_site(root: Path) -> Path:
    """A copy of the sample publication under `root`; returns the issue's path."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "newsletter.toml", root / "newsletter.toml")
    shutil.copytree(REPO / "templates", root / "templates")
    shutil.copytree(REPO / "issues", root / "issues")
    return root / "issues" / SAMPLE_ISSUE


@contextlib.contextmanager
def preview_in_browser(root: Path, send_test: preview.SendTest | None = None) -> Iterator[Page]:
    """The sample issue (copied under `root`) previewed in headless Chromium, frames loaded."""
    issue = copy_site(root / "site")
    config_path = root / "site" / "newsletter.toml"
    srv = preview.server(preview.issue_preview(config_path, issue, send_test=send_test))
    srv.start()
    try:
        with chromium_page(root / "chromium-profile", VIEWPORT) as page:
            page.goto(srv.url)
            page.wait_for_function(FRAMES_LOADED)
            yield page
    finally:
        srv.stop()


def frame(page: Page, name: str) -> Frame:
    handle = page.locator(f'iframe[data-frame="{name}"]').element_handle()
    assert handle is not None
    content = handle.content_frame()
    assert content is not None
    return content


def save_screenshots(page: Page, folder: Path) -> dict[str, Path]:
    """The whole page and each frame as PNG files in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    shots = {
        "page": folder / "preview-page.png",
        "desktop": folder / "preview-desktop.png",
        "phone": folder / "preview-phone.png",
    }
    page.screenshot(path=str(shots["page"]))
    for name in ("desktop", "phone"):
        page.locator(f'iframe[data-frame="{name}"]').screenshot(path=str(shots[name]))
    return shots


def make_readme_screenshot(target: Path = README_SCREENSHOT) -> Path:
    """Regenerate docs/preview.png: the page as the browser test sees it."""
    os.environ.setdefault("NEWSLETTER_SECRET", SECRET)
    with tempfile.TemporaryDirectory() as tmp, preview_in_browser(Path(tmp)) as page:
        shots = save_screenshots(page, Path(tmp) / "shots")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shots["page"], target)
    return target


@pytest.fixture
def browser_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    """The browser itself is checked by the `browser` marker this fixture brings (conftest)."""
    monkeypatch.setenv("NEWSLETTER_SECRET", SECRET)
    monkeypatch.delenv("NEWSLETTER_CONFIG", raising=False)


def test_preview_in_chromium(browser_ready: None, tmp_path: Path) -> None:
    with preview_in_browser(tmp_path) as page:
        for name in ("desktop", "phone"):
            expect(frame(page, name).locator('[data-block="sponsor"]')).to_be_visible()

        width = frame(page, "phone").evaluate(
            "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert width[1] == 375, width
        assert width[0] <= width[1], f"the phone frame scrolls sideways: {width}"

        shots = save_screenshots(page, TEST_OUTPUT)
        assert all(path.stat().st_size > 0 for path in shots.values())

        # An edit shows up in both frames within 3 s, and the page itself never reloads.
        page.evaluate("window.sameDocument = true")
        issue = tmp_path / "site" / "issues" / SAMPLE_ISSUE
        text = issue.read_text(encoding="utf-8")
        tmp = issue.with_name(".saving.md")
        tmp.write_text(text + "\n\nEdited in the browser test.\n", encoding="utf-8")
        os.replace(tmp, issue)
        for name in ("desktop", "phone"):
            edited = frame(page, name).get_by_text("Edited in the browser test.")
            expect(edited).to_be_visible(timeout=3_000)
        assert page.evaluate("window.sameDocument") is True

        # The display switches: dark mode inverts the frame, blocked images reload it so.
        page.get_by_label("Dark mode (inverted)").check()
        dark = frame(page, "desktop").evaluate(
            "() => getComputedStyle(document.documentElement).filter"
        )
        assert "invert(1)" in dark
        page.get_by_label("Block images").check()
        page.wait_for_function(
            """() => [...document.querySelectorAll("iframe[data-frame]")]
                .every(f => f.src.includes("images=off") && f.dataset.loaded)"""
        )
        # The iframe's src changes before its document does: wait for the navigation too.
        for _ in range(50):
            if "images=off" in frame(page, "phone").url:
                break
            page.wait_for_timeout(100)
        assert "images=off" in frame(page, "phone").url


def test_send_test_button_sends_with_the_page_token(browser_ready: None, tmp_path: Path) -> None:
    calls = []

    def send_test() -> str:
        calls.append(1)
        return "sent to 2 test recipients"

    with preview_in_browser(tmp_path, send_test=send_test) as page:
        page.get_by_role("button", name="Send test").click()
        expect(page.locator("[data-send-result]")).to_have_text("sent to 2 test recipients")
    assert calls == [1]


if __name__ == "__main__":
    print(make_readme_screenshot())
    sys.exit(0)
