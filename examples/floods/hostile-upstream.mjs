// A hostile upstream: stands in for Runware, and floods the daemon with step
// items for a task in flight and with a message of a million items, reading
// the daemon's resident memory (VmRSS) as it goes. Loopback only; bounded.
//
//   node examples/floods/hostile-upstream.mjs 17460 &
//   RUNWARE_API_KEY=k runwared serve --upstream-url ws://127.0.0.1:17460/v1 --state-dir none \
//       --listen 127.0.0.1:17433 --runware-listen 127.0.0.1:17434 --max-memory-bytes 33554432 &
//
// It finds the daemon by its upstream connection, submits one task through
// the daemon's REST door (127.0.0.1:17434) and reports.
import { readFileSync } from "node:fs";
import { execSync } from "node:child_process";
import { createRequire } from "node:module";
import { randomUUID } from "node:crypto";
const require = createRequire(new URL("../../tests/sdk/package.json", import.meta.url));
const { WebSocketServer } = require("ws");

const port = Number(process.argv[2] ?? 17460);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
let pid;
const rss = () => {
  const line = readFileSync(`/proc/${pid}/status`, "utf8").split("\n").find((l) => l.startsWith("VmRSS"));
  return Number(line.split(/\s+/)[1]) / 1024;
};
const server = new WebSocketServer({ host: "127.0.0.1", port, maxPayload: 64 << 20 });
const connected = new Promise((resolve) => {
  server.on("connection", (ws) => {
    ws.on("message", (data) => {
      const tasks = JSON.parse(data.toString());
      for (const t of tasks) {
        if (t.taskType === "authentication") {
          ws.send(JSON.stringify({ data: [{ taskType: "authentication", connectionSessionUUID: randomUUID() }] }));
          resolve(ws);
        } else if (t.taskType === "ping") {
          ws.send(JSON.stringify({ data: [{ taskType: "ping", pong: true }] }));
        } else if (t.taskUUID) {
          inFlight.push(t.taskUUID);
        }
      }
    });
  });
});
const inFlight = [];
const ws = await connected;
for (let t = 0; t < 100 && !pid; t++) {
  try {
    pid = execSync(`pgrep -f 'runwared serve --upstream-url ws://127.0.0.1:${port}/v1'`).toString().trim().split("\n")[0];
  } catch { await sleep(100); }
}
// One task in flight, through the daemon's REST door (async: the answer is the acknowledgement).
const task = randomUUID();
await fetch("http://127.0.0.1:17434/v1", {
  method: "POST",
  headers: { "content-type": "application/json" },
  body: JSON.stringify([{ taskType: "authentication", apiKey: process.env.RUNWARED_TOKEN ?? "local" },
    { taskType: "imageInference", taskUUID: task, positivePrompt: "x", model: "runware:101@1", width: 512, height: 512, deliveryMethod: "async" }]),
});
for (let t = 0; t < 100 && !inFlight.includes(task); t++) await sleep(50);

const measure = async (name, flood) => {
  const before = rss();
  let peak = before;
  const timer = setInterval(() => (peak = Math.max(peak, rss())), 20);
  await flood();
  await sleep(3000);
  clearInterval(timer);
  console.log(`${name}: before ${before.toFixed(1)} MiB, peak ${peak.toFixed(1)} MiB (+${(peak - before).toFixed(1)}), after ${rss().toFixed(1)} MiB`);
};
await measure("400 MB of step items for one task in flight", async () => {
  const blob = "y".repeat(1000);
  for (let m = 0; m < 400; m++) {
    const items = Array.from({ length: 1000 }, (_, i) => ({ taskType: "imageInference", taskUUID: task, status: `step-${m}-${i}`, blob }));
    ws.send(JSON.stringify({ data: items }));
    if (m % 20 === 0) await sleep(10);
  }
});
await measure("one 2 MB message of a million items", async () => {
  ws.send(JSON.stringify({ data: new Array(1_000_000).fill(0) }));
});
process.exit(0);
