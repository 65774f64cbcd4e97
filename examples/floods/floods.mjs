// Floods the daemon's Runware-protocol door as a hostile local client would,
// and reports the daemon's resident memory (VmRSS) before, at the peak and
// after each. Loopback only; every loop is bounded in count and time.
//
//   node examples/floods/floods.mjs PID ws://127.0.0.1:7434/v1 [GRPC_ADDR]
//
// PID is the daemon's (`runwared serve ... --max-memory-bytes ...`). With
// GRPC_ADDR (host:port of a daemon that requires a token, given in
// RUNWARED_TOKEN for the floods above), two floods of
// clients without the token follow: REST bodies sent in part, and health
// Watch streams.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { randomUUID } from "node:crypto";
const require = createRequire(new URL("../../tests/sdk/package.json", import.meta.url));
const WebSocket = require("ws");

const [pid, url, grpcAddr] = process.argv.slice(2);
// The local key: the daemon's token when it has one (RUNWARED_TOKEN).
const key = process.env.RUNWARED_TOKEN ?? "local";
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
  const auth = JSON.stringify(Array.from({ length: 30000 }, () => ({ taskType: "authentication", apiKey: key })));
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
  ws.send(JSON.stringify([{ taskType: "authentication", apiKey: key }]));
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
  ws.send(JSON.stringify([{ taskType: "authentication", apiKey: key }]));
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
if (grpcAddr) {
  const net = await import("node:net");
  const http2 = await import("node:http2");
  const { hostname, port } = new URL(url.replace(/^ws/, "http"));
  // 4. Ten REST bodies without the token, each 60 MiB of an announced 64 MiB.
  {
    const before = rss();
    const stop = watchPeak();
    const sockets = [];
    const chunk = Buffer.alloc(1 << 20, 0x61);
    for (let i = 0; i < 10; i++) {
      const s = net.connect(Number(port), hostname);
      s.on("error", () => {});
      s.write(`POST /v1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${64 << 20}\r\n\r\n[`);
      for (let m = 0; m < 60; m++) s.write(chunk);
      sockets.push(s);
    }
    await sleep(5000);
    const peak = stop();
    sockets.forEach((s) => s.destroy());
    await sleep(1000);
    report("10 REST bodies of 60 MiB without the token", before, peak, rss());
  }
  // 5. Health Watch streams without the token: 64 connections, 64 streams each.
  {
    const before = rss();
    const stop = watchPeak();
    const sessions = [];
    let refused = 0;
    for (let c = 0; c < 64; c++) {
      const session = http2.connect(`http://${grpcAddr}`);
      session.on("error", () => {});
      for (let i = 0; i < 64; i++) {
        const req = session.request({ ":method": "POST", ":path": "/grpc.health.v1.Health/Watch", "content-type": "application/grpc", te: "trailers" });
        req.on("response", (h) => { if (h["grpc-status"] && h["grpc-status"] !== "0") refused++; });
        req.on("error", () => {});
        req.end(Buffer.from([0, 0, 0, 0, 0]));
      }
      sessions.push(session);
    }
    await sleep(5000);
    const peak = stop();
    sessions.forEach((s) => s.destroy());
    await sleep(1000);
    report(`4 096 health Watch streams without the token (${refused} refused at once)`, before, peak, rss());
  }
}
process.exit(0);
