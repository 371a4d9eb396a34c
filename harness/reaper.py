"""Ends every process of a local Ray instance when its driver ends, even when the driver is SIGKILLed.

Ray's own clean-up runs only if the driver lives to call ``ray.shutdown()``, and its dashboard and
runtime-env agents ignore SIGTERM. So before starting Ray the driver starts this small process
(standard library only, in a session of its own so Ctrl-C does not reach it) and keeps a pipe to
it open; the pipe closes when the driver ends, however it ends. Meanwhile the reaper keeps a list
of the instance's processes: those whose environment carries the instance's marker (the driver
set it before starting Ray, so the GCS, raylet and workers inherit it) and all their descendants,
since the agents rename themselves over their environment and the marker is no longer readable
there. Once the pipe closes, it SIGKILLs every one still alive (a PID is matched with its start
time, so a reused PID is never hit). Linux only (it reads ``/proc``); elsewhere it does nothing
and Ray's own clean-up is all there is.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

MARKER = "HARNESS_RAY_SESSION"  # environment variable naming the local instance a process belongs to
WATCH_SECONDS = 1.0  # how often the list of the instance's processes is refreshed while the driver lives
SWEEP_SECONDS = 30.0  # give up after this long if processes keep appearing
QUIET_SWEEPS = 3  # this many empty sweeps in a row: nothing is left

Process = tuple[int, int]  # (pid, start time in clock ticks since boot): a PID reused later differs


def start(session: str) -> subprocess.Popen:
    """The reaper of ``session``; close its stdin (or die) and it ends the instance's processes."""
    env = {key: value for key, value in os.environ.items() if key != MARKER}
    command = [sys.executable, "-m", "harness.reaper", session]
    return subprocess.Popen(command, stdin=subprocess.PIPE, env=env, start_new_session=True)


def members(session: str) -> set[Process]:
    """The processes of this user marked as part of ``session``, and their descendants."""
    needle = f"{MARKER}={session}".encode()
    parents: dict[int, int] = {}
    started: dict[int, int] = {}
    marked = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        try:  # a process may end while we look; another user's environment cannot be read
            stat = Path(entry.path, "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (name) ": state, ppid, ...
            parents[pid], started[pid] = int(fields[1]), int(fields[19])
            if needle in Path(entry.path, "environ").read_bytes().split(b"\0"):
                marked.append(pid)
        except (OSError, ValueError, IndexError):
            continue
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    found, stack = set(), marked
    while stack:
        pid = stack.pop()
        if pid not in found:
            found.add(pid)
            stack.extend(children.get(pid, []))
    return {(pid, started[pid]) for pid in found}


def alive(process: Process) -> bool:
    pid, start_time = process
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19]) == start_time and fields[0] != "Z"  # a zombie is dead, only not yet waited for


def sweep(session: str, known: set[Process]) -> None:
    """SIGKILL the session's processes, those seen before and any found now, until none is left."""
    deadline = time.monotonic() + SWEEP_SECONDS
    quiet = 0
    while quiet < QUIET_SWEEPS and time.monotonic() < deadline:
        known = {process for process in known | members(session) if alive(process)}
        for pid, _ in known:
            with contextlib.suppress(ProcessLookupError, PermissionError):  # it ended meanwhile
                os.kill(pid, signal.SIGKILL)
        quiet = 0 if known else quiet + 1
        time.sleep(0.1)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    session = sys.argv[1]
    if not Path("/proc/self/stat").exists():
        sys.stdin.buffer.read()
        return
    known: set[Process] = set()
    while True:  # until the driver closes the pipe or dies
        readable, _, _ = select.select([sys.stdin], [], [], WATCH_SECONDS)
        if readable and not os.read(sys.stdin.fileno(), 4096):
            break
        known = {process for process in known if alive(process)} | members(session)
    sweep(session, known)


if __name__ == "__main__":
    main()
