import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { busiestThreads, threadCpu } from '../../bench/lib';

describe('bench thread CPU (where the worker process spends its CPU)', () => {
  it('names a thread that burned CPU between two readings as the busiest, with its ms per unit of work', async () => {
    const before = threadCpu();
    expect(before.get(process.pid)?.name).toBe('main');
    // A worker thread that spins for 400 ms of its own CPU, while the main thread waits.
    const spinner = new Worker(
      'const { cpuUsage } = process; const t0 = cpuUsage(); while (cpuUsage(t0).user + cpuUsage(t0).system < 400_000); require("node:worker_threads").parentPort.postMessage("done");',
      { eval: true },
    );
    const tid = await new Promise<number>((resolve, reject) => {
      spinner.once('error', reject);
      spinner.once('message', () => {
        // The spinner is still alive here: its thread is the newest one with CPU of its own.
        const after = threadCpu();
        const [top] = busiestThreads(before, after, 4, 3);
        expect(top!.thread).not.toMatch(/^main#/);
        // 400 ms over 4 units of work: at least 100 ms each (clock ticks of 10 ms round it down a little).
        expect(top!.msPerUnit).toBeGreaterThanOrEqual(90);
        resolve(Number(top!.thread.split('#')[1]));
      });
    });
    await spinner.terminate();
    expect(tid).not.toBe(process.pid);
  });
});
