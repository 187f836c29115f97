"""Media inactivity ends both legs of a bridged call.

The caller is a real `jego dial` process. Freezing it (SIGSTOP) stops its RTP at once, as a
crashed or cut-off app would, while its signalling socket stays open for a few more seconds: the
bridge, not the server's heartbeat, must notice first, BYE the phone side with Q.850 cause 41
(RFC 3326 Reason) and tell the app.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import PASSWORD, ROOT

from .bridge_util import PLAIN, carrier_record, phone_server, wait_for_log
from .test_dial import DIAL, _env


def test_no_audio_from_the_app_ends_both_legs(tmp_path: Path) -> None:
    server = phone_server(tmp_path / "srv", JEGO_BRIDGE_MEDIA_TIMEOUT_S="2")
    out = tmp_path / "dial.out"
    cmd = [*DIAL, "call", PLAIN, "--server", server.url, "--user", "alice", "--password", PASSWORD,
           "--play", "tone:440", "--duration", "40", "--json", "--quiet"]
    with open(out, "w") as fh:
        dialer = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=fh, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_log(server, "] connected", 30)
        time.sleep(3.0)  # audio flows: the 2 s timeout must not fire while it does
        assert dialer.poll() is None, out.read_text()
        assert "ending: no audio" not in server.log()
        frozen_at = time.monotonic()
        os.kill(dialer.pid, signal.SIGSTOP)
        cdr = carrier_record(server, PLAIN, timeout=15)
        ended_after = time.monotonic() - frozen_at
        os.kill(dialer.pid, signal.SIGCONT)
        dialer.wait(30)
    finally:
        if dialer.poll() is None:
            os.kill(dialer.pid, signal.SIGCONT)
            dialer.kill()
        server.stop()
    assert "ending: no audio from the app" in server.log()
    assert cdr["answer"] is not None and cdr["q850_cause"] == 41, cdr  # our BYE, Reason cause 41
    assert ended_after < 7.0, ended_after  # before the server's heartbeat would have dropped the app
    verdict = json.loads(out.read_text().strip().splitlines()[-1])
    assert verdict["outcome"] == "answered" and verdict["q850_cause"] == 41, verdict
