// Which of two rows of a session the list keeps (src/api/freshness.ts), under Node's test runner through Vite.
//   npm run test:unit
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { createServer } from "vite";

let vite, freshness;
before(async () => {
  vite = await createServer({ server: { middlewareMode: true }, appType: "custom", logLevel: "silent" });
  freshness = await vite.ssrLoadModule("/src/api/freshness.ts");
});
after(() => vite?.close());

const row = (updated_at, extra = {}) => ({ session_id: "s", session_name: updated_at, updated_at, ...extra });

test("a row written later wins, in whichever order the two arrive", () => {
  const named = row("2026-12-05T14:36:14.022123Z");
  const read = row("2026-12-05T14:36:14.019Z");
  assert.equal(freshness.newerRow(read, named), named);
  assert.equal(freshness.newerRow(named, read), named); // the stale response lands last: kept out
});

test("microseconds order rows written within one millisecond, with or without a fraction", () => {
  assert.equal(freshness.newerRow(row("2026-12-05T14:36:14.000200Z"), row("2026-12-05T14:36:14.000100Z")).updated_at,
    "2026-12-05T14:36:14.000200Z");
  assert.equal(freshness.newerRow(row("2026-12-05T14:36:14.5Z"), row("2026-12-05T14:36:14Z")).updated_at,
    "2026-12-05T14:36:14.5Z");
  assert.equal(freshness.newerRow(row("2026-12-05T14:36:14Z"), row("2026-12-05T14:36:13.999999Z")).updated_at,
    "2026-12-05T14:36:14Z");
});

test("equal times take the incoming row; a local row and no row always give way", () => {
  const a = row("2026-12-05T14:36:14.1Z"), b = row("2026-12-05T14:36:14.100000Z");
  assert.equal(freshness.newerRow(a, b), b);
  const local = row("2099-01-01T00:00:00Z", { local: true }); // this browser's clock, not the server's
  const server = row("2026-12-05T14:36:14Z");
  assert.equal(freshness.newerRow(local, server), server);
  assert.equal(freshness.newerRow(undefined, server), server);
});
