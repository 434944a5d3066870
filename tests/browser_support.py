"""A page of headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) for the
browser tests; the `browser` marker (tests/services.py) checks that both are there."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services import CHROMIUM

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
TIMEOUT_MS = 10_000


@contextlib.contextmanager
def chromium_page(profile: Path, viewport: dict[str, int], **options: Any) -> Iterator[Page]:
    """A page of a fresh browser (its user-data-dir `profile`, new each time) at
    `viewport`, one CSS pixel a pixel; `options` go to launch_persistent_context."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport=viewport,  # type: ignore[arg-type]
            device_scale_factor=1,
            **options,
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            yield page
        finally:
            context.close()
