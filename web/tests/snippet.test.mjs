// A search hit's snippet and its highlights (src/components/snippet.ts), under Node's test runner.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { createServer } from "vite";

let vite, snippet;
before(async () => {
  vite = await createServer({ server: { middlewareMode: true }, appType: "custom", logLevel: "silent" });
  snippet = await vite.ssrLoadModule("/src/components/snippet.ts");
});
after(() => vite?.close());

const marked = (parts) => parts.filter((p) => p.marked).map((p) => p.text);

test("offsets cut the snippet into plain and marked parts", () => {
  const parts = snippet.snippetParts("the quick fox and the fox", [[10, 13], [22, 25]]);
  assert.deepEqual(parts, [
    { text: "the quick ", marked: false }, { text: "fox", marked: true },
    { text: " and the ", marked: false }, { text: "fox", marked: true },
  ]);
  assert.equal(parts.map((p) => p.text).join(""), "the quick fox and the fox");
});

test("offsets count code points (as the server does), so an emoji before a match does not shift it", () => {
  // "🦊" is one code point but two UTF-16 units: JavaScript's indices would be one off.
  assert.deepEqual(marked(snippet.snippetParts("🦊 fox é fox", [[2, 5], [8, 11]])), ["fox", "fox"]);
  assert.deepEqual(marked(snippet.snippetParts("a 𝒳 b", [[2, 3]])), ["𝒳"]);
});

test("unsorted, overlapping, touching, empty and out-of-range offsets are handled", () => {
  assert.deepEqual(marked(snippet.snippetParts("abcdefgh", [[4, 6], [1, 3], [2, 5]])), ["bcdef"]);
  assert.deepEqual(marked(snippet.snippetParts("abcdefgh", [[1, 3], [3, 5]])), ["bcde"]);
  assert.deepEqual(marked(snippet.snippetParts("abc", [[2, 2], [-4, 1], [2, 99], [5, 9]])), ["a", "c"]);
  assert.deepEqual(snippet.snippetParts("", [[0, 3]]), []);
  assert.deepEqual(snippet.snippetParts("plain", []), [{ text: "plain", marked: false }]);
});
