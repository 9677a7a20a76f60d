/**
 * Every "no" govloop says carries a machine-readable reason (design principle 5):
 * what was asked, the limit it crossed, and the policy that set the limit.
 */
export const ReasonCode = {
  CapMaxUsd: 'CAP_MAX_USD',
  CapMaxGpuHours: 'CAP_MAX_GPU_HOURS',
  CapMaxTokens: 'CAP_MAX_TOKENS',
  CapMaxContextTokens: 'CAP_MAX_CONTEXT_TOKENS',
  CapMaxSteps: 'CAP_MAX_STEPS',
  CapMaxToolCalls: 'CAP_MAX_TOOL_CALLS',
  CapDeadline: 'CAP_DEADLINE',
  /** A step would take the task's charges past the worst case admission reserved for it (plan.worstCaseMicros). */
  CapReservation: 'CAP_RESERVATION',
  /** A step names a model other than the intent's model or its template's fallback model. */
  ModelNotAllowed: 'MODEL_NOT_ALLOWED',
  MaxGpusPerTask: 'MAX_GPUS_PER_TASK',
  GpuTypeUnknown: 'GPU_TYPE_UNKNOWN',
  SharingUnsupported: 'SHARING_UNSUPPORTED',
  GpuQuotaExceeded: 'GPU_QUOTA_EXCEEDED',
  GpuQuotaBusy: 'GPU_QUOTA_BUSY',
  GpuCapacityBusy: 'GPU_CAPACITY_BUSY',
  /** A borrowing request waits: a request ahead of it by priority and fair share fits now. */
  FairShareWait: 'FAIR_SHARE_WAIT',
  /** The request's GPUs come free once the workloads being preempted for it are suspended. */
  PreemptionPending: 'PREEMPTION_PENDING',
  /** The task was preempted (suspended and requeued) for another task or by an operator. */
  Preempted: 'PREEMPTED',
  /** A preemption was accepted, but the job ended (succeeded or failed) before it took effect: nothing was suspended. */
  PreemptTooLate: 'PREEMPT_TOO_LATE',
  GpuCapacityExceeded: 'GPU_CAPACITY_EXCEEDED',
  BudgetExceeded: 'BUDGET_EXCEEDED',
  BudgetMissing: 'BUDGET_MISSING',
  /** The budget controller's ladder is at its queue step: new work in the scope waits. */
  BudgetLadderQueue: 'BUDGET_LADDER_QUEUE',
  RiskClassNotAllowed: 'RISK_CLASS_NOT_ALLOWED',
  ToolUnknown: 'TOOL_UNKNOWN',
  ToolNotAllowed: 'TOOL_NOT_ALLOWED',
  ToolRiskNotAllowed: 'TOOL_RISK_NOT_ALLOWED',
  AwaitingApproval: 'AWAITING_APPROVAL',
  ApprovalRejected: 'APPROVAL_REJECTED',
  ApprovalExpired: 'APPROVAL_EXPIRED',
  CompensationFailed: 'COMPENSATION_FAILED',
  PriorityUnknown: 'PRIORITY_UNKNOWN',
  KindNotAllowed: 'KIND_NOT_ALLOWED',
  NoTemplate: 'NO_TEMPLATE',
  Cancelled: 'CANCELLED',
  NotRunning: 'NOT_RUNNING',
  /** Identity and authorization (decision 0018): the call had no identity, or its identity may not do this. */
  Unauthenticated: 'UNAUTHENTICATED',
  AuthRequired: 'AUTH_REQUIRED',
  TokenInvalid: 'TOKEN_INVALID',
  TokenExpired: 'TOKEN_EXPIRED',
  TokenIssuer: 'TOKEN_ISSUER',
  TokenAudience: 'TOKEN_AUDIENCE',
  KeyInvalid: 'KEY_INVALID',
  IdentityMismatch: 'IDENTITY_MISMATCH',
  Forbidden: 'FORBIDDEN',
  TenantScope: 'TENANT_SCOPE',
  TaskIdReused: 'TASK_ID_REUSED',
  ApprovalMismatch: 'APPROVAL_MISMATCH',
  /** Faults (decision 0020): input no retry can fix (SQLSTATE 22/23, a schema refused inside an activity); a call whose bounded retries ran out. */
  DataError: 'DATA_ERROR',
  RetriesExhausted: 'RETRIES_EXHAUSTED',
  /** The task's workflow closed (terminated, timed out, failed, cancelled) without settling it: the reconciler did. */
  Reconciled: 'RECONCILED',
} as const;
export type ReasonCode = (typeof ReasonCode)[keyof typeof ReasonCode];

export interface Reason {
  code: ReasonCode;
  message: string;
  /** The limit that was crossed, in the unit of `requested`. */
  limit: number | string | null;
  /** What the intent or the step asked for. */
  requested: number | string | null;
  /** Where the limit comes from: a config path or a ledger object. */
  policy: string;
}

export function reason(code: ReasonCode, message: string, limit: Reason['limit'], requested: Reason['requested'], policy: string): Reason {
  return { code, message, limit, requested, policy };
}
