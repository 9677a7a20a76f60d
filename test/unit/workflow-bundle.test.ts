import { beforeAll, describe, expect, it } from 'vitest';
import { bundleWorkflows } from '../../workers/worker';

// The worker's workflow bundle: what its preload loads once per workflow thread (shared by every
// workflow in the reused V8 context) against what each workflow would otherwise evaluate again.
// The bundle is webpack's: each module starts with a line of its own, `/***/ "id"`, and a module
// loads another with `__webpack_require__(/*! spec */ "id")`.
let code = '';
/** module id → the module ids its body requires. */
const requires = new Map<string, Set<string>>();

const REQUIRE = /__webpack_require__\([^)]*?"([^"]+)"\)/g;

beforeAll(async () => {
  code = (await bundleWorkflows()).code;
  const starts = [...code.matchAll(/^\/\*{3}\/ "([^"]+)"$/gm)];
  starts.forEach((m, i) => {
    const body = code.slice(
      m.index,
      i + 1 < starts.length ? starts[i + 1]!.index : code.indexOf('/************************************************************************/', m.index),
    );
    requires.set(m[1]!, new Set([...body.matchAll(REQUIRE)].map((r) => r[1]!)));
  });
}, 120_000);

/** Every module id reachable from `roots` through requires. */
function closure(roots: string[]): Set<string> {
  const seen = new Set<string>();
  const todo = [...roots];
  while (todo.length > 0) {
    const id = todo.pop()!;
    if (seen.has(id)) continue;
    seen.add(id);
    for (const r of requires.get(id) ?? []) todo.push(r);
  }
  return seen;
}

describe('the workflow bundle preloads zod (decision 0032)', () => {
  it('preloads a module that webpack kept: the preload is not compiled away', () => {
    const preload = /exports\.preloadModules = function preloadModules\(\) \{([\s\S]*?)\n\}/.exec(code)?.[1] ?? '';
    const preloaded = [...preload.matchAll(REQUIRE)].map((r) => r[1]!);
    expect(preloaded).toEqual(['./workflows/preload-zod.ts']);
  });

  it('loads from the preload every zod module that the workflow code imports, so no workflow evaluates zod again', () => {
    const shared = closure(['./workflows/preload-zod.ts']);
    const perWorkflow = closure(['./workflows/index.ts']);
    const zodOfWorkflows = [...perWorkflow].filter((id) => id.includes('/node_modules/zod/'));
    expect(zodOfWorkflows.length).toBeGreaterThan(5);
    expect(zodOfWorkflows.filter((id) => !shared.has(id))).toEqual([]);
  });

  it('does not pull in the zod it does not need (every locale)', () => {
    const shared = closure(['./workflows/preload-zod.ts']);
    expect([...shared].filter((id) => id.includes('/zod/v4/locales/') && !id.endsWith('/en.js'))).toEqual([]);
  });
});
