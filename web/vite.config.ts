import { defineConfig } from 'vite';

// Relative asset paths: the app is served by `tailor serve` from any folder,
// and everything (chart.js included) is bundled so it works offline.
export default defineConfig({
  base: './',
  build: { chunkSizeWarningLimit: 1024 },
});
