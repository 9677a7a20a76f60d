import { describe, expect, it } from 'vitest';
import { type UnsettledTask, type WorkflowSight, type WorkflowStatusName, orphanVerdict } from '../../governance/reconcile';

const NOW = new Date('2026-03-01T12:00:00Z');
const GRACE = 120_000;
const ago = (ms: number) => new Date(NOW.getTime() - ms);

/** A small fluent builder of the two things the verdict reads: the ledger row and the workflow's latest run. */
class Case {
  task: UnsettledTask = { taskId: 't-1', state: 'Running', createdAt: ago(3_600_000), finished: false, heldMicros: 5_000_000 };
  wf: WorkflowSight = { found: true, status: 'RUNNING', runId: 'run-1', closeTime: null };
  row(over: Partial<UnsettledTask>): this {
    this.task = { ...this.task, ...over };
    return this;
  }
  closed(status: WorkflowStatusName, closedAgoMs = 600_000): this {
    this.wf = { found: true, status, runId: 'run-1', closeTime: ago(closedAgoMs) };
    return this;
  }
  running(status: WorkflowStatusName = 'RUNNING'): this {
    this.wf = { found: true, status, runId: 'run-2', closeTime: null };
    return this;
  }
  gone(): this {
    this.wf = { found: false };
    return this;
  }
}
const c = () => new Case();

describe('orphanVerdict', () => {
  const cases: { name: string; c: Case; wantVerdict: 'orphaned' | 'leave'; wantWhy?: string; wantState?: string; wantStatus?: string }[] = [
    { name: 'a running workflow is never touched', c: c(), wantVerdict: 'leave', wantWhy: 'running' },
    { name: 'a paused workflow is left alone', c: c().running('PAUSED'), wantVerdict: 'leave', wantWhy: 'running' },
    { name: 'continued as new: a newer run goes on', c: c().running('CONTINUED_AS_NEW'), wantVerdict: 'leave', wantWhy: 'running' },
    { name: 'terminated by hand', c: c().closed('TERMINATED'), wantVerdict: 'orphaned', wantState: 'Failed', wantStatus: 'TERMINATED' },
    { name: 'timed out', c: c().closed('TIMED_OUT'), wantVerdict: 'orphaned', wantState: 'Failed', wantStatus: 'TIMED_OUT' },
    { name: 'failed', c: c().closed('FAILED'), wantVerdict: 'orphaned', wantState: 'Failed', wantStatus: 'FAILED' },
    { name: 'cancelled: settled Cancelled', c: c().closed('CANCELLED'), wantVerdict: 'orphaned', wantState: 'Cancelled', wantStatus: 'CANCELLED' },
    {
      name: 'completed while the ledger still holds the reservation',
      c: c().closed('COMPLETED'),
      wantVerdict: 'orphaned',
      wantState: 'Failed',
      wantStatus: 'COMPLETED',
    },
    {
      name: 'finished, but the reservation still held (settle cut in half)',
      c: c().row({ finished: true, state: 'Settling' }).closed('TERMINATED'),
      wantVerdict: 'orphaned',
      wantState: 'Failed',
    },
    {
      name: 'not finished, nothing reserved (queued when terminated)',
      c: c().row({ heldMicros: null, state: 'Queued' }).closed('TERMINATED'),
      wantVerdict: 'orphaned',
      wantState: 'Failed',
    },
    { name: 'workflow gone past retention', c: c().gone(), wantVerdict: 'orphaned', wantState: 'Failed', wantStatus: 'NOT_FOUND' },
    {
      name: 'already settled: finished and released',
      c: c().row({ finished: true, heldMicros: null }).closed('TERMINATED'),
      wantVerdict: 'leave',
      wantWhy: 'settled',
    },
    { name: 'closed within the grace: time to reset it', c: c().closed('TERMINATED', GRACE - 1), wantVerdict: 'leave', wantWhy: 'in-grace' },
    { name: 'closed exactly the grace ago', c: c().closed('TERMINATED', GRACE), wantVerdict: 'orphaned', wantState: 'Failed' },
    {
      name: 'a row younger than the grace, workflow gone',
      c: c()
        .row({ createdAt: ago(1_000) })
        .gone(),
      wantVerdict: 'leave',
      wantWhy: 'in-grace',
    },
    { name: 'an unknown status is left to a person', c: c().closed('UNKNOWN'), wantVerdict: 'leave', wantWhy: 'unknown-status' },
  ];
  for (const t of cases) {
    it(t.name, () => {
      const v = orphanVerdict(t.c.task, t.c.wf, NOW, GRACE);
      expect(v.verdict).toBe(t.wantVerdict);
      if (v.verdict === 'leave') expect(v.why).toBe(t.wantWhy);
      else {
        expect(v.state).toBe(t.wantState);
        if (t.wantStatus) expect(v.workflowStatus).toBe(t.wantStatus);
        expect(v.reason).toMatchObject({ code: 'RECONCILED', requested: v.workflowStatus, policy: 'policies#reconcile' });
        expect(v.reason.message).toContain(`while the task was ${t.c.task.state}`);
      }
    });
  }

  it('a grace of 0 settles a workflow closed a moment ago', () => {
    expect(orphanVerdict(c().task, c().closed('TERMINATED', 0).wf, NOW, 0)).toMatchObject({ verdict: 'orphaned', state: 'Failed' });
  });
});
