/**
 * zod, as the workflow bundle imports it, for the worker to load once per workflow thread
 * (workers/worker.ts PRELOADED_WORKFLOW_MODULES, decision 0032). The bundle's preload is a bare
 * `require()` of each listed module. zod's package says it has no side effects, so webpack drops a
 * bare `require('zod')`: the preload compiled to `0;`, and each workflow evaluated zod again. This
 * module is ours, so webpack keeps its require. Its import resolves to the module ids every
 * workflow module's `import { z } from 'zod'` resolves to, and those are what must be shared.
 */
import { z } from 'zod';

/**
 * One export from each zod module that workflow code reaches through `z`. That is enough to load
 * each module with what it imports. It is not `z` itself: that would also pull in every locale.
 * test/unit/workflow-bundle.test.ts checks that every zod module the bundle's other modules import
 * is loaded from here.
 */
export const preloadedZod = [z.string, z.ZodError, z.iso.datetime, z.config];

/**
 * zod sets its defaults on first use: the English locale when the first schema is built, the
 * memoizer when the first container is. They go into zod's global config. The worker freezes a
 * preloaded module once the preload has run, so they must be set now. Otherwise the first schema a
 * workflow builds fails with "Cannot add property localeError, object is not extensible".
 */
z.strictObject({ preload: z.array(z.string()) }).safeParse({ preload: [] });
