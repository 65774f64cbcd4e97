"""Measures runwared as a Python user meets it, against a Python client of
Runware's own WebSocket talking directly to the simulator.

Small tasks (promptEnhance, one version) by concurrency, along each path:

    ws-direct     a plain `websockets` client of the simulator (the floor)
    ws-endpoint   the same client pointed at the daemon's Runware endpoint
    grpc-unary    grpcio, one PromptEnhance call per task
    grpc-session  grpcio, one Session stream, one message per submit
    grpc-batch    grpcio, one BatchSession stream: what is queued goes in
                  one `submits` message, events come in batches

Large results (imageInference, one base64 image of N MB, 16 in flight), each
client ending with the image's bytes:

    ws-direct     json.loads and base64-decodes each result
    grpc-base64   ImageInference, base64 in the message, decoded by the client
    grpc-bytes    ImageInference with image_bytes (decoded once by the daemon)

It starts `runwared sim` and `runwared serve` itself (loopback only), also
runs `runwared bench --scenarios large` (the same sizes from a Rust client,
with the daemon's CPU and memory), and writes the figures as JSON and charts
(SVG) of each path's throughput over the direct client's:

    python examples/python/bench.py --bin target/release/runwared --out bench-out

Every loop is bounded: `--tasks` per concurrency, `--large-tasks` per size,
and `--limit` seconds per run.
"""

import argparse
import asyncio
import base64
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import threading
import time
import uuid

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import runwared_client  # noqa: E402

SMALL_PATHS = ["ws-direct", "ws-endpoint", "grpc-unary", "grpc-session", "grpc-batch"]
LARGE_PATHS = ["ws-direct", "grpc-base64", "grpc-bytes"]


