import { defineConfig, loadEnv, type Plugin } from "vite";
import react from "@vitejs/plugin-react";

/** The page's Content-Security-Policy, as a <meta> in the built index.html so any static host serves
 *  it; backend/web.py sends the same policy as a header, adding what a <meta> cannot carry
 *  (frame-ancestors). Scripts and styles come only from the build's own files (Vite emits no inline
 *  ones, and React sets styles through the DOM, which style-src does not restrict); requests go to
 *  this origin and to the API origin the build names, nowhere else. */
function contentSecurityPolicy(apiBase: string): Plugin {
  const apiOrigin = apiBase ? new URL(apiBase).origin : ""; // not an absolute URL: the build fails here
  const policy = [
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    `connect-src 'self'${apiOrigin ? ` ${apiOrigin}` : ""}`,
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
  ].join("; ");
  return {
    name: "content-security-policy",
    apply: "build", // the dev server injects inline scripts (React refresh)
    transformIndexHtml: () => [
      { tag: "meta", attrs: { "http-equiv": "Content-Security-Policy", content: policy }, injectTo: "head-prepend" },
    ],
  };
}

// `npm run dev`: the app on http://localhost:5173, the API proxied to the backend
// (`make run`, or BACKEND_URL), so the browser sees one origin and cookies just work.
export default defineConfig(({ mode }) => ({
  plugins: [react(), contentSecurityPolicy(loadEnv(mode, process.cwd(), "VITE_").VITE_API_BASE ?? "")],
  server: {
    proxy: {
      "/api": { target: process.env.BACKEND_URL || "http://127.0.0.1:5000", changeOrigin: false },
    },
  },
  build: { outDir: "dist", sourcemap: true },
}));
