// The SSE reader (src/api/sse.ts) under Node's test runner, loaded through Vite (TypeScript as is):
// chunk boundaries anywhere, comments, ids, retry, and reconnecting with Last-Event-ID.
//   npm run test:unit
import assert from "node:assert/strict";
import { createServer as httpServer } from "node:http";
import { after, before, test } from "node:test";
import { createServer } from "vite";

let vite, sse;
before(async () => {
  vite = await createServer({ server: { middlewareMode: true }, appType: "custom", logLevel: "silent" });
  sse = await vite.ssrLoadModule("/src/api/sse.ts");
});
after(() => vite?.close());

function streamOf(chunks) {
  const encoder = new TextEncoder();
  return new ReadableStream({
    start(controller) {
      for (const c of chunks) controller.enqueue(typeof c === "string" ? encoder.encode(c) : c);
      controller.close();
    },
  });
}

async function collect(chunks) {
  const out = [];
  for await (const item of sse.parseSse(streamOf(chunks))) out.push(item);
  return out;
}

const WIRE = "retry: 2000\n: stream open\n\nid: 7\nevent: token\ndata: {\"content\": \"Héllo \"}\n\n" +
  ": keep-alive\n\nevent: done\ndata: line one\ndata: line two\n\nid: 9\r\nevent: x\r\ndata:no space\r\n\r\n";

const EXPECTED = [
  { kind: "retry", milliseconds: 2000 },
  { kind: "comment", text: "stream open" },
  { kind: "event", event: "token", data: "{\"content\": \"Héllo \"}", id: "7" },
  { kind: "comment", text: "keep-alive" },
  { kind: "event", event: "done", data: "line one\nline two", id: "7" },
  { kind: "event", event: "x", data: "no space", id: "9" },
];

test("one chunk", async () => {
  assert.deepEqual(await collect([WIRE]), EXPECTED);
});

test("split at every byte, even inside a UTF-8 character and between \\r and \\n", async () => {
  const bytes = new TextEncoder().encode(WIRE);
  const chunks = Array.from(bytes, (b) => new Uint8Array([b]));
  assert.deepEqual(await collect(chunks), EXPECTED);
});

test("split at every position into two chunks", async () => {
  const bytes = new TextEncoder().encode(WIRE);
  for (let at = 1; at < bytes.length; at++) {
    assert.deepEqual(await collect([bytes.slice(0, at), bytes.slice(at)]), EXPECTED, `split at ${at}`);
  }
});

test("an event not ended by a blank line is dropped; data-less events are not dispatched", async () => {
  assert.deepEqual(await collect(["event: lonely\n\ndata: cut"]), []);
});

test("streamChat: typed events from a POST; a refusal is an ApiError with Retry-After", async () => {
  const server = httpServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      const { query } = JSON.parse(body);
      assert.equal(req.headers["x-requested-with"], "fetch");
      if (query === "busy") {
        res.writeHead(429, { "Content-Type": "application/json", "Retry-After": "7" });
        res.end(JSON.stringify({ success: false, error: { code: "rate_limited", message: "Too many requests" } }));
        return;
      }
      res.writeHead(200, { "Content-Type": "text/event-stream" });
      res.write("event: token\ndata: {\"content\": \"Hi \"}\n\n: heartbeat\n\n");
      res.end("event: done\ndata: {\"session_id\": \"s\", \"message_count\": 2, \"session_name\": null}\n\n");
    });
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const config = { baseUrl: `http://127.0.0.1:${server.address().port}`, token: "t" };
  try {
    const events = [];
    for await (const e of sse.streamChat(config, { session_id: "s", query: "hello" })) events.push(e);
    assert.deepEqual(events, [
      { event: "token", data: { content: "Hi " }, id: null },
      { event: "done", data: { session_id: "s", message_count: 2, session_name: null }, id: null },
    ]);
    await assert.rejects(async () => {
      for await (const e of sse.streamChat(config, { session_id: "s", query: "busy" })) void e;
    }, (error) => error.name === "ApiError" && error.status === 429 && error.code === "rate_limited" && error.retryAfterSeconds === 7);
  } finally {
    server.close();
  }
});

test("followEvents reconnects after the stream ends, resuming with Last-Event-ID", async () => {
  const seenHeaders = [];
  const server = httpServer((req, res) => {
    seenHeaders.push(req.headers["last-event-id"] ?? null);
    res.writeHead(200, { "Content-Type": "text/event-stream" });
    if (seenHeaders.length === 1) {
      res.write("retry: 10\n: stream open\n\n");
      res.write("id: 1\nevent: session.created\ndata: {\"type\": \"session.created\", \"session_id\": \"a\", \"at\": \"t\"}\n\n");
      res.end("id: 2\nevent: session.updated\ndata: {\"type\": \"session.updated\", \"session_id\": \"a\", \"at\": \"t\"}\n\n");
    } else {
      res.end("id: 3\nevent: session.deleted\ndata: {\"type\": \"session.deleted\", \"session_id\": \"a\", \"at\": \"t\", \"deleted\": {}, \"forced\": false}\n\n");
    }
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const controller = new AbortController();
  const events = [];
  const opens = [];
  try {
    await sse.followEvents({ baseUrl: `http://127.0.0.1:${server.address().port}`, token: null }, {
      onOpen: (resumed) => opens.push(resumed),
      onEvent: (e) => {
        events.push(e.type);
        if (e.type === "session.deleted") controller.abort();
      },
    }, controller.signal);
  } finally {
    server.close();
  }
  assert.deepEqual(events, ["session.created", "session.updated", "session.deleted"]);
  assert.deepEqual(seenHeaders, [null, "2"]);
  assert.deepEqual(opens, [false, true]);
});

test("followRun joins a run from a cursor (Last-Event-ID) and yields each event with its id; 404 is an ApiError", async () => {
  const seen = [];
  const server = httpServer((req, res) => {
    seen.push([req.method, req.url, req.headers["last-event-id"] ?? null]);
    if (req.url.includes("gone")) {
      res.writeHead(404, { "Content-Type": "application/json" });
      res.end(JSON.stringify({ success: false, error: { code: "run_not_found", message: "No such run" } }));
      return;
    }
    res.writeHead(200, { "Content-Type": "text/event-stream" });
    res.write("id: 0\nevent: run\ndata: {\"run_id\": \"r1\", \"session_id\": \"a b\", \"status\": \"running\"}\n\n");
    res.write("id: 8\nevent: token\ndata: {\"content\": \"lo\"}\n\n");
    res.end("id: 10\nevent: done\ndata: {\"session_id\": \"a b\", \"message_count\": 2, \"session_name\": \"x\", \"run_id\": \"r1\"}\n\n");
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const config = { baseUrl: `http://127.0.0.1:${server.address().port}`, token: null };
  try {
    const events = [];
    for await (const e of sse.followRun(config, "a b", "r1", "6")) events.push([e.event, e.id]);
    assert.deepEqual(events, [["run", "0"], ["token", "8"], ["done", "10"]]);
    assert.deepEqual(seen[0], ["GET", "/api/llm/sessions/a%20b/runs/r1/stream", "6"]);
    await assert.rejects(async () => {
      for await (const e of sse.followRun(config, "a", "gone", null)) void e;
    }, (error) => error.name === "ApiError" && error.status === 404 && error.code === "run_not_found");
    assert.equal(seen[1][2], null); // no cursor: the reply from its start
  } finally {
    server.close();
  }
});