def cpu_seconds(pid):
    """User + system CPU of a process, from /proc."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Servers:
    """A simulator and a daemon against it, on free loopback ports."""

    def __init__(self, binary, image_bytes=None):
        sim_args = [binary, "sim", "--listen", "127.0.0.1:0", "--latency", "0ms",
                    "--per-result-latency", "0ms"]
        if image_bytes:
            sim_args += ["--image-bytes", str(image_bytes)]
        env = {"PATH": os.environ.get("PATH", ""), "NO_COLOR": "1", "RUNWARED_LOG": "warn"}
        self.sim = subprocess.Popen(sim_args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                    text=True, env=env)
        self.sim_url = self.sim.stdout.readline().strip()
        self.daemon = subprocess.Popen(
            [binary, "serve", "--upstream-url", self.sim_url, "--listen", "127.0.0.1:0",
             "--runware-listen", "127.0.0.1:0", "--unix-socket", "none",
             "--max-in-flight", "300000", "--max-in-flight-per-connection", "300000",
             "--max-queued", "300000"],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
            env={**env, "RUNWARE_API_KEY": "bench-key", "RUNWARED_LOG": "info"},
        )
        grpc_addr = endpoint = None
        connected = False
        for line in self.daemon.stderr:
            bound = re.search(r"addr=(\S+)", line)
            if "gRPC listening on TCP" in line and bound:
                grpc_addr = bound.group(1)
            elif "Runware protocol" in line and bound:
                endpoint = f"ws://{bound.group(1)}/v1"
            connected |= "connected to Runware" in line
            if grpc_addr and endpoint and connected:
                break
        if not (grpc_addr and endpoint):
            raise RuntimeError("the daemon did not start")
        self.grpc_addr, self.endpoint = grpc_addr, endpoint
        # Keep reading the log so the daemon never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in self.daemon.stderr], daemon=True).start()

    def daemon_cpu(self):
        return cpu_seconds(self.daemon.pid)

    def stop(self):
        for p in (self.daemon, self.sim):
            p.terminate()
            p.wait(timeout=30)


async def drive(concurrency, total, limit, one):
    """Runs `one()` `total` times from `concurrency` callers, within `limit`
    seconds; returns (tasks/s, p50 ms, failed)."""
    latencies, failed, issued = [], 0, 0
    deadline = time.monotonic() + limit

    async def caller():
        nonlocal failed, issued
        while issued < total and time.monotonic() < deadline:
            issued += 1
            start = time.perf_counter()
            try:
                await asyncio.wait_for(one(), max(0.1, deadline - time.monotonic()))
                latencies.append(time.perf_counter() - start)
            except Exception:  # counted, never hidden
                failed += 1

    start = time.perf_counter()
    await asyncio.gather(*[caller() for _ in range(concurrency)])
    took = time.perf_counter() - start
    p50 = statistics.median(latencies) * 1000 if latencies else float("nan")
    return len(latencies) / took, p50, failed


class WsClient:
    """A pipelined Python client of Runware's WebSocket: one socket, results
    routed to their task by taskUUID."""

    def __init__(self, url):
        self.url = url

    async def __aenter__(self):
        import websockets

        self.ws = await websockets.connect(self.url, max_size=None, compression=None)
        await self.ws.send(json.dumps([{"taskType": "authentication", "apiKey": "bench-key"}]))
        await self.ws.recv()
        self.waiting = {}
        self.reader = asyncio.create_task(self._read())
        return self

    async def _read(self):
        async for message in self.ws:
            for item in json.loads(message).get("data", []):
                entry = self.waiting.get(item.get("taskUUID"))
                if entry:
                    entry[1].append(item)
                    if len(entry[1]) == entry[2]:
                        del self.waiting[item["taskUUID"]]
                        entry[0].set_result(entry[1])

    async def run(self, task, results=1):
        t = str(uuid.uuid4())
        done = asyncio.get_running_loop().create_future()
        self.waiting[t] = (done, [], results)
        await self.ws.send(json.dumps([{**task, "taskUUID": t}]))
        return await done

    async def __aexit__(self, *exc):
        self.reader.cancel()
        await self.ws.close()


class SessionClient:
    """Tasks over one Session (one message per submit) or BatchSession
    stream (what is queued in one message, events in batches)."""

    def __init__(self, stub, pb, batched):
        self.stub, self.pb, self.batched = stub, pb, batched

    async def __aenter__(self):
        self.call = self.stub.BatchSession() if self.batched else self.stub.Session()
        self.queue = asyncio.Queue()
        self.waiting = {}
        self.next_id = 0
        self.tasks = [asyncio.create_task(self._write()), asyncio.create_task(self._read())]
        return self

    async def _write(self):
        pb = self.pb
        while True:
            submits = [await self.queue.get()]
            if self.batched:
                # One turn of the event loop: the callers woken by the same
                # message of results queue their next tasks, which then go
                # in one message.
                await asyncio.sleep(0)
                while not self.queue.empty():
                    submits.append(self.queue.get_nowait())
                await self.call.write(pb.SessionRequest(submits=pb.SessionSubmits(submits=submits)))
            else:
                await self.call.write(pb.SessionRequest(submit=submits[0]))

    async def _read(self):
        async for message in self.call:
            for event in (message.events if self.batched else [message]):
                kind = event.WhichOneof("event")
                if kind in ("completed", "error"):
                    done = self.waiting.pop(event.request_id, None)
                    if done and kind == "completed":
                        done.set_result(None)
                    elif done:
                        done.set_exception(RuntimeError(event.error.message))

    async def run(self, task_json):
        self.next_id += 1
        request_id = str(self.next_id)
        done = asyncio.get_running_loop().create_future()
        self.waiting[request_id] = done
        self.queue.put_nowait(self.pb.SessionSubmit(
            request_id=request_id, task=self.pb.RunRequest(task_json=task_json)))
        await done

    async def __aexit__(self, *exc):
        for t in self.tasks:
            t.cancel()
        self.call.cancel()


ENHANCE = {"taskType": "promptEnhance", "prompt": "a cat", "promptVersions": 1}


async def small_path(path, servers, pb, pb_grpc, c, total, limit):
    import grpc

    if path in ("ws-direct", "ws-endpoint"):
        url = servers.sim_url if path == "ws-direct" else servers.endpoint
        async with WsClient(url) as ws:
            return await drive(c, total, limit, lambda: ws.run(ENHANCE))
    async with grpc.aio.insecure_channel(servers.grpc_addr) as channel:
        stub = pb_grpc.RunwareStub(channel)
        if path == "grpc-unary":
            request = pb.PromptEnhanceRequest(prompt="a cat", prompt_versions=1)
            return await drive(c, total, limit, lambda: stub.PromptEnhance(request))
        task_json = json.dumps(ENHANCE)
        async with SessionClient(stub, pb, batched=path == "grpc-batch") as session:
            return await drive(c, total, limit, lambda: session.run(task_json))


async def large_path(path, servers, pb, pb_grpc, total, limit, in_flight=16):
    import grpc

    task = {"taskType": "imageInference", "positivePrompt": "large", "model": "runware:101@1",
            "width": 512, "height": 512, "outputType": "base64Data"}
    if path == "ws-direct":
        async with WsClient(servers.sim_url) as ws:
            async def one():
                items = await ws.run(task)
                return base64.b64decode(items[0]["imageBase64Data"])
            return await drive(in_flight, total, limit, one)
    options = [("grpc.max_receive_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(servers.grpc_addr, options=options) as channel:
        stub = pb_grpc.RunwareStub(channel)
        bytes_path = path == "grpc-bytes"
        request = pb.ImageInferenceRequest(
            positive_prompt="large", model="runware:101@1", width=512, height=512,
            number_results=1, image_bytes=bytes_path,
            **({} if bytes_path else {"output_type": "base64Data"}))

        async def one():
            async for image in stub.ImageInference(request):
                return image.image_data if bytes_path else base64.b64decode(image.image_base64_data)
        return await drive(in_flight, total, limit, one)


def chart(rows, path, x_key, title, x_label):
    """An SVG line chart: each path's throughput over ws-direct's, by `x_key`."""
    series = {}
    for r in rows:
        series.setdefault(r["path"], []).append((r[x_key], r["x_direct"]))
    cs = sorted({r[x_key] for r in rows})
    top = max(1.2, max(r["x_direct"] for r in rows) * 1.1)
    w, h, left, bottom, right, top_pad = 640, 360, 56, 40, 170, 20
    px = lambda i: left + (w - left - right) * (i / max(1, len(cs) - 1))  # noqa: E731
    py = lambda v: top_pad + (h - top_pad - bottom) * (1 - v / top)  # noqa: E731
    colours = ["#444444", "#1f77b4", "#d62728", "#ff7f0e", "#2ca02c"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{left}" y="14">{title}</text>']
    for tick in [0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0]:
        if tick <= top:
            y = py(tick)
            out.append(f'<line x1="{left}" x2="{w - right}" y1="{y:.1f}" y2="{y:.1f}" '
                       f'stroke="{"#999" if tick == 1.0 else "#eee"}"/>')
            out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{tick:g}</text>')
    for i, c in enumerate(cs):
        out.append(f'<text x="{px(i):.1f}" y="{h - bottom + 18}" text-anchor="middle">{c}</text>')
    out.append(f'<text x="{(left + w - right) / 2:.1f}" y="{h - 6}" text-anchor="middle">'
               f'{x_label}</text>')
    for n, (name, points) in enumerate(series.items()):
        colour = colours[n % len(colours)]
        pts = " ".join(f"{px(cs.index(c)):.1f},{py(v):.1f}" for c, v in sorted(points))
        out.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for c, v in points:
            out.append(f'<circle cx="{px(cs.index(c)):.1f}" cy="{py(v):.1f}" r="3" fill="{colour}"/>')
        ly = top_pad + 18 * n + 10
        out.append(f'<line x1="{w - right + 12}" x2="{w - right + 32}" y1="{ly}" y2="{ly}" '
                   f'stroke="{colour}" stroke-width="2"/>')
        out.append(f'<text x="{w - right + 38}" y="{ly + 4}">{name}</text>')
    out.append("</svg>")
    pathlib.Path(path).write_text("\n".join(out) + "\n")


async def main_async(a):
    pb, pb_grpc = runwared_client.load_stubs(pathlib.Path(a.out) / "gen")
    report = {"small": [], "large": []}
    servers = Servers(a.bin)
    try:
        for c in [int(x) for x in a.concurrency.split(",") if x]:
            total = a.tasks if c > 1 else max(1, a.tasks // 10)
            direct = None
            for path in SMALL_PATHS:
                cpu0 = servers.daemon_cpu()
                rate, p50, failed = await small_path(path, servers, pb, pb_grpc, c, total, a.limit)
                direct = rate if path == "ws-direct" else direct
                row = {"path": path, "concurrency": c, "tasks": total, "failed": failed,
                       "tasks_per_s": round(rate, 1), "p50_ms": round(p50, 3),
                       "x_direct": round(rate / direct, 3),
                       "daemon_cpu_s": round(servers.daemon_cpu() - cpu0, 3)}
                report["small"].append(row)
                print(json.dumps(row), flush=True)
    finally:
        servers.stop()
    for mb in [int(x) for x in a.large_mb.split(",") if x]:
        size = mb << 20
        servers = Servers(a.bin, image_bytes=size)
        base64_mb = 4 * -(-size // 3) / 1e6
        try:
            direct = None
            for path in LARGE_PATHS:
                rate, p50, failed = await large_path(path, servers, pb, pb_grpc, a.large_tasks, a.limit)
                direct = rate if path == "ws-direct" else direct
                row = {"path": path, "image_mb": mb, "tasks": a.large_tasks, "failed": failed,
                       "mb_per_s": round(rate * base64_mb, 1), "p50_ms": round(p50, 1),
                       "x_direct": round(rate / direct, 3)}
                report["large"].append(row)
                print(json.dumps(row), flush=True)
        finally:
            servers.stop()
    if a.rust_large:
        run = subprocess.run([a.bin, "bench", "--scenarios", "large", "--json", "--log", "warn"],
                             capture_output=True, text=True, timeout=900, check=True)
        report["rust_large"] = json.loads(run.stdout)["large"]
        for row in report["rust_large"]:
            print(json.dumps(row), flush=True)
    out = pathlib.Path(a.out)
    (out / "bench-python.json").write_text(json.dumps(report, indent=1) + "\n")
    if report["small"]:
        chart(report["small"], out / "bench-python.svg", "concurrency",
              "promptEnhance tasks/s over a direct Python WebSocket client (= 1)",
              "tasks in flight")
    if report["large"]:
        chart(report["large"], out / "bench-python-large.svg", "image_mb",
              "image MB/s over a direct Python WebSocket client (= 1), 16 in flight",
              "image size, MB (base64: 4/3 of it)")
    return report


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bin", default=str(HERE.parent.parent / "target/release/runwared"))
    p.add_argument("--concurrency", default="1,16,256")
    p.add_argument("--tasks", type=int, default=5000, help="tasks per path at C > 1 (a tenth at C = 1)")
    p.add_argument("--large-mb", default="1,4", help="image sizes, MB (empty: none)")
    p.add_argument("--large-tasks", type=int, default=64)
    p.add_argument("--limit", type=float, default=120, help="seconds at most per run")
    p.add_argument("--rust-large", action=argparse.BooleanOptionalAction, default=True,
                   help="also run `runwared bench --scenarios large`")
    p.add_argument("--out", default="bench-out")
    a = p.parse_args(argv)
    pathlib.Path(a.out).mkdir(parents=True, exist_ok=True)
    return asyncio.run(main_async(a))


if __name__ == "__main__":
    main()
