"""Honeypot detectors package."""
# Vendored from f0rw4rd/potsnitch: only the SMTP detector.
