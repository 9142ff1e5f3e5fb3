/** A search hit's snippet cut into plain and marked parts, from the server's [start, end) offsets.
 *  The offsets count Unicode code points (Python's string indices), not UTF-16 units as JavaScript's
 *  do: a snippet with an emoji before a match would be cut one unit off. So the text is split into
 *  code points first. Offsets out of range are clamped; overlapping or touching ranges merge. */
export interface SnippetPart {
  text: string;
  marked: boolean;
}

export function snippetParts(snippet: string, highlights: readonly (readonly number[])[]): SnippetPart[] {
  const points = Array.from(snippet);
  const ranges = highlights
    .filter((h) => h.length >= 2 && Number.isInteger(h[0]) && Number.isInteger(h[1]))
    .map(([start, end]) => [Math.max(0, Math.min(start!, points.length)), Math.max(0, Math.min(end!, points.length))] as const)
    .filter(([start, end]) => end > start)
    .sort((a, b) => a[0] - b[0]);
  const parts: SnippetPart[] = [];
  let at = 0;
  for (const [start, end] of ranges) {
    const from = Math.max(start, at);
    if (end <= from) continue;
    if (from > at) parts.push({ text: points.slice(at, from).join(""), marked: false });
    const last = parts.at(-1);
    if (last?.marked && from === at) last.text += points.slice(from, end).join("");
    else parts.push({ text: points.slice(from, end).join(""), marked: true });
    at = end;
  }
  if (at < points.length) parts.push({ text: points.slice(at).join(""), marked: false });
  return parts;
}
