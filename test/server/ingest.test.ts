/**
 * The usage ingestion API through Fastify's inject(), on the real PostgreSQL of the test run:
 * exactly-once totals under re-sends in random order, tenant isolation on every endpoint, streams
 * that add up exactly, the time window, and malformed input answered with field paths.
 */
import { randomUUID } from 'node:crypto';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { loadConfig } from '../../config/load';
import { type Meter, costMicros, priceVersionAt } from '../../governance/pricing';
import { setBudget } from '../../ledger/budgets';
import { Db } from '../../ledger/db';
import { createKey, revokeKey } from '../../ledger/keys';
import { type Api, buildApi } from '../../server/app';
import { UNATTRIBUTED, rollUp, rollupUsageBy } from '../../ledger/rollups';
import { newTask } from '../ledger/backends';

const priceBook = loadConfig().priceBook;
const NOW = new Date('2026-11-22T12:00:00.000Z');
const METRICS_TOKEN = 'metrics-secret-for-tests';

let db: Db;
let api: Api;
let now = NOW;

beforeAll(async () => {
  db = new Db(inject('databaseUrl'), 10);
  api = await buildApi({ db, config: { priceBook, maxAgeHours: 72, futureSkewSeconds: 300, metricsToken: METRICS_TOKEN }, clock: () => now });
});

afterAll(async () => {
  await api?.app.close();
  await db?.close();
});

const newTenant = () => `t-${randomUUID().slice(0, 8)}`;

async function tenantWithKey(): Promise<{ tenant: string; key: string; auth: { authorization: string } }> {
  const tenant = newTenant();
  const { key } = await createKey(db, tenant, 'test');
  return { tenant, key, auth: { authorization: `Bearer ${key}` } };
}

interface Ev {
  id: string;
  time: string;
  attribution: { tenant: string; team: string; project: string; model: string; useCase: string; tool?: string };
  meter: string;
  quantity: number;
  [k: string]: unknown;
}

const ev = (tenant: string, over: Partial<Ev> = {}): Ev => ({
  id: randomUUID(),
  time: new Date(NOW.getTime() - 3_600_000).toISOString(),
  attribution: { tenant, team: 'search', project: 'ranker', model: 'llama-3-8b', useCase: 'relevance' },
  meter: 'tokens_in',
  quantity: 1000,
  ...over,
});

const post = (auth: Record<string, string>, body: unknown) => api.app.inject({ method: 'POST', url: '/v1/usage', headers: auth, payload: body as object });
const get = (auth: Record<string, string>, url: string) => api.app.inject({ method: 'GET', url, headers: auth });

async function eventCount(tenant: string): Promise<number> {
  const { rows } = await db.query<{ n: number }>(
    'SELECT count(*)::int AS n FROM usage_events u JOIN attributions a ON a.id = u.attribution_id WHERE a.tenant = $1',
    [tenant],
  );
  return rows[0]!.n;
}

/** What the ledger must hold for one event, priced on its own, independently of the server. */
function truthCost(e: Ev): number {
  if (!['tokens_in', 'tokens_out', 'gpu_seconds'].includes(e.meter)) return 0;
  const subject = e.meter === 'gpu_seconds' ? `${String(e.gpuType)}:${String(e.sharing ?? 'exclusive')}` : e.attribution.model;
  return costMicros(priceVersionAt(priceBook, e.time), { meter: e.meter as Meter, quantity: e.quantity, subject });
}

