import { defineConfig } from 'vitest/config';

// `npm test`: unit and store-contract suites (real SQLite; later PostgreSQL and Redis). The suites
// that need the OpenStack lab run with vitest.e2e.config.ts (`npm run test:e2e`).
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    exclude: ['test/e2e/**', 'test/openstack/**', '**/node_modules/**'],
    testTimeout: 20_000,
  },
});
