// A reply's markdown, rendered safely, also while it streams in.
//
// react-markdown builds React elements from the markdown's syntax tree: it never sets innerHTML, and
// raw HTML in the text is not rendered (no rehype-raw). rehype-sanitize (GitHub's schema) then drops
// anything outside a safe set of elements, attributes and URL schemes (no `javascript:` links).
// Links open in a new tab without access to this one (rel="noopener noreferrer"); code blocks get
// a Copy button.
import { memo, useState, type ComponentPropsWithoutRef, type ReactNode } from "react";
import ReactMarkdown, { type Components } from "react-markdown";
import rehypeSanitize from "rehype-sanitize";
import remarkGfm from "remark-gfm";

function textOf(node: ReactNode): string {
  if (typeof node === "string" || typeof node === "number") return String(node);
  if (Array.isArray(node)) return node.map(textOf).join("");
  if (node && typeof node === "object" && "props" in node) {
    return textOf((node.props as { children?: ReactNode }).children);
  }
  return "";
}

function CodeBlock({ children, ...props }: ComponentPropsWithoutRef<"pre">) {
  const [copied, setCopied] = useState(false);
  async function copy() {
    try {
      await navigator.clipboard.writeText(textOf(children).replace(/\n$/, ""));
      setCopied(true);
      setTimeout(() => setCopied(false), 1500);
    } catch {
      setCopied(false); // no clipboard (an insecure origin): the code is still there to select
    }
  }
  return (
    <div className="code-block">
      <button type="button" className="copy" data-testid="copy-code" onClick={() => void copy()}>
        {copied ? "Copied" : "Copy"}
      </button>
      <pre {...props}>{children}</pre>
    </div>
  );
}

const components: Components = {
  a: ({ node: _node, children, ...props }) => (
    <a {...props} target="_blank" rel="noopener noreferrer">{children}</a>
  ),
  pre: ({ node: _node, ...props }) => <CodeBlock {...props} />,
};

export const Markdown = memo(function Markdown({ text }: { text: string }) {
  return (
    <div className="markdown">
      <ReactMarkdown remarkPlugins={[remarkGfm]} rehypePlugins={[rehypeSanitize]} components={components}>
        {text}
      </ReactMarkdown>
    </div>
  );
});