describe('POST /v1/usage', () => {
  it('10,000 events, 30% re-sent, random order, concurrent batches: ledger totals per attribution equal the deduplicated truth exactly', async () => {
    const { tenant, auth } = await tenantWithKey();
    await setBudget(db, { tenant }, 'month', 1_000_000, 'test');
    const rng = fc.sample(fc.integer({ min: 0, max: 2 ** 31 - 1 }), { numRuns: 40_000, seed: 42 });
    let r = 0;
    const pick = <T>(xs: readonly T[]): T => xs[rng[r++ % rng.length]! % xs.length]!;
    const teams = ['search', 'support', 'ads'];
    const projects = ['ranker', 'helpdesk'];
    const models = ['llama-3-8b', 'llama-3-70b', 'frontier-large', 'unlisted-model'];
    const meters = ['tokens_in', 'tokens_out', 'gpu_seconds', 'kv_gb_seconds', 'network_bytes', 'storage_gb_hours'];
    const unique: Ev[] = Array.from({ length: 7000 }, (_, i) => {
      const meter = pick(meters);
      const e = ev(tenant, {
        id: `e-${i}`,
        time: new Date(NOW.getTime() - (1 + (rng[r++ % rng.length]! % (60 * 60))) * 60_000).toISOString(),
        attribution: {
          tenant,
          team: pick(teams),
          project: pick(projects),
          model: pick(models),
          useCase: 'relevance',
          ...(i % 5 === 0 ? { tool: 'search.web' } : {}),
        },
        meter,
        // Whole units (and half GPU-seconds): float sums are exact in any order.
        quantity: meter === 'gpu_seconds' ? (rng[r++ % rng.length]! % 7200) / 2 : rng[r++ % rng.length]! % 50_000,
      });
      if (meter === 'gpu_seconds') Object.assign(e, { gpuType: pick(['H100', 'A100']), sharing: pick(['exclusive', 'mps', 'mig:1g.10gb']) });
      return e;
    });
    const resent = Array.from({ length: 3000 }, () => pick(unique));
    const all = [...unique, ...resent];
    // Fisher-Yates with the seeded sequence.
    for (let i = all.length - 1; i > 0; i--) {
      const j = rng[r++ % rng.length]! % (i + 1);
      [all[i], all[j]] = [all[j]!, all[i]!];
    }
    const batches = Array.from({ length: Math.ceil(all.length / 500) }, (_, i) => all.slice(i * 500, i * 500 + 500));
    let accepted = 0;
    let duplicates = 0;
    // Four requests in flight at a time, as several clients would send.
    for (let i = 0; i < batches.length; i += 4) {
      const answers = await Promise.all(batches.slice(i, i + 4).map((b) => post(auth, { events: b })));
      for (const a of answers) {
        expect(a.statusCode, a.body).toBe(200);
        const body = a.json();
        expect(body.rejected).toEqual([]);
        accepted += body.accepted;
        duplicates += body.duplicates;
      }
    }
    expect({ accepted, duplicates }).toEqual({ accepted: 7000, duplicates: 3000 });

    // The truth: each unique event once.
    const want = new Map<string, { quantity: number; costMicros: number; events: number }>();
    let totalCost = 0;
    for (const e of unique) {
      const a = e.attribution;
      const k = [a.team, a.project, a.model, a.useCase, a.tool ?? '', e.meter].join('|');
      const cur = want.get(k) ?? { quantity: 0, costMicros: 0, events: 0 };
      const cost = truthCost(e);
      totalCost += cost;
      want.set(k, { quantity: cur.quantity + e.quantity, costMicros: cur.costMicros + cost, events: cur.events + 1 });
    }
    expect(totalCost).toBeGreaterThan(0);

    // The ledger, read directly ...
    const { rows } = await db.query<{ k: string; quantity: number; cost: number; n: number }>(
      `SELECT concat_ws('|', a.team, a.project, a.model, a.use_case, COALESCE(u.tool, ''), u.meter) AS k, SUM(u.quantity) AS quantity, SUM(u.cost_micros)::bigint AS cost, COUNT(*)::int AS n
       FROM usage_events u JOIN attributions a ON a.id = u.attribution_id WHERE a.tenant = $1 GROUP BY 1`,
      [tenant],
    );
    const got = new Map(rows.map((x) => [x.k, { quantity: x.quantity, costMicros: x.cost, events: x.n }]));
    expect(got).toEqual(want);

    // ... and through the API, per attribution and meter.
    const report = await get(
      auth,
      `/v1/usage?by=team,project,model,useCase,tool&from=${new Date(NOW.getTime() - 4 * 86_400_000).toISOString()}&to=${NOW.toISOString()}`,
    );
    expect(report.statusCode, report.body).toBe(200);
    const viaApi = new Map<string, { quantity: number; costMicros: number; events: number }>(
      report
        .json()
        .rows.map((x: Record<string, string | number>) => [
          [x.team, x.project, x.model, x.useCase, x.tool, x.meter].join('|'),
          { quantity: x.quantity, costMicros: x.costMicros, events: x.events },
        ]),
    );
    expect(viaApi).toEqual(want);

    // The budget was charged exactly once per event too.
    const b = await get(auth, '/v1/budgets');
    expect(b.json().budgets).toEqual([expect.objectContaining({ scope: `${tenant}/*/*`, period: 'month', spentUsd: totalCost / 1e6, reservedUsd: 0 })]);

    // Sending everything again, in one more order, changes nothing.
    const again = await Promise.all(batches.reverse().map((x) => post(auth, { events: x })));
    expect(again.reduce((s, a) => s + a.json().accepted, 0)).toBe(0);
    expect(await eventCount(tenant)).toBe(7000);
  });

  it('streamed partial events add up exactly to the price of the whole, in any order and re-sent', async () => {
    const { tenant, auth } = await tenantWithKey();
    // 1,000 parts of 7 llama-3-8b input tokens: $0.20/M → 1.4 µ$ a part; priced alone each rounds to 1 µ$.
    const parts = Array.from({ length: 1000 }, (_, i) => ev(tenant, { id: `s1-${i}`, streamId: 's1', offset: i * 7, quantity: 7 }));
    // A GPU stream in half-second parts on an H100 ($4/h).
    const gpu = Array.from({ length: 2469 }, (_, i) =>
      ev(tenant, {
        id: `g1-${i}`,
        meter: 'gpu_seconds',
        gpuType: 'H100',
        streamId: 'g1',
        offset: i * 0.5,
        quantity: 0.5,
        attribution: { tenant, team: 'search', project: 'ranker', model: 'gpu-run', useCase: 'relevance' },
      }),
    );
    const shuffled = fc.sample(fc.shuffledSubarray([...parts, ...gpu], { minLength: parts.length + gpu.length }), { numRuns: 1, seed: 7 })[0]!;
    const resent = shuffled.filter((_, i) => i % 3 === 0);
    const all = [...shuffled, ...resent];
    for (let i = 0; i < all.length; i += 700) expect((await post(auth, { events: all.slice(i, i + 700) })).statusCode).toBe(200);

    const { rows } = await db.query<{ meter: string; quantity: number; cost: number }>(
      'SELECT u.meter, SUM(u.quantity) AS quantity, SUM(u.cost_micros)::bigint AS cost FROM usage_events u JOIN attributions a ON a.id = u.attribution_id WHERE a.tenant = $1 GROUP BY 1 ORDER BY 1',
      [tenant],
    );
    const v = priceVersionAt(priceBook, NOW.toISOString());
    expect(rows).toEqual([
      { meter: 'gpu_seconds', quantity: 1234.5, cost: costMicros(v, { meter: 'gpu_seconds', quantity: 1234.5, subject: 'H100:exclusive' }) },
      { meter: 'tokens_in', quantity: 7000, cost: 1400 },
    ]);
    expect(rows[0]!.cost).toBe(1_371_667);

    // The same parts without stream offsets drift: each is rounded on its own.
    const loose = await tenantWithKey();
    await post(loose.auth, {
      events: parts.map((p) => ({ ...p, attribution: { ...p.attribution, tenant: loose.tenant }, streamId: undefined, offset: undefined })),
    });
    const drift = await db.query<{ cost: number }>(
      'SELECT SUM(u.cost_micros)::bigint AS cost FROM usage_events u JOIN attributions a ON a.id = u.attribution_id WHERE a.tenant = $1',
      [loose.tenant],
    );
    expect(drift.rows[0]!.cost).toBe(1000);
  });

  it('rejects events outside the time window with a reason, records the rest, and answers a late re-send as a duplicate', async () => {
    const { tenant, auth } = await tenantWithKey();
    const hoursAgo = (h: number) => new Date(NOW.getTime() - h * 3_600_000).toISOString();
    const events = [
      ev(tenant, { id: 'fresh', time: hoursAgo(71) }),
      ev(tenant, { id: 'stale', time: hoursAgo(73) }),
      ev(tenant, { id: 'future', time: new Date(NOW.getTime() + 600_000).toISOString() }),
      ev(tenant, { id: 'skewed', time: new Date(NOW.getTime() + 60_000).toISOString() }),
    ];
    const a = await post(auth, { events });
    expect(a.statusCode).toBe(200);
    expect(a.json()).toEqual({
      accepted: 2,
      duplicates: 0,
      unattributed: 0,
      rejected: [
        { index: 1, code: 'stale', reason: `time: ${events[1]!.time} is older than the 72 h ingestion window` },
        { index: 2, code: 'future', reason: `time: ${events[2]!.time} is more than 300 s in the future` },
      ],
    });
    expect(await eventCount(tenant)).toBe(2);
    // Two days later 'fresh' is stale, but it was counted: a client retrying it learns so.
    now = new Date(NOW.getTime() + 48 * 3_600_000);
    try {
      const b = await post(auth, { events: [events[0]!, ev(tenant, { id: 'never-sent', time: hoursAgo(71) })] });
      expect(b.json()).toEqual({
        accepted: 0,
        duplicates: 1,
        unattributed: 0,
        rejected: [{ index: 1, code: 'stale', reason: expect.stringMatching(/older than the 72 h/) }],
      });
    } finally {
      now = NOW;
    }
  });

  it('rejects an unpriced GPU meter and an unknown or foreign task per event', async () => {
    const { tenant, auth } = await tenantWithKey();
    const other = await tenantWithKey();
    const mine = await newTask(db, tenant);
    const theirs = await newTask(db, other.tenant);
    await db.query(`UPDATE tasks SET plan = '{"gpu": {"type": "H100", "sharing": "exclusive", "count": 2}}' WHERE task_id = $1`, [mine]);
    const r = await post(auth, {
      events: [
        ev(tenant, { meter: 'gpu_seconds', quantity: 60 }),
        ev(tenant, { meter: 'gpu_seconds', quantity: 60, gpuType: 'TPUv9' }),
        ev(tenant, { taskId: 'no-such-task' }),
        ev(tenant, { taskId: theirs }),
        ev(tenant, { taskId: mine, meter: 'gpu_seconds', quantity: 3600 }),
        ev(tenant, { taskId: mine, attribution: { tenant, team: 'other-team', project: 'ranker', model: 'llama-3-8b', useCase: 'relevance' } }),
      ],
    });
    expect(r.json()).toEqual({
      accepted: 1,
      duplicates: 0,
      unattributed: 0,
      rejected: [
        { index: 0, code: 'unpriced', reason: expect.stringMatching(/^gpuType: .*no GPU-hour price for unknown/) },
        { index: 1, code: 'unpriced', reason: expect.stringMatching(/^gpuType: .*no GPU-hour price for TPUv9/) },
        { index: 2, code: 'task', reason: `taskId: no task no-such-task in tenant ${tenant}` },
        { index: 3, code: 'task', reason: `taskId: no task ${theirs} in tenant ${tenant}` },
        { index: 5, code: 'task', reason: expect.stringMatching(/belongs to search\/ranker, not other-team\/ranker/) },
      ],
    });
    // The task's planned GPU (H100, exclusive) prices its GPU-seconds; its cost moved.
    const t = await db.query<{ cost_micros: number }>('SELECT cost_micros FROM tasks WHERE task_id = $1', [mine]);
    expect(t.rows[0]!.cost_micros).toBe(4_000_000);
  });

  it('records events that leave attribution dimensions out as unattributed: counted, priced and rolled up, never dropped', async () => {
    const { tenant, auth } = await tenantWithKey();
    const task = await newTask(db, tenant);
    const r = await post(auth, {
      events: [
        ev(tenant, { id: 'full' }),
        ev(tenant, { id: 'tenant-only', attribution: { tenant } as Ev['attribution'], quantity: 1_000_000 }),
        // Team and project come from the task the event names.
        ev(tenant, { id: 'from-task', taskId: task, attribution: { tenant, model: 'llama-3-8b', useCase: 'relevance' } as Ev['attribution'] }),
      ],
    });
    expect(r.statusCode).toBe(200);
    expect(r.json()).toEqual({ accepted: 3, duplicates: 0, rejected: [], unattributed: 1 });
    await rollUp(db);
    const day = new Date(Date.UTC(NOW.getUTCFullYear(), NOW.getUTCMonth(), NOW.getUTCDate()));
    const rows = await rollupUsageBy(db, ['team', 'model'], day, new Date(day.getTime() + 86_400_000), tenant);
    // A million tokens with no model are priced at the price book's default input price ($3 / 1M).
    expect(rows.map((x) => [x.team, x.model, x.tokens, x.costUsd])).toEqual([
      [UNATTRIBUTED, UNATTRIBUTED, 1_000_000, 3],
      ['search', 'llama-3-8b', 2000, 0.0004],
    ]);
  });

  it('answers malformed input 400 with every field path and writes nothing', async () => {
    const { tenant, auth } = await tenantWithKey();
    const good = ev(tenant);
    const bad = { ...ev(tenant), meter: 'joules', quantity: -1, attribution: { tenant, team: 7, project: 'p', model: 'm', useCase: 'u' }, extra: 1 };
    const r = await post(auth, {
      events: [good, bad, { ...ev(tenant), meter: 'tokens_out', quantity: 1.5, gpuType: 'H100', time: 'yesterday' }, { ...ev(tenant), streamId: 's' }],
    });
    expect(r.statusCode).toBe(400);
    expect(r.json().error).toBe('invalid input');
    expect(
      r
        .json()
        .errors.map((e: { path: string }) => e.path)
        .sort(),
    ).toEqual(
      [
        'events.1',
        'events.1.attribution.team',
        'events.1.meter',
        'events.1.quantity',
        'events.2.gpuType',
        'events.2.quantity',
        'events.2.time',
        'events.3.offset',
      ].sort(),
    );
    expect(await eventCount(tenant)).toBe(0);

    // The messages say what is wrong.
    const r2 = await post(auth, { events: [good, { ...ev(tenant), meter: 'tokens_out', quantity: 1.5, gpuType: 'H100' }, { ...ev(tenant), streamId: 's' }] });
    expect(r2.statusCode).toBe(400);
    expect(r2.json().errors).toEqual([
      { path: 'events.1.quantity', message: 'tokens are whole numbers' },
      { path: 'events.1.gpuType', message: 'only for meter gpu_seconds' },
      { path: 'events.2.offset', message: 'streamId and offset go together' },
    ]);

    // A NUL (PostgreSQL refuses it in text) or another control character anywhere: refused at the edge, with its path.
    const r3 = await post(auth, {
      events: [good, { ...ev(tenant), id: 'evt\u0000' }, { ...ev(tenant), attribution: { ...ev(tenant).attribution, tool: 'search\u001b[2J' } }],
    });
    expect(r3.statusCode).toBe(400);
    expect(r3.json().errors).toEqual([
      { path: 'events.1.id', message: 'must not contain control characters (\\u0000 at 3)' },
      { path: 'events.2.attribution.tool', message: 'must not contain control characters (\\u001b at 6)' },
    ]);
    expect(await eventCount(tenant)).toBe(0);

    for (const body of [{}, { events: [] }, { events: 'x' }, [good]]) {
      const x = await post(auth, body);
      expect(x.statusCode, JSON.stringify(body)).toBe(400);
      expect(x.json().errors.length).toBeGreaterThan(0);
    }
    const notJson = await api.app.inject({
      method: 'POST',
      url: '/v1/usage',
      headers: { ...auth, 'content-type': 'application/json' },
      payload: '{"events": [',
    });
    expect(notJson.statusCode).toBe(400);
    expect(notJson.json().errors[0].path).toBe('(body)');
    expect(await eventCount(tenant)).toBe(0);

    const q = await get(auth, '/v1/usage?by=team,colour&from=soon');
    expect(q.statusCode).toBe(400);
    expect(
      q
        .json()
        .errors.map((e: { path: string }) => e.path)
        .sort(),
    ).toEqual(['by.1', 'from']);
  });
});

