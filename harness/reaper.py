"""Ends every process of a local Ray instance when its driver ends, even when the driver is SIGKILLed.

Ray's own clean-up runs only if the driver lives to call ``ray.shutdown()``, and some of its agents
ignore SIGTERM. So before starting Ray the driver starts this small process (standard library
only, in a session of its own so Ctrl-C does not reach it) and keeps a pipe to it open; the pipe
closes when the driver ends, however it ends. The reaper then SIGKILLs every process whose
environment carries the instance's marker, which the driver set before starting Ray so that
every Ray process (GCS, raylet, agents, workers) inherits it. Linux only (it reads ``/proc``);
elsewhere it does nothing and Ray's own clean-up is all there is.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

MARKER = "HARNESS_RAY_SESSION"  # environment variable naming the local instance a process belongs to
SWEEP_SECONDS = 30.0  # give up after this long if processes keep appearing
QUIET_SWEEPS = 3  # this many empty sweeps in a row: nothing is left


def start(session: str) -> subprocess.Popen:
    """The reaper of ``session``; close its stdin (or die) and it ends the instance's processes."""
    env = {key: value for key, value in os.environ.items() if key != MARKER}
    command = [sys.executable, "-m", "harness.reaper", session]
    return subprocess.Popen(command, stdin=subprocess.PIPE, env=env, start_new_session=True)


def members(session: str) -> list[int]:
    """The processes of this user whose environment marks them as part of ``session``."""
    needle = f"{MARKER}={session}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:  # another user's process cannot be read, and a process may end while we look
            environ = Path(entry.path, "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def sweep(session: str) -> None:
    """SIGKILL the session's processes until several sweeps in a row find none (a raylet may still fork)."""
    if not Path("/proc/self/environ").exists():
        return
    deadline = time.monotonic() + SWEEP_SECONDS
    quiet = 0
    while quiet < QUIET_SWEEPS and time.monotonic() < deadline:
        pids = members(session)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):  # it ended meanwhile
                os.kill(pid, signal.SIGKILL)
        quiet = 0 if pids else quiet + 1
        time.sleep(0.1)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stdin.buffer.read()  # returns when the driver closes the pipe or dies
    sweep(sys.argv[1])


if __name__ == "__main__":
    main()
