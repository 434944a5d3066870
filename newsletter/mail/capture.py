"""A local capture SMTP server (aiosmtpd): every message it receives becomes a .eml file.

For the demo and for editors: point [smtp] at it and look at what was sent.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from newsletter.errors import NewsletterError


class CaptureHandler:
    def __init__(self, outbox: Path) -> None:
        self.outbox = outbox
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self.count = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            n = next(self._seq)
            self.count += 1
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{n:06d}.eml"
        tmp = self.outbox / f".{name}.tmp"
        tmp.write_bytes(envelope.original_content or envelope.content)
        os.replace(tmp, self.outbox / name)
        return "250 Message accepted for delivery"


def start(outbox: Path, host: str = "127.0.0.1", port: int = 1025) -> Controller:
    """Start the capture server in a background thread; call .stop() on the result."""
    outbox.mkdir(parents=True, exist_ok=True)
    handler = CaptureHandler(outbox)
    controller = Controller(handler, hostname=host, port=port, ready_timeout=10)
    try:
        controller.start()
    except (OSError, RuntimeError) as exc:
        raise NewsletterError(f"smtpd: cannot listen on {host}:{port}: {exc}") from None
    return controller
