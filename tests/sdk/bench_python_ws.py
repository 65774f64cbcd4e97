"""A plain Python `websockets` client of Runware's protocol, for the bench.

Pipelines promptEnhance tasks from C concurrent callers over one socket,
routing results by taskUUID (what a good Python client of Runware does), and
prints tasks/s and p50. Point it at the simulator (direct) or at the
daemon's endpoint; see BENCHMARKS.md for the commands.

    python bench_python_ws.py ws://127.0.0.1:PORT/v1 --concurrency 1,16,256 --tasks 5000
"""

import argparse
import asyncio
import json
import statistics
import time
import uuid

import websockets


async def run(url, concurrency, total):
    async with websockets.connect(url, max_size=None, compression=None) as ws:
        await ws.send(json.dumps([{"taskType": "authentication", "apiKey": "bench-key"}]))
        await ws.recv()
        waiting = {}

        async def reader():
            async for message in ws:
                for item in json.loads(message).get("data", []):
                    done = waiting.pop(item.get("taskUUID"), None)
                    if done:
                        done.set_result(None)

        read = asyncio.create_task(reader())
        latencies = []
        next_task = 0

        async def caller():
            nonlocal next_task
            while next_task < total:
                next_task += 1
                t = str(uuid.uuid4())
                done = asyncio.get_running_loop().create_future()
                waiting[t] = done
                start = time.perf_counter()
                await ws.send(json.dumps([{"taskType": "promptEnhance", "taskUUID": t,
                                           "prompt": "a cat", "promptVersions": 1}]))
                await asyncio.wait_for(done, 60)
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*[caller() for _ in range(concurrency)])
        took = time.perf_counter() - start
        read.cancel()
        return total / took, statistics.median(latencies) * 1000


def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--concurrency", default="1,16,256")
    p.add_argument("--tasks", type=int, default=5000)
    a = p.parse_args()
    for c in [int(x) for x in a.concurrency.split(",")]:
        total = a.tasks if c > 1 else a.tasks // 5
        rate, p50 = asyncio.run(run(a.url, c, total))
        print(f"C={c}: {rate:.0f} tasks/s, p50 {p50:.2f} ms")


if __name__ == "__main__":
    main()
