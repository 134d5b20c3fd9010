"""A message writer that answers what $LIAR_ANSWER says (default: nonsense) to
every read (tests/test_capture.py starts it in the real one's place)."""

import os

answer = os.environ.get("LIAR_ANSWER", "bogus\n").encode()
while os.read(0, 1 << 16):
    os.write(1, answer)
