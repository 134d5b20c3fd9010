"""PotSnitch - Low-interaction honeypot detection tool."""

__version__ = "0.1.0"
