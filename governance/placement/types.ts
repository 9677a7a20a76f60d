/** Placement requests and results, and the workload profile fragmentation is measured against (governance/placement.ts). */
import { z } from 'zod';
import { TopologyLevel } from '../topology';

// ---------------------------------------------------------------------------------------------
// Requests and results

export const TopologyConstraint = z.strictObject({ level: TopologyLevel, mode: z.enum(['required', 'preferred']) });
export type TopologyConstraint = z.infer<typeof TopologyConstraint>;

/**
 * What a job asks for, all or nothing. Exactly one of `gpus` (whole GPUs, may span nodes),
 * `gpuMilli` (a share of one GPU, 1–999 thousandths, through MPS or time-slicing) or `migProfile`
 * (one MIG instance); none of them is a CPU-only request. `cpuMilli`/`memoryMib` are for the whole
 * job; a gang spread over nodes charges each node in proportion to the GPUs it gets.
 */
export const PlacementRequest = z
  .strictObject({
    id: z.string().optional(),
    gpus: z.number().int().positive().optional(),
    gpuMilli: z.number().int().min(1).max(999).optional(),
    migProfile: z
      .string()
      .regex(/^\d+g\.\d+gb$/)
      .optional(),
    sharing: z.enum(['mps', 'timeslice']).optional(),
    gpuType: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]).optional(),
    cpuMilli: z.number().int().nonnegative().optional(),
    memoryMib: z.number().int().nonnegative().optional(),
    topology: TopologyConstraint.optional(),
  })
  .refine((r) => [r.gpus, r.gpuMilli, r.migProfile].filter((x) => x !== undefined).length <= 1, {
    message: 'at most one of gpus, gpuMilli and migProfile',
  });
export type PlacementRequest = z.infer<typeof PlacementRequest>;

interface AssignmentBase {
  node: string;
  /** GPU indexes on the node (0-based). */
  gpus: number[];
  cpuMilli: number;
  memoryMib: number;
}
export type Assignment =
  | (AssignmentBase & { kind: 'whole' })
  | (AssignmentBase & { kind: 'milli'; milli: number; sharing: SharingMode })
  | (AssignmentBase & { kind: 'mig'; migProfile: string })
  | (AssignmentBase & { kind: 'cpu' });

/** `bench:<name>`: a per-node policy defined outside this module (the benchmark's paper baselines, via `placeOnNode`). */
export type PlacementPolicy = 'govloop' | 'firstFit' | 'bestFit' | `bench:${string}`;

/** How a GPU is shared: MPS and time-slicing never mix on one GPU. */
export type SharingMode = 'mps' | 'timeslice';

export interface Placement {
  placed: true;
  policy: PlacementPolicy;
  requestId: string | null;
  assignments: Assignment[];
  /** The smallest domain that holds every assignment. */
  domain: { level: TopologyLevel; id: string };
  explanation: {
    chosenLevel: TopologyLevel;
    /** One line per smaller level that could not hold the job, smallest first. */
    whyNotSmaller: string[];
    /** fragmentation(state) once this placement is committed. */
    fragmentationAfter: number;
    /** The request's topology constraint and whether the placement stays inside it. */
    constraint: TopologyConstraint & { satisfied: boolean };
    summary: string;
  };
}

export const PlacementReasonCode = {
  InvalidRequest: 'INVALID_REQUEST',
  GpuTypeUnknown: 'GPU_TYPE_UNKNOWN',
  MigProfileUnknown: 'MIG_PROFILE_UNKNOWN',
  SharingUnsupported: 'SHARING_UNSUPPORTED',
  InsufficientCapacity: 'INSUFFICIENT_CAPACITY',
  TopologyUnsatisfiable: 'TOPOLOGY_UNSATISFIABLE',
} as const;
export type PlacementReasonCode = (typeof PlacementReasonCode)[keyof typeof PlacementReasonCode];

export interface PlacementReason {
  code: PlacementReasonCode;
  message: string;
  /** The request, in words: "16 × H100", "gpuMilli 470 (any type)". */
  requested: string;
  /** The widest level the request allowed. */
  level: TopologyLevel | null;
  /** GPUs (or shares) the best single domain of that level could hold; null when not relevant. */
  largestFit: number | null;
  /** GPUs the whole cluster could hold for this request, ignoring topology. */
  clusterFit: number | null;
}

export interface PlacementRefusal {
  placed: false;
  policy: PlacementPolicy;
  requestId: string | null;
  reason: PlacementReason;
}

export type PlaceResult = Placement | PlacementRefusal;

// ---------------------------------------------------------------------------------------------
// Workload profile: what the fragmentation measure is measured against

/** One class of expected requests and its share of arrivals (weights need not sum to 1). */
export interface WorkloadClass {
  weight: number;
  gpus?: number;
  gpuMilli?: number;
  migProfile?: string;
  gpuType?: string | readonly string[];
  cpuMilli?: number;
  memoryMib?: number;
}
export type WorkloadProfile = readonly WorkloadClass[];

/** Without a profile, fragmentation is measured against "one whole GPU of any type". */
export const DEFAULT_WORKLOAD: WorkloadProfile = [{ weight: 1, gpus: 1 }];
