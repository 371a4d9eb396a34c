"""The local Ray instance a run starts: on loopback, closed to any process without its token, and gone
with its driver, even after SIGKILL. These tests start real Ray instances and real foreign drivers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import ray

from harness import reaper
from harness.runner import ray_session

HARNESS = str(Path(sys.executable).with_name("harness"))
PLUGIN = Path(__file__).with_name("ray_plugins.py")
JOIN = (
    "import ray, sys\n"
    "ray.init(address=sys.argv[1], log_to_driver=False)\n"
    "print('JOINED', ray.get(ray.remote(lambda: 6 * 7).remote()))\n"
)


def listening(pids: set[int]) -> list[str]:
    """``IP:PORT`` of every TCP socket the processes ``pids`` listen on, read from /proc."""
    inodes = {}
    for pid in pids:
        try:
            for fd in os.scandir(f"/proc/{pid}/fd"):
                target = os.readlink(fd.path)
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = pid
        except OSError:  # the process ended meanwhile
            continue
    found = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                address, port = local.split(":")
                found.append(f"{_ip(address, width)}:{int(port, 16)}")
    return found


def _ip(hex_address: str, width: int) -> str:
    """/proc/net/tcp's little-endian hex address as text (IPv4, or IPv6 with a mapped IPv4 shown as such)."""
    words = [bytes.fromhex(hex_address[i : i + 8])[::-1] for i in range(0, width, 8)]
    raw = b"".join(words)
    if len(raw) == 16 and raw[:12] == b"\0" * 10 + b"\xff\xff":
        raw = raw[12:]
    if len(raw) == 4:
        return ".".join(map(str, raw))
    return ":".join(raw[i : i + 2].hex() for i in range(0, 16, 2))


def foreign_driver(gcs: str, **env: str) -> subprocess.CompletedProcess:
    """Another process of this machine trying to use the instance, with the environment ``env`` adds."""
    base = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", reaper.MARKER)}
    # Ray's single-machine mode, so the foreign driver looks for the instance's node on loopback too
    base |= {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_gcs_server_port_wait_time_s": "5"}
    return subprocess.run(
        [sys.executable, "-c", JOIN, gcs], env=base | env, capture_output=True, text=True, timeout=120
    )


def test_a_local_ray_listens_on_loopback_only_and_refuses_a_driver_without_its_token() -> None:
    assert os.environ["RAY_AUTH_MODE"] == "disabled"  # conftest: the caller's environment says no auth
    with ray_session() as local:
        assert local
        session, token = os.environ[reaper.MARKER], os.environ["RAY_AUTH_TOKEN"]
        assert os.environ["RAY_AUTH_MODE"] == "token" and len(token) == 64
        assert ray.get(ray.remote(lambda: os.environ.get("RAY_AUTH_TOKEN")).remote()) == token
        gcs = ray.get_runtime_context().gcs_address
        time.sleep(2)  # the raylet's agents are up
        during = reaper.members(session)
        names = {Path(f"/proc/{pid}/comm").read_text().strip() for pid, _ in during}
        assert {"gcs_server", "raylet", "ray::DashboardA", "ray::RuntimeEnv"} <= names, names
        sockets = listening({pid for pid, _ in during} | {os.getpid()})
        assert gcs in sockets
        assert all(address.startswith("127.0.0.1:") for address in sockets), sockets

        refused = foreign_driver(gcs, RAY_AUTH_MODE="disabled")
        assert refused.returncode != 0 and "JOINED" not in refused.stdout
        assert "ConnectionError" in refused.stderr and "InvalidAuthToken" in refused.stderr
        wrong = foreign_driver(gcs, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 64)
        assert wrong.returncode != 0 and "InvalidAuthToken" in wrong.stderr
        joined = foreign_driver(gcs, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)  # the same call, with the token
        assert joined.returncode == 0 and "JOINED 42" in joined.stdout, joined.stderr

    assert (os.environ["RAY_AUTH_MODE"], os.environ.get("RAY_AUTH_TOKEN")) == ("disabled", None)
    assert reaper.MARKER not in os.environ
    assert [p for p in during if reaper.alive(p)] == [], "nothing of the instance outlives the session"
    assert not (Path(os.environ["HOME"]) / ".ray").exists(), "no token file in the home folder"


def descendants(root: int) -> dict[tuple[int, str], str]:
    """Every process below ``root`` as {(pid, start time): name}, read from /proc."""
    parents, names = {}, {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            key = (int(entry.name), fields[19])
            parents[key], names[key] = int(fields[1]), stat[stat.index("(") + 1 : stat.rindex(")")]
    found, frontier = {}, {root}
    while frontier:
        children = {key for key, parent in parents.items() if parent in frontier and key not in found}
        found.update({key: names[key] for key in children})
        frontier = {pid for pid, _ in children}
    return found


def still_alive(processes: dict[tuple[int, str], str]) -> dict[tuple[int, str], str]:
    left = {}
    for (pid, started), name in processes.items():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[19] == started and fields[0] != "Z":
            left[(pid, started)] = name
    return left


def test_sigkill_of_the_driver_ends_every_process_of_its_ray(write_spec, results_dir, tmp_path) -> None:
    arrived = tmp_path / "arrived"
    spec = write_spec(f"""
name: killed
plugins: [{PLUGIN}]
models: [lenet_300_100]
datasets: [digits]
methods: [{{name: rendezvous, folder: "{arrived}", hold: 120}}]
sparsities: [0.5]
seeds: [0]
pretrain: {{epochs: 1, lr: 0.05, batch_size: 64}}
finetune: {{epochs: 0}}
""")
    driver = subprocess.Popen(
        [HARNESS, "run", str(spec), "--results", str(results_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not arrived.is_dir():  # a cell is running: Ray is fully up
        assert driver.poll() is None and time.monotonic() < deadline, "the cell never started"
        time.sleep(0.2)
    time.sleep(2)
    running = descendants(driver.pid)
    assert {"gcs_server", "raylet", "ray::DashboardA", "ray::RuntimeEnv"} <= set(running.values()), running
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    deadline = time.monotonic() + reaper.SWEEP_SECONDS
    while (left := still_alive(running)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == {}, f"processes of the killed run survive: {left}"
