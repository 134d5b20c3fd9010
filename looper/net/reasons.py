"""Why a session ended, and how it was served: the values of
looper.session.closed's `reason` and `mode`, named once (docs/events.md
explains each). StrEnums: they are logged as the strings they are.

CloseReason lives with the machines' actions (a machine's Close says why),
in proto/actions.py; it is named here too for the session kinds."""

from __future__ import annotations

from enum import StrEnum

from looper.proto.actions import CloseReason

__all__ = ["CloseReason", "SessionMode"]


class SessionMode(StrEnum):
    REFLECT = "reflect"  # spliced to the client's own server
    EMULATE = "emulate"  # served by the emulated relay
    HANGUP = "hangup"  # 421 and close
    REFUSED = "refused"  # blocked or over the rate: closed unanswered