describe('tenant isolation', () => {
  it('a tenant key writes and reads only its own tenant, on every endpoint', async () => {
    const a = await tenantWithKey();
    const b = await tenantWithKey();
    await setBudget(db, { tenant: a.tenant }, 'month', 100, 'test');
    await setBudget(db, { tenant: b.tenant }, 'month', 200, 'test');
    // The same event id in two tenants: two different events.
    expect((await post(a.auth, { events: [ev(a.tenant, { id: 'same-id' })] })).json().accepted).toBe(1);
    expect((await post(b.auth, { events: [ev(b.tenant, { id: 'same-id', quantity: 5000 })] })).json().accepted).toBe(1);

    // Writing: one event of another tenant refuses the whole request.
    const w = await post(a.auth, { events: [ev(a.tenant), ev(b.tenant)] });
    expect(w.statusCode).toBe(403);
    expect(w.json().errors).toEqual([{ path: 'events.1.attribution.tenant', message: `${b.tenant} is not the tenant of this API key` }]);
    expect(await eventCount(a.tenant)).toBe(1);
    expect(await eventCount(b.tenant)).toBe(1);

    // Reading: naming the other tenant is refused; the own view holds only the own rows.
    for (const url of [`/v1/usage?tenant=${b.tenant}`, `/v1/budgets?tenant=${b.tenant}`]) {
      const x = await get(a.auth, url);
      expect(x.statusCode, url).toBe(403);
      expect(x.json().errors[0].path).toBe('tenant');
    }
    const own = await get(a.auth, `/v1/usage?tenant=${a.tenant}&by=team&from=2026-11-01&to=2026-12-01`);
    expect(own.statusCode).toBe(200);
    expect(own.json()).toMatchObject({ tenant: a.tenant, rows: [{ team: 'search', meter: 'tokens_in', quantity: 1000, events: 1 }] });
    const budgets = await get(a.auth, '/v1/budgets');
    expect(budgets.json()).toEqual({ tenant: a.tenant, budgets: [expect.objectContaining({ scope: `${a.tenant}/*/*`, limitUsd: 100 })] });

    // Metrics span all tenants: a tenant key is refused.
    expect((await get(a.auth, '/metrics')).statusCode).toBe(403);

    // No key, a malformed key, an unknown key and a revoked key: 401 everywhere.
    const revoked = await createKey(db, a.tenant, 'test');
    expect((await revokeKey(db, a.tenant, revoked.prefix, 'test')).revoked).toBe(true);
    const noKey = {};
    const badKeys = [
      noKey,
      { authorization: 'Bearer nope' },
      { authorization: `Bearer glk_${'A'.repeat(43)}` },
      { authorization: `Bearer ${revoked.key}` },
      { authorization: a.key },
    ];
    for (const h of badKeys) {
      for (const [method, url] of [
        ['POST', '/v1/usage'],
        ['GET', '/v1/usage'],
        ['GET', '/v1/budgets'],
        ['GET', '/metrics'],
      ] as const) {
        const x = await api.app.inject({ method, url, headers: h, ...(method === 'POST' ? { payload: { events: [ev(a.tenant)] } } : {}) });
        expect(x.statusCode, `${method} ${url} ${JSON.stringify(h)}`).toBe(401);
      }
    }
    expect(await eventCount(a.tenant)).toBe(1);
  });
});

