// Floods the daemon's Runware-protocol door as a hostile local client would,
// and reports the daemon's resident memory (VmRSS) before, at the peak and
// after each. Loopback only; every loop is bounded in count and time.
//
//   node examples/floods/floods.mjs PID ws://127.0.0.1:7434/v1
//
// PID is the daemon's (`runwared serve --simulate --max-memory-bytes ...`).
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { randomUUID } from "node:crypto";
const require = createRequire(new URL("../../tests/sdk/package.json", import.meta.url));
const WebSocket = require("ws");

const [pid, url] = process.argv.slice(2);
const rss = () => {
  const line = readFileSync(`/proc/${pid}/status`, "utf8").split("\n").find((l) => l.startsWith("VmRSS"));
  return Number(line.split(/\s+/)[1]) / 1024; // MiB
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const open = () =>
  new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    ws.on("open", () => resolve(ws));
    ws.on("error", reject);
  });
const watchPeak = () => {
  let peak = rss();
  const timer = setInterval(() => (peak = Math.max(peak, rss())), 20);
  return () => (clearInterval(timer), peak);
};
const report = (name, before, peak, after) =>
  console.log(`${name}: before ${before.toFixed(1)} MiB, peak ${peak.toFixed(1)} MiB (+${(peak - before).toFixed(1)}), after ${after.toFixed(1)} MiB`);

// 1. Authentication floods: 5 messages of 30 000 authentication objects.
{
  const before = rss();
  const stop = watchPeak();
  const ws = await open();
  const auth = JSON.stringify(Array.from({ length: 30000 }, () => ({ taskType: "authentication", apiKey: "x" })));
  let answers = 0;
  ws.on("message", () => answers++);
  for (let i = 0; i < 5; i++) ws.send(auth);
  for (let t = 0; t < 600 && answers < 150000; t++) await sleep(50);
  ws.close();
  await sleep(1000);
  report("authentication flood (150 000 objects on one socket)", before, stop(), rss());
}

// 2. A client that reads nothing: 420 image results of about 1 MB asked for.
{
  const before = rss();
  const stop = watchPeak();
  const ws = await open();
  ws.send(JSON.stringify([{ taskType: "authentication", apiKey: "x" }]));
  await sleep(200);
  ws.pause(); // read nothing from here on
  for (let i = 0; i < 42; i++) {
    const tasks = Array.from({ length: 10 }, () => ({
      taskType: "imageInference", taskUUID: randomUUID(), positivePrompt: "big", model: "runware:101@1",
      width: 1024, height: 1024, numberResults: 1, outputType: "base64Data",
    }));
    ws.send(JSON.stringify(tasks));
  }
  await sleep(15000);
  const peak = stop();
  ws.terminate();
  await sleep(2000);
  report("a client that reads nothing (420 results of ~1 MB)", before, peak, rss());
}

// 3. 83 MiB of pings read by nobody.
{
  const before = rss();
  const stop = watchPeak();
  const ws = await open();
  ws.send(JSON.stringify([{ taskType: "authentication", apiKey: "x" }]));
  await sleep(200);
  ws.pause();
  const pings = JSON.stringify(Array.from({ length: 20000 }, () => ({ taskType: "ping", ping: true })));
  for (let sent = 0; sent < 83 << 20 && ws.bufferedAmount < 256 << 20; sent += pings.length) ws.send(pings);
  await sleep(10000);
  const peak = stop();
  ws.terminate();
  await sleep(2000);
  report("83 MiB of pings read by nobody", before, peak, rss());
}
process.exit(0);
