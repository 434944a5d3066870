"""Read newsletter.toml once into frozen objects.

Every key is checked here, when the file is read, and every message names the
file and the key. After loading, the rest of the code trusts the Config.

Any key can be overridden from the environment as NEWSLETTER_<SECTION>_<KEY>
(for example NEWSLETTER_SMTP_PORT=2525, NEWSLETTER_SPONSORS_HELLOSHUTTLE_PHONE).

The package: sections.py (the dataclasses), reading.py (the file and the
environment), rules.py (validation beyond types). Import from here.

The names load when first used (PEP 562), so that `import newsletter.config` costs
nothing until a command reads the file: `newsletter --help` and shell completion
never do.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from newsletter.config.constants import (
        CONFIG_NAME,
        DKIM_ALGORITHMS,
        ENV_CONFIG,
        ENV_PREFIX,
    )
    from newsletter.config.reading import SECTIONS, find_config, load
    from newsletter.config.rules import HEADER_FORBIDDEN, header_value_problem
    from newsletter.config.sections import (
        MAX_SECONDS,
        SMTP_TIMEOUTS,
        Bounces,
        Check,
        Config,
        ConsoleSettings,
        Database,
        Dkim,
        Paths,
        Preview,
        Publication,
        Sample,
        Schedule,
        Signup,
        Smtp,
        Sponsor,
        Tracking,
        Utm,
        Workers,
        did_you_mean,
        parse_duration,
    )

__all__ = [
    "CONFIG_NAME",
    "DKIM_ALGORITHMS",
    "ENV_CONFIG",
    "ENV_PREFIX",
    "HEADER_FORBIDDEN",
    "MAX_SECONDS",
    "SECTIONS",
    "SMTP_TIMEOUTS",
    "Bounces",
    "Check",
    "Config",
    "ConsoleSettings",
    "Database",
    "Dkim",
    "Paths",
    "Preview",
    "Publication",
    "Sample",
    "Schedule",
    "Signup",
    "Smtp",
    "Sponsor",
    "Tracking",
    "Utm",
    "Workers",
    "did_you_mean",
    "find_config",
    "header_value_problem",
    "load",
    "parse_duration",
]

# Where each name lives; the rest are in sections.py.
_HOMES = {
    "CONFIG_NAME": "constants",
    "DKIM_ALGORITHMS": "constants",
    "ENV_CONFIG": "constants",
    "ENV_PREFIX": "constants",
    "SECTIONS": "reading",
    "find_config": "reading",
    "load": "reading",
    "HEADER_FORBIDDEN": "rules",
    "header_value_problem": "rules",
}


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{_HOMES.get(name, 'sections')}")
    value = getattr(module, name)
    globals()[name] = value  # once: later look-ups do not come here
    return value
