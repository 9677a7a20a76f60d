// Lint rules that guard what the type checker cannot: deterministic workflow code and no
// forgotten promises (style.md rule 10).
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['node_modules/**', 'test/artifacts/**', 'test/fixtures/**'] },
  {
    files: ['**/*.ts'],
    extends: [tseslint.configs.base],
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': ['error', { checksVoidReturn: false }],
    },
  },
  {
    files: ['workflows/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            { group: ['node:*'], message: 'workflow code is deterministic: no Node builtins' },
            {
              group: ['@temporalio/activity', '@temporalio/client', '@temporalio/worker'],
              message: 'workflow code may import @temporalio/workflow and @temporalio/common only',
            },
            { group: ['uuid', 'pg', '**/ledger/*', '**/cluster/*', '**/runtime/*'], message: 'no I/O from workflow code: call an activity' },
          ],
          paths: [
            {
              name: '@temporalio/workflow',
              importNames: ['patched', 'deprecatePatch'],
              message: 'ask hasPatch from workflows/patches.ts: one marker per run (decision 0035)',
            },
          ],
        },
      ],
      'no-restricted-properties': ['error', { object: 'Math', property: 'random', message: 'use the workflow’s deterministic random' }],
    },
  },
  {
    // The one place that asks the SDK's patched() (it imports nothing else).
    files: ['workflows/patches.ts'],
    rules: { 'no-restricted-imports': 'off' },
  },
);
