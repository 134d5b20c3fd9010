"""The plain hang-up, for a client that can be neither reflected nor served.

It is what the original smtplooper did: a polite 421, then close. The
emulated relay (emulate.py) is the default fallback; this one remains for
`dialback.on_failure: hangup`, for clients over the session limits, and
for the trap's own dial-backs arriving back.
"""

from __future__ import annotations

import asyncio

HANGUP_REPLY = b"421 4.3.2 Service not available, closing transmission channel\r\n"


def hang_up(transport: asyncio.Transport) -> None:
    transport.write(HANGUP_REPLY)
    transport.close()
