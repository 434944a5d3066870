"""One error family. The CLI turns each into a one-line message and an exit code."""


class NewsletterError(Exception):
    """A user-facing problem: bad input, bad configuration, a refused operation.

    The message is one line that says what is wrong and where (file, line, key).
    """

    exit_code = 1


class ConfigError(NewsletterError):
    """newsletter.toml (or an environment override) is missing or invalid."""

    exit_code = 2


class UsageError(NewsletterError):
    """A command was given a value it cannot use (a time, a zone, a cron expression, a
    file that is not there) or options that do not fit together. Exit 2, like click's
    own usage errors."""

    exit_code = 2


class ContentError(NewsletterError):
    """An issue or article file cannot be read or is malformed."""


class TemplateError(NewsletterError):
    """A template cannot be loaded or rendered."""


class CheckFailed(NewsletterError):
    """`check` found errors and the caller asked not to go on."""
