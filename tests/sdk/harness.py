"""Start runwared (and, for fault tests, a separate simulator) for the SDK checks.

The official SDKs are pointed at the daemon's Runware-protocol endpoint
exactly as they would be at Runware: only their URL changes.
"""

import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BINARY = os.environ.get("RUNWARED_BIN", str(ROOT / "target/debug/runwared"))


class Process:
    """A runwared process whose stderr is read on a thread."""

    def __init__(self, args, env=None, stdout=False):
        self.proc = subprocess.Popen(
            [BINARY, *args],
            stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={"PATH": os.environ.get("PATH", ""), "NO_COLOR": "1", **(env or {})},
        )
        self.lines = []
        self._seen = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stderr:
            with self._seen:
                self.lines.append(line)
                self._seen.notify_all()

    def wait_for(self, pattern, timeout=30):
        """The first match of `pattern` in the log, waiting for it."""
        regex = re.compile(pattern)
        with self._seen:
            found = self._seen.wait_for(
                lambda: any(regex.search(l) for l in self.lines) or self.proc.poll() is not None,
                timeout=timeout,
            )
            for line in self.lines:
                m = regex.search(line)
                if m:
                    return m
        raise AssertionError(f"no {pattern!r} in the log ({found}):\n{''.join(self.lines)}")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        return out


def start_daemon(*extra, env=None):
    """`runwared serve` with only the Runware endpoint on a free loopback port.

    Returns the process and the endpoint's `ws://` URL.
    """
    socket = Path(tempfile.mkdtemp()) / "runwared.sock"
    d = Process(
        ["serve", "--listen", "none", "--unix-socket", str(socket),
         "--runware-listen", "127.0.0.1:0", *extra],
        env=env,
    )
    addr = d.wait_for(r"Runware protocol .* addr=(\S+)").group(1)
    d.wait_for(r"upstream ready|connected to Runware|Runware session")
    return d, f"ws://{addr}/v1"


def start_simulator(*extra):
    """`runwared sim` on a free loopback port; returns the process and its URL."""
    sim = Process(["sim", "--listen", "127.0.0.1:0", *extra], stdout=True)
    url = sim.proc.stdout.readline().strip()
    assert url.startswith("ws://"), url
    return sim, url


def start_faulty_simulator(every="700ms", latency="400ms"):
    """A separate simulator that aborts the daemon's socket every `every`.

    Returns the process and its URL; `stop()` prints its counts as JSON.
    """
    return start_simulator(
        "--latency", latency, "--per-result-latency", "150ms", "--fault", "drop",
        "--fault-every", every,
    )


def sim_counts(sim):
    """The simulator's counts, printed as its last line when it stops."""
    out = sim.stop()
    return json.loads(out.strip().splitlines()[-1])


def rest(url, tasks, key="local"):
    """POST a task array to the server's REST door."""
    http = url.replace("ws://", "http://")
    req = urllib.request.Request(
        http,
        data=json.dumps(tasks).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def server_items(url, task_uuid, expect, timeout=15):
    """The items the server holds for a task (getResponse over REST; the
    daemon answers from its table): what it sent the SDK, whatever the SDK
    kept of it. An SDK may return
    before the task is complete (keeping fewer results than it asked for),
    so this waits, bounded, until `expect` items are there."""
    deadline = time.monotonic() + timeout
    while True:
        answer = rest(url, [{"taskType": "getResponse", "taskUUID": task_uuid}])["data"]
        items = [i for i in answer if i.get("status") != "processing"]
        if len(items) >= expect or time.monotonic() > deadline:
            return items
        time.sleep(0.05)
