import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { loadConfig } from '../../config/load';
import { showBudgets } from '../../ledger/budgets';
import { bundleWorkflows } from '../../workers/worker';
import { type CliResult, govloop } from '../support/cli';
import { type Harness, createHarness, testConfig } from '../support/harness';

/**
 * Issue 15's scenario, as a new user runs it: a $3 total budget, then 12 concurrent
 * `govloop submit --wait` of a 1-GPU H100 training intent with caps {maxUsd: 1, maxGpuHours: 0.2}
 * and no simulation block (the default 1,800 s job). Before the run limit, the three admitted
 * tasks ended at $1.05-$1.38 and the budget at 116 %. Run at the shipped speed-up and poll, and at
 * speed-up 1 with a cap of seconds.
 */
const shipped = loadConfig().simulation;

const scenarios = [
  { name: `the shipped speed-up (${shipped.speedup}x, ${shipped.pollMillis} ms poll)`, sim: {}, budgetUsd: 3, caps: { maxUsd: 1, maxGpuHours: 0.2 } },
  // 1.8 s of one H100 ($0.002 at $4/h): a 500 ms poll alone would let it run 28 % over.
  { name: 'speed-up 1 with a 1.8-second cap', sim: { speedup: 1 }, budgetUsd: 0.0075, caps: { maxUsd: 0.0025, maxGpuHours: 0.0005 } },
];

describe.each(scenarios)('issue 15 through govloop submit --wait at $name', (sc) => {
  let h: Harness;
  let dir: string;
  let env: Record<string, string>;

  beforeAll(async () => {
    h = await createHarness({ bundle: await bundleWorkflows(), config: testConfig({ speedup: shipped.speedup, pollMillis: shipped.pollMillis, ...sc.sim }) });
    await h.startWorkers();
    dir = mkdtempSync(join(tmpdir(), 'govloop-caps-'));
    env = {
      TEMPORAL_ADDRESS: inject('temporalAddress'),
      DATABASE_URL: inject('databaseUrl'),
      GOVLOOP_TASK_QUEUE: h.controlQueue,
      GOVLOOP_DATA_DIR: join(dir, 'state'),
    };
  });

  afterAll(async () => {
    await h?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('three tasks admitted, each stopped by the cluster at its cap and never charged past it; nine rejected for budget; spent plus reserved never over the budget', async () => {
    const tenant = `${h.tenant}-i15`;
    const set = await govloop(
      ['budget', 'set', '--tenant', tenant, '--team', 'search', '--usd', String(sc.budgetUsd), '--period', 'total', '--as', 'alice'],
      env,
    );
    expect(set.code, set.stderr).toBe(0);
    const file = join(dir, 'train.yaml');
    writeFileSync(
      file,
      stringify({
        kind: 'training',
        name: 'i15',
        attribution: { tenant, team: 'search', project: 'ranker', model: 'llama-3-8b', useCase: 'relevance' },
        caps: sc.caps,
        priority: 'normal',
        riskClass: 'low',
        resources: { gpus: 1, gpuType: 'H100', sharing: 'exclusive' },
      }),
    );
    // The budget as the ledger sees it, sampled while the 12 run: spent plus reserved never over the limit.
    let sampling = true;
    let samples = 0;
    const over: string[] = [];
    const sampler = (async () => {
      while (sampling) {
        for (const b of await showBudgets(h.db, { tenant }, new Date())) {
          samples++;
          if (b.spentUsd + b.reservedUsd > b.limitUsd + 1e-9) over.push(`spent ${b.spentUsd} + reserved ${b.reservedUsd} > ${b.limitUsd}`);
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
    let runs: CliResult[];
    try {
      runs = await Promise.all(Array.from({ length: 12 }, () => govloop(['submit', file, '--wait', '--json', '--as', 'alice'], env)));
    } finally {
      sampling = false;
      await sampler;
    }
    expect(over).toEqual([]);
    expect(samples).toBeGreaterThan(0);
    const outs = runs.map((r) => ({ code: r.code, out: r.json(), stderr: r.stderr }));
    const admitted = outs.filter((o) => o.out.decision === 'admitted');
    const rejected = outs.filter((o) => o.out.decision === 'rejected');
    expect(admitted.length).toBe(3);
    expect(rejected.length).toBe(9);
    for (const r of rejected) {
      expect(r.code).toBe(3);
      expect(r.out.reasons.map((x: { code: string }) => x.code)).toEqual(['BUDGET_EXCEEDED']);
    }
    for (const a of admitted) {
      // Exit 3 and the reason: the cap stopped it, the cluster did, at the cap.
      expect(a.code, a.stderr).toBe(3);
      expect(a.out.state).toBe('CapExceeded');
      expect(a.out.reasons[0]).toMatchObject({ code: 'CAP_MAX_GPU_HOURS', limit: sc.caps.maxGpuHours });
      expect(a.out.reasons[0].message).toMatch(/stopped the job at its run limit/);
      expect(a.out.costUsd).toBeLessThanOrEqual(sc.caps.maxUsd);
      expect(a.out.usage.gpuSeconds / 3600).toBeLessThanOrEqual(sc.caps.maxGpuHours);
      expect(a.out.usage.gpuSeconds / 3600).toBeGreaterThan(sc.caps.maxGpuHours * 0.999);
    }
    const worst = Math.max(...admitted.map((a) => a.out.usage.gpuSeconds / 3600 / sc.caps.maxGpuHours));
    const dearest = Math.max(...admitted.map((a) => a.out.costUsd));
    const [b] = await showBudgets(h.db, { tenant }, new Date());
    console.log(
      `issue 15 at ${sc.name}: ${admitted.length} admitted, ${rejected.length} rejected; GPU-hours at most ${(worst * 100).toFixed(4)} % of the cap; ` +
        `dearest task $${dearest.toFixed(6)} of $${sc.caps.maxUsd}; budget spent $${b!.spentUsd.toFixed(6)} of $${sc.budgetUsd} (${((b!.spentUsd / sc.budgetUsd) * 100).toFixed(2)} %); ${samples} budget samples, none over`,
    );
    expect(b!.reservedUsd).toBe(0);
    expect(b!.spentUsd).toBeLessThanOrEqual(sc.budgetUsd);
    expect(b!.spentUsd).toBeCloseTo(
      admitted.reduce((s, a) => s + a.out.costUsd, 0),
      6,
    );
  });
});
