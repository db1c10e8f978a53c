import { defineConfig } from 'vitest/config';

// `npm run test:e2e`: against the real lab (test/e2e/lab.sh), one file at a time since they share it.
export default defineConfig({
  test: {
    include: ['test/e2e/**/*.test.ts', 'test/openstack/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    fileParallelism: false,
  },
});
