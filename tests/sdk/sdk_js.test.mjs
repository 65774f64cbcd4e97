// The official JavaScript SDK (@runware/sdk-js) against the daemon's
// Runware-protocol endpoint (only its URL changes) and, with the same checks,
// against the simulator on its own (`runwared sim`), which must be a server
// the SDK cannot tell from Runware. Run with `node --test` after `npm ci`
// here; RUNWARED_BIN names the binary.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import { RunwareServer } from "@runware/sdk-js";

const here = dirname(fileURLToPath(import.meta.url));
const BIN = process.env.RUNWARED_BIN ?? join(here, "../../target/debug/runwared");
const running = [];

/** Spawns runwared; resolves with the process and the first match of `pattern`. */
function start(args, pattern, stream = "stderr") {
  const proc = spawn(BIN, args, { env: { PATH: process.env.PATH, NO_COLOR: "1" } });
  running.push(proc);
  const lines = createInterface({ input: proc[stream] });
  const log = [];
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${pattern} in:\n${log.join("\n")}`)), 30000);
    lines.on("line", (line) => {
      log.push(line);
      const m = line.match(pattern);
      if (m) {
        clearTimeout(timer);
        resolve({ proc, match: m });
      }
    });
  });
}

async function daemon(...extra) {
  const socket = join(mkdtempSync(join(tmpdir(), "runwared-")), "runwared.sock");
  const { match } = await start(
    ["serve", "--listen", "none", "--unix-socket", socket, "--runware-listen", "127.0.0.1:0", ...extra],
    /Runware protocol .* addr=(\S+)/,
  );
  return `ws://${match[1]}/v1`;
}

after(() => running.forEach((p) => p.kill("SIGTERM")));

async function withClient(url, fn) {
  const r = new RunwareServer({ apiKey: "local", url, shouldReconnect: true });
  await r.ensureConnection();
  try {
    return await fn(r);
  } finally {
    await r.disconnect();
  }
}

const targets = {
  daemon: await daemon("--simulate"),
  simulator: (await start(["sim", "--listen", "127.0.0.1:0"], /^(ws:\/\/\S+)$/, "stdout")).match[1],
};

