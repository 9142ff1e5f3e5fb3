// The session list's grouping by last activity (src/components/SessionList.tsx), under Node's test runner.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { createServer } from "vite";

let vite, list;
before(async () => {
  vite = await createServer({ server: { middlewareMode: true }, appType: "custom", logLevel: "silent" });
  list = await vite.ssrLoadModule("/src/components/SessionList.tsx");
});
after(() => vite?.close());

test("groups: Today, Yesterday, Previous 7 days, Previous 30 days, Older, by the local calendar", () => {
  const now = new Date(2026, 11, 7, 9, 30); // 9:30 on 7 December, local time
  const at = (d, h = 12) => new Date(2026, 11, d, h);
  assert.equal(list.groupOf(at(7, 0), now), "Today");
  assert.equal(list.groupOf(at(6, 23), now), "Yesterday");
  assert.equal(list.groupOf(at(6, 0), now), "Yesterday");
  assert.equal(list.groupOf(at(5, 23), now), "Previous 7 days");
  assert.equal(list.groupOf(at(1), now), "Previous 7 days");
  assert.equal(list.groupOf(new Date(2026, 10, 25), now), "Previous 30 days");
  assert.equal(list.groupOf(new Date(2026, 10, 1), now), "Older");
});
