import { defineConfig } from 'vitest/config';

/**
 * The chaos suite (issue 11): long tasks across continue-as-new runs, worker kills, PostgreSQL
 * restarts, reconciliation, generated intents. Its own Temporal dev server and its own PostgreSQL
 * cluster (global-setup.ts), so restarting the database does not disturb the main suite.
 * Run by `npm test` after the main suite, or alone with `npm run test:chaos`.
 */
export default defineConfig({
  test: {
    include: ['test/chaos/**/*.test.ts'],
    globalSetup: ['test/chaos/global-setup.ts'],
    testTimeout: 900_000,
    hookTimeout: 300_000,
    // The files restart shared servers: one file at a time.
    pool: 'forks',
    fileParallelism: false,
    reporters: ['default'],
  },
});
