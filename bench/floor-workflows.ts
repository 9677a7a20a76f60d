/**
 * bench/floor.ts's workflows: the Temporal skeletons of a governed task with none of govloop's work
 * in them (no-op activities, a fixed search attribute). What each costs is the floor under a task
 * of that shape, on that server and worker.
 */
import {
  condition,
  defineSignal,
  defineUpdate,
  proxyActivities,
  proxyLocalActivities,
  setHandler,
  sleep,
  upsertMemo,
  upsertSearchAttributes,
} from '@temporalio/workflow';

export interface FloorActivities {
  noop(input: { n: number }): Promise<{ n: number }>;
}

const local = proxyLocalActivities<FloorActivities>({ startToCloseTimeout: '30 seconds' });
const other = (taskQueue: string) => proxyActivities<FloorActivities>({ startToCloseTimeout: '60 seconds', taskQueue });

/** Start and complete: no command but the completion. */
export async function floorEmpty(): Promise<number> {
  return 0;
}

/** One local activity. */
export async function floorLocal(): Promise<number> {
  return (await local.noop({ n: 1 })).n;
}

/** One timer. */
export async function floorTimer(): Promise<number> {
  await sleep(1);
  return 1;
}

/** One activity on another task queue (as a cluster call goes to the cluster's dispatch queue). */
export async function floorActivity(o: { queue: string }): Promise<number> {
  return (await other(o.queue).noop({ n: 1 })).n;
}

/** A state change as a governed task writes it: the GovState search attribute and the runbook memo. */
function mirrorState(s: string): void {
  upsertSearchAttributes({ GovState: [s] });
  upsertMemo({ runbook: `runbooks/${s.toLowerCase()}.md` });
}

/**
 * A governed cluster task's skeleton (workflows/task/cluster-run.ts, one dispatch that finds room):
 * admission (local) with the state's upsert and runbook memo; dispatch (an activity on the
 * cluster's queue) and Running; the poll timer; the observation (an activity on that queue);
 * settle (local) and the final state: 30 events, 4 workflow tasks. With `queue` null the two
 * cluster calls are local activities (as if the control worker ran next to the cluster): 20
 * events, 2 workflow tasks.
 */
export async function floorClusterTask(o: { queue: string | null; pollMillis: number }): Promise<number> {
  const cluster = o.queue === null ? local : other(o.queue);
  await local.noop({ n: 1 });
  mirrorState('Reserved');
  await cluster.noop({ n: 2 });
  mirrorState('Running');
  await sleep(o.pollMillis);
  await cluster.noop({ n: 3 });
  await local.noop({ n: 4 });
  mirrorState('Succeeded');
  return 4;
}

export const floorAdmission = defineUpdate<string>('floorAdmission');
export const floorStep = defineUpdate<number, [number]>('floorStep');
export const floorFinish = defineSignal('floorFinish');

/**
 * A governed agent task's skeleton (5 synchronous steps): started with its admission update
 * (update-with-start, as submit does; admission is a local activity), each step an update whose
 * gate is a local activity, then the finish signal, settle (local) and completion.
 */
export async function floorAgentTask(): Promise<number> {
  let admitted = false;
  let finished = false;
  let steps = 0;
  setHandler(floorAdmission, async () => {
    await condition(() => admitted);
    return 'admitted';
  });
  setHandler(floorStep, async (k) => {
    await local.noop({ n: k });
    return ++steps;
  });
  setHandler(floorFinish, () => void (finished = true));
  await local.noop({ n: 0 });
  admitted = true;
  mirrorState('Running');
  await condition(() => finished);
  await local.noop({ n: -1 });
  mirrorState('Succeeded');
  return steps;
}
