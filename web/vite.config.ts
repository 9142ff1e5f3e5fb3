import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

// `npm run dev`: the app on http://localhost:5173, the API proxied to the backend
// (`make run`, or BACKEND_URL), so the browser sees one origin and cookies just work.
export default defineConfig({
  plugins: [react()],
  server: {
    proxy: {
      "/api": { target: process.env.BACKEND_URL || "http://127.0.0.1:5000", changeOrigin: false },
    },
  },
  build: { outDir: "dist", sourcemap: true },
});
