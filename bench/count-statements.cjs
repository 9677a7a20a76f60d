/**
 * Counts the SQL statements a process sends to PostgreSQL, by the govloop function that sent each,
 * and prints the table when the process exits. Preload it into a bench run:
 *
 *   node --require ./bench/count-statements.cjs --import tsx bench/e2e.ts --database-url postgresql://… --tasks 40 --concurrency 1
 *
 * Divide by the tasks (and steps) the run reports: docs/benchmarks.md ("Round trips per step").
 * It wraps pg's Client#query, which every pool query and transaction statement goes through.
 */
const pg = require('pg');

const counts = new Map();
const query = pg.Client.prototype.query;
pg.Client.prototype.query = function countedQuery(q, ...rest) {
  const text = typeof q === 'string' ? q : (q && q.text) || '';
  const caller =
    new Error().stack
      .split('\n')
      .slice(2)
      .map((l) => l.trim())
      .find((l) => !l.includes('node_modules') && !l.includes('node:') && !l.includes('ledger/db.ts') && !l.includes('count-statements')) || '?';
  const where = caller.replace(/^at /, '').replace(/\(.*?\/((?:activities|ledger|cluster|bench|runtime|server|workflows)\/[^:]+):(\d+):\d+\)$/, '($1:$2)');
  const key = `${where} | ${text.replace(/\s+/g, ' ').trim().slice(0, 60)}`;
  counts.set(key, (counts.get(key) || 0) + 1);
  return query.call(this, q, ...rest);
};

process.on('exit', () => {
  const rows = [...counts].sort((a, b) => b[1] - a[1]);
  const total = rows.reduce((s, [, n]) => s + n, 0);
  process.stderr.write(`\nSQL statements sent: ${total}\n`);
  for (const [k, n] of rows) process.stderr.write(`${String(n).padStart(7)}  ${k}\n`);
});
