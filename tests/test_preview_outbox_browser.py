"""The outbox preview's layout in headless Chromium (issue 17, polish): at 1400 px the
list of messages sits beside the message; only a narrow window stacks them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from browser_support import chromium_page
from test_preview_browser import (  # noqa: F401 - browser_ready is a fixture
    FRAMES_LOADED,
    browser_ready,
    copy_site,
)

from newsletter import config
from newsletter.issue import publish
from newsletter.web import preview

if TYPE_CHECKING:
    from playwright.sync_api import Page


def outbox_with_a_message(root: Path) -> Path:
    issue = copy_site(root / "site")
    cfg = config.load(root / "site" / "newsletter.toml")
    filled = publish.sample(cfg, publish.build_issue(cfg, publish.load_issue(issue)))
    outbox = root / "outbox"
    outbox.mkdir()
    (outbox / "1-issue.eml").write_bytes(filled.message)
    return outbox


def boxes(page: Page) -> tuple[dict[str, float], dict[str, float]]:
    """The bounding boxes of the message list and of the message's desktop frame."""
    listed = page.locator("nav.outbox").bounding_box()
    message = page.locator('iframe[data-frame="desktop"]').bounding_box()
    assert listed is not None and message is not None
    return dict(listed), dict(message)


@pytest.mark.parametrize(("width", "beside"), [(1400, True), (1920, True), (800, False)])
def test_the_list_and_the_message_side_by_side_at_1400(
    browser_ready: None,  # noqa: F811
    tmp_path: Path,
    width: int,
    beside: bool,
) -> None:
    outbox = outbox_with_a_message(tmp_path)
    srv = preview.server(preview.outbox_preview(outbox))
    srv.start()
    try:
        with chromium_page(tmp_path / "chromium-profile", {"width": width, "height": 900}) as page:
            page.goto(srv.url)
            page.wait_for_function(FRAMES_LOADED)
            listed, message = boxes(page)
            page_width = page.evaluate("() => document.documentElement.scrollWidth")
    finally:
        srv.stop()
    list_right = listed["x"] + listed["width"]
    if beside:
        # Left of the message, and at the same height (both start in the first screen).
        assert list_right <= message["x"], (listed, message)
        assert message["y"] < listed["y"] + listed["height"], (listed, message)
        assert message["y"] < 900, (listed, message)
        assert page_width <= width, f"the page scrolls sideways at {width} px: {page_width}"
    else:
        assert listed["y"] + listed["height"] <= message["y"], (listed, message)
