import type { Assignment, Placement } from '../governance/placement';

/**
 * GPUs a job already holds, as a placement to `commit` into (or `release` from) a placement
 * state: how a backend rebuilds the cluster's state from the jobs it sees.
 */
export function heldPlacement(assignments: Assignment[]): Placement {
  return {
    placed: true,
    policy: 'govloop',
    requestId: null,
    assignments,
    domain: { level: 'cluster', id: 'held' },
    explanation: { chosenLevel: 'cluster', whyNotSmaller: [], fragmentationAfter: 0, constraint: { level: 'cluster', mode: 'preferred', satisfied: true }, summary: 'held' },
  };
}
