"""Honeypot probing utilities and credential databases."""
# Vendored from f0rw4rd/potsnitch: the re-exports are left out.
