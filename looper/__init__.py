"""looper: a reflective relay trap for open SMTP relays."""

__version__ = "0.1.0"
