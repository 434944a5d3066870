"""newsletter: publish an email newsletter with a sponsor footer."""

__version__ = "0.1.0"
