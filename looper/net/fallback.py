"""What a client gets when it cannot be reflected: the one entry point.

For now it is what the original smtplooper did, a polite hang-up. The
emulated mail server takes over here, with the client's early bytes, without
the reflect path knowing.
"""

from __future__ import annotations

import asyncio

HANGUP_REPLY = b"421 4.3.2 Service not available, closing transmission channel\r\n"


def fall_back(on_failure: str, transport: asyncio.Transport, early_bytes: bytes) -> str:
    """Serve the client that could not be reflected; returns the session mode."""
    del on_failure, early_bytes  # one mode so far
    transport.write(HANGUP_REPLY)
    transport.close()
    return "hangup"
