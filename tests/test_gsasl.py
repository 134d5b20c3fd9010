"""DIGEST-MD5 and CRAM-MD5 against a real, independent SASL client: GNU SASL's
gsasl (Debian package gsasl), over a real socket to the emulated relay with
the sendmail persona, as Debian's sendmail offers them. gsasl checks the
server's rspauth too: a wrong proof fails its login."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess

import pytest

from tests.conftest import EMULATED_HOST

GSASL = shutil.which("gsasl")

if GSASL is None:
    if os.environ.get("LOOPER_REQUIRE_GSASL") == "1":
        raise RuntimeError("LOOPER_REQUIRE_GSASL=1 but gsasl is missing (sudo make test-tools)")
    pytest.skip("gsasl is not installed (sudo make test-tools)", allow_module_level=True)


def gsasl(trap, mechanism: str, password: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [GSASL, "--smtp", f"--connect={trap.host}:{trap.port}", "--no-starttls", f"--mechanism={mechanism}",
         "--authentication-id=admin", f"--password={password}", f"--hostname={EMULATED_HOST}", "--verbose"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
    )


async def start_sendmail(relay):
    return await relay(smtp={"persona": "sendmail", "auth_mechanisms": ["DIGEST-MD5", "CRAM-MD5"]},
                       credentials=["admin:hunter2"])


@pytest.mark.parametrize("mechanism", ["DIGEST-MD5", "CRAM-MD5"])
async def test_gsasl_logs_in_and_takes_our_proof(relay, mechanism):
    trap = await start_sendmail(relay)
    done = await asyncio.to_thread(gsasl, trap, mechanism, "hunter2")
    assert done.returncode == 0, done.stdout + done.stderr
    (success,) = await trap.events.wait_for("looper.login.success")
    assert success["mechanism"] == mechanism and success["username"] == "admin" and "password" not in success
    if mechanism == "DIGEST-MD5":
        assert success["digest_uri"] == f"smtp/{EMULATED_HOST}" and success["realm"] == EMULATED_HOST
        assert success["nc"] == "00000001" and success["qop"] == "auth"


async def test_gsasl_with_a_wrong_password_fails_and_is_logged(relay):
    trap = await start_sendmail(relay)
    done = await asyncio.to_thread(gsasl, trap, "DIGEST-MD5", "guess")
    assert done.returncode != 0
    (failed,) = await trap.events.wait_for("looper.login.failed")
    assert failed["mechanism"] == "DIGEST-MD5" and failed["reason"] == "bad credentials"
    assert len(failed["digest"]) == 32 and failed["cnonce"]
