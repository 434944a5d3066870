"""What the CLI needs of the configuration before any file is read: the file's name, the
variables that override it, the values `dkim keygen --algorithm` offers. Apart from
sections.py (which re-exports them), so that `--help` and completion load no dataclass."""

from __future__ import annotations

CONFIG_NAME = "newsletter.toml"

ENV_CONFIG = "NEWSLETTER_CONFIG"

ENV_PREFIX = "NEWSLETTER_"

# [dkim] algorithm: what mail/dkim signs with (RFC 6376 section 3.3; RFC 8463 for Ed25519).
DKIM_ALGORITHMS = ("rsa-sha256", "ed25519-sha256")