describe('GET /metrics and /healthz', () => {
  it('counts ingestion and duplicates, and shows admission decisions and budget utilization per scope', async () => {
    const { tenant, auth } = await tenantWithKey();
    await setBudget(db, { tenant, team: 'search' }, 'day', 10, 'test');
    const scrape = async () => {
      const m = await get({ authorization: `Bearer ${METRICS_TOKEN}` }, '/metrics');
      expect(m.statusCode).toBe(200);
      expect(m.headers['content-type']).toMatch(/^text\/plain/);
      return m.body;
    };
    const counter = (text: string, series: string) =>
      Number(new RegExp(`^${series.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} (\\S+)$`, 'm').exec(text)?.[1] ?? Number.NaN);
    const before = await scrape();
    // 100k frontier-large output tokens at $25/M: $2.50 of the $10 day.
    const e = ev(tenant, {
      attribution: { tenant, team: 'search', project: 'ranker', model: 'frontier-large', useCase: 'relevance' },
      meter: 'tokens_out',
      quantity: 100_000,
      time: NOW.toISOString(),
    });
    await post(auth, { events: [e, e, ev(tenant, { time: '2020-01-01T00:00:00Z' })] });
    await post(auth, { events: [e] });
    const after = await scrape();
    expect(counter(after, 'govloop_usage_events_total{outcome="accepted"}') - counter(before, 'govloop_usage_events_total{outcome="accepted"}')).toBe(1);
    expect(counter(after, 'govloop_usage_events_total{outcome="duplicate"}') - counter(before, 'govloop_usage_events_total{outcome="duplicate"}')).toBe(2);
    expect(counter(after, 'govloop_usage_events_rejected_total{reason="stale"}') - counter(before, 'govloop_usage_events_rejected_total{reason="stale"}')).toBe(
      1,
    );
    expect(counter(after, 'govloop_usage_requests_total{status="200"}') - counter(before, 'govloop_usage_requests_total{status="200"}')).toBe(2);
    const scope = `tenant="${tenant}",team="search",project="*",period="day"`;
    expect(counter(after, `govloop_budget_limit_usd{${scope}}`)).toBe(10);
    expect(counter(after, `govloop_budget_spent_usd{${scope}}`)).toBe(2.5);
    expect(counter(after, `govloop_budget_utilization_ratio{${scope}}`)).toBe(0.25);
    expect(after).toMatch(/^# TYPE govloop_admission_decisions gauge$/m);
    // The ladder step its controller set (none runs here: ok = 0), enforcement and leases from the ledger.
    expect(counter(after, `govloop_budget_ladder_step{${scope}}`)).toBe(0);
    await db.query(`UPDATE budget_windows w SET ladder_step = 'throttle' FROM budgets b WHERE b.id = w.budget_id AND b.tenant = $1`, [tenant]);
    expect(counter(await scrape(), `govloop_budget_ladder_step{${scope}}`)).toBe(2);
    expect(after).toMatch(/^# TYPE govloop_enforcement_actions gauge$/m);
    expect(counter(after, 'govloop_leases{state="held",measure="count"}')).toBeGreaterThanOrEqual(0);
    expect(after).toMatch(/^govloop_http_request_duration_seconds_count\{method="POST",route="\/v1\/usage",status="200"\} \d+$/m);

    expect((await get({ authorization: 'Bearer wrong' }, '/metrics')).statusCode).toBe(401);
    const h = await get({}, '/healthz');
    expect([h.statusCode, h.json()]).toEqual([200, { ok: true }]);
  });

  it('/metrics is off without an operator token', async () => {
    const off = await buildApi({ db, config: { priceBook, maxAgeHours: 72, futureSkewSeconds: 300 } });
    try {
      expect((await off.app.inject({ method: 'GET', url: '/metrics', headers: { authorization: `Bearer ${METRICS_TOKEN}` } })).statusCode).toBe(404);
    } finally {
      await off.app.close();
    }
  });
});