for (const [target, url] of Object.entries(targets)) {
  test(`${target}: promptEnhance gets every version`, async () => {
    const versions = await withClient(url, (r) =>
      r.promptEnhance({ prompt: "a cat in a hat", promptVersions: 3, promptMaxLength: 64 }),
    );
    assert.equal(versions.length, 3);
    assert.ok(versions.every((v) => v.text.startsWith("a cat in a hat")));
  });

  test(`${target}: imageInference with several base64 results`, async () => {
    const images = await withClient(url, (r) =>
      r.imageInference({
        positivePrompt: "a red fox", model: "runware:101@1", numberResults: 2,
        width: 512, height: 512, outputType: "base64Data",
      }),
    );
    assert.equal(images.length, 2);
    assert.equal(new Set(images.map((i) => i.imageUUID)).size, 2);
    assert.ok(images.every((i) => i.imageBase64Data.length > 0));
  });

  test(`${target}: a validation error names its parameter`, async () => {
    await assert.rejects(
      withClient(url, (r) => r.promptEnhance({ prompt: "a cat", promptVersions: 1, promptMaxLength: 5 })),
      (e) => {
        const error = e.error ?? e;
        assert.equal(error.code, "invalidPromptMaxLength");
        assert.equal(error.parameter, "promptMaxLength");
        return true;
      },
    );
  });

  test(`${target}: twelve concurrent tasks each get exactly their own results`, async () => {
    const results = await withClient(url, (r) =>
      Promise.all(
        [...Array(12).keys()].map((i) =>
          r.imageInference({
            positivePrompt: `picture ${i}`, model: "runware:101@1", numberResults: 1 + (i % 3),
            width: 512, height: 512,
          }),
        ),
      ),
    );
    results.forEach((images, i) => {
      assert.equal(images.length, 1 + (i % 3));
      assert.equal(new Set(images.map((im) => im.taskUUID)).size, 1);
    });
    assert.equal(new Set(results.map((images) => images[0].taskUUID)).size, 12);
  });

  test(`${target}: async delivery, then getResponse`, async () => {
    const images = await withClient(url, async (r) => {
      const [ack] = await r.imageInference({
        positivePrompt: "a fox", model: "runware:101@1", numberResults: 1,
        width: 512, height: 512, deliveryMethod: "async",
      });
      assert.equal(ack.taskType, "imageInference");
      assert.equal(ack.imageUUID, undefined);
      // getResponse answers what the server holds; poll until the image is there.
      for (let i = 0; i < 100; i++) {
        const got = await r.getResponse({ taskUUID: ack.taskUUID });
        const done = got.filter((g) => g.imageUUID);
        if (done.length) return done;
        await new Promise((ok) => setTimeout(ok, 100));
      }
      return [];
    });
    assert.equal(images.length, 1);
    assert.equal(images[0].status, "success");
  });

  test(`${target}: the newest task types by this SDK's names`, async () => {
    const image = "b7db282d-2943-4f12-992f-77df3ad3ec71";
    const messages = [{ role: "user", content: "Name a colour" }];
    const [text, audio, objects, masks, vectors, uploaded, stored, models] = await withClient(url, (r) =>
      Promise.all([
        r.textInference({ model: "minimax:m2.7@0", messages }),
        r.audioInference({ model: "elevenlabs:1@1", positivePrompt: "rain on a roof", duration: 10, numberResults: 2 }),
        r.threeDInference({ model: "microsoft:trellis-2@4b", inputs: { image } }),
        r.imageMasking({ model: "runware:35@1", inputImage: image }),
        r.vectorize({ model: "recraft:1@1", inputs: { image } }),
        r.imageUpload({ image: "data:image/png;base64,iVBORw0KGgo=" }),
        r.mediaStorage({ media: "data:audio/wav;base64,UklGRg==" }),
        r.modelSearch({ search: "flux" }),
      ]),
    );
    const one = (answer) => (Array.isArray(answer) ? answer[0] : answer);
    assert.ok(one(text).text.startsWith("You asked: Name a colour"));
    assert.equal(one(text).finishReason, "stop");
    assert.equal(audio.length, 2);
    assert.ok(audio.every((a) => a.audioURL.endsWith(".mp3")));
    assert.ok(one(objects).outputs.files[0].url.endsWith(".glb"));
    assert.ok(one(masks).maskImageURL);
    assert.ok(one(vectors).imageURL.endsWith(".svg"));
    assert.ok(one(uploaded).imageUUID);
    assert.ok(one(stored).mediaUUID);
    assert.ok(one(models).results.length > 0);
    const details = await withClient(url, (r) => r.getTaskDetails({ taskUUID: one(text).taskUUID }));
    assert.equal(one(details).request[0].taskType, "textInference");
  });
}

test("upstream drops are invisible and nothing runs twice", async () => {
  const { proc: sim, match } = await start(
    ["sim", "--listen", "127.0.0.1:0", "--latency", "400ms", "--per-result-latency", "150ms",
     "--fault", "drop", "--fault-every", "700ms"],
    /^(ws:\/\/\S+)$/,
    "stdout",
  );
  const keyDir = mkdtempSync(join(tmpdir(), "runwared-key-"));
  const { writeFileSync } = await import("node:fs");
  writeFileSync(join(keyDir, "key"), "sdk-check-key\n");
  const flaky = await daemon("--upstream-url", match[1], "--api-key-file", join(keyDir, "key"));
  const results = await withClient(flaky, (r) =>
    Promise.all(
      [...Array(12).keys()].map((i) =>
        r.promptEnhance({ prompt: `under drops ${i}`, promptVersions: 2, promptMaxLength: 64 }),
      ),
    ),
  );
  assert.deepEqual(results.map((v) => v.length), Array(12).fill(2));
  // The simulator prints its counts when it stops.
  const out = [];
  createInterface({ input: sim.stdout }).on("line", (l) => out.push(l));
  const exited = new Promise((ok) => sim.on("exit", ok));
  sim.kill("SIGTERM");
  await exited;
  const counts = JSON.parse(out.at(-1));
  assert.ok(counts.connections >= 2, JSON.stringify(counts));
  assert.equal(counts.maxExecutionsPerTask, 1, JSON.stringify(counts));
});
