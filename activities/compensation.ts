import { ApplicationFailure, Context } from '@temporalio/activity';
import { own } from '../governance/own';
import { callTool } from '../tools/executor';
import { appendAudit } from '../ledger/audit';
import { isCompensated, upsertCompensation } from '../ledger/compensation';
import { updateTask } from '../ledger/tasks';
import type { ActivityContext } from './context';
import { notify } from './notify';

/** The saga's undo of a task's side-effecting steps (the tool catalog's compensations), and the page when one cannot succeed. */
export function createCompensationActivities({ db, config }: ActivityContext) {
  return {
    /**
     * Undoes one side-effecting step with the catalog's compensation. Throws on failure, so
     * Temporal retries it; every attempt is recorded. Idempotent: a step already undone is not undone twice.
     */
    async compensateStep(input: { taskId: string; seq: number; tool: string; args: unknown }): Promise<{ compensation: string; detail: string }> {
      const entry = own(config.tools.tools, input.tool);
      const compensation = entry?.compensation ?? null;
      if (compensation === null) throw ApplicationFailure.nonRetryable(`${input.tool} has no compensation in the tool catalog`, 'NoCompensation');
      if (await isCompensated(db, input.taskId, input.seq)) return { compensation, detail: 'already compensated' };
      const attempt = Context.current().info.attempt;
      try {
        const r = await callTool(config.tools.tools[compensation]!, {
          tool: compensation,
          args: input.args,
          taskId: input.taskId,
          step: input.seq,
          undoes: input.tool,
        });
        await db.tx(async (c) => {
          await upsertCompensation(c, { ...input, compensation, state: 'done', attempts: attempt, error: null });
          await appendAudit(c, {
            actor: 'govloop',
            taskId: input.taskId,
            action: 'compensation',
            decision: 'done',
            detail: { seq: input.seq, tool: input.tool, compensation, detail: r.detail },
            dedupeKey: `${input.taskId}:compensate:${input.seq}`,
          });
        });
        return { compensation, detail: r.detail };
      } catch (err) {
        await upsertCompensation(db, { ...input, compensation, state: 'failed', attempts: attempt, error: String((err as Error).message ?? err) });
        throw err;
      }
    },

    /** A compensation that cannot succeed: recorded and audited; the task waits for an operator. */
    async compensationFailed(input: { taskId: string; seq: number; tool: string; error: string }): Promise<void> {
      await db.tx(async (c) => {
        await updateTask(c, input.taskId, { state: 'NeedsOperator' });
        await appendAudit(c, {
          actor: 'govloop',
          taskId: input.taskId,
          action: 'compensation',
          decision: 'failed',
          detail: input,
          dedupeKey: `${input.taskId}:compensate:${input.seq}:failed`,
        });
      });
      await notify(config, {
        event: 'task.needs-operator',
        taskId: input.taskId,
        tool: input.tool,
        step: input.seq,
        error: input.error,
        runbook: 'runbooks/needsoperator.md',
      });
    },
  };
}
