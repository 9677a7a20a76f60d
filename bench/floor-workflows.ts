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

/**
 * A governed cluster task's skeleton (workflows/task/cluster-run.ts, one dispatch that finds room):
 * admission (local) with the state's upsert and runbook memo; dispatch (an activity on the
 * cluster's queue) and Running; the poll timer; the observation (an activity on that queue);
 * settle (local) and the final state. Histories: 34 events for the task, as the skeleton's own.
 */
export async function floorClusterTask(o: { queue: string; pollMillis: number }): Promise<number> {
  const cluster = other(o.queue);
  const state = (s: string) => {
    upsertSearchAttributes({ GovState: [s] });
    upsertMemo({ runbook: `runbooks/${s.toLowerCase()}.md` });
  };
  await local.noop({ n: 1 });
  state('Reserved');
  await cluster.noop({ n: 2 });
  state('Running');
  await sleep(o.pollMillis);
  await cluster.noop({ n: 3 });
  await local.noop({ n: 4 });
  state('Succeeded');
  return 4;
}

/**
 * The same task with its two cluster calls as local activities (as if the control worker ran
 * next to the cluster): admission, dispatch and the poll timer in the first workflow task; the
 * observation, settle and completion in the second.
 */
export async function floorClusterTaskLocal(o: { pollMillis: number }): Promise<number> {
  const state = (s: string) => {
    upsertSearchAttributes({ GovState: [s] });
    upsertMemo({ runbook: `runbooks/${s.toLowerCase()}.md` });
  };
  await local.noop({ n: 1 });
  state('Reserved');
  await local.noop({ n: 2 });
  state('Running');
  await sleep(o.pollMillis);
  await local.noop({ n: 3 });
  await local.noop({ n: 4 });
  state('Succeeded');
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
  const state = (s: string) => {
    upsertSearchAttributes({ GovState: [s] });
    upsertMemo({ runbook: `runbooks/${s.toLowerCase()}.md` });
  };
  setHandler(floorAdmission, async () => {
    await condition(() => admitted);
    return 'admitted';
  });
  setHandler(floorStep, async (k) => {
    steps += (await local.noop({ n: k })).n > -1 ? 1 : 0;
    return steps;
  });
  setHandler(floorFinish, () => void (finished = true));
  await local.noop({ n: 0 });
  admitted = true;
  state('Running');
  await condition(() => finished);
  await local.noop({ n: -1 });
  state('Succeeded');
  return steps;
}
