import { defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';

/** The custom search attributes on-call filters by in Temporal UI (registered by `govloop dev`). */
export const GovTenant = defineSearchAttributeKey('GovTenant', SearchAttributeType.KEYWORD);
export const GovTeam = defineSearchAttributeKey('GovTeam', SearchAttributeType.KEYWORD);
export const GovProject = defineSearchAttributeKey('GovProject', SearchAttributeType.KEYWORD);
export const GovUseCase = defineSearchAttributeKey('GovUseCase', SearchAttributeType.KEYWORD);
export const GovKind = defineSearchAttributeKey('GovKind', SearchAttributeType.KEYWORD);
export const GovState = defineSearchAttributeKey('GovState', SearchAttributeType.KEYWORD);
export const GovPriority = defineSearchAttributeKey('GovPriority', SearchAttributeType.KEYWORD);
export const GovRiskClass = defineSearchAttributeKey('GovRiskClass', SearchAttributeType.KEYWORD);
export const GovCostUsd = defineSearchAttributeKey('GovCostUsd', SearchAttributeType.DOUBLE);
/** The migration program (workflows/migration-program.ts): its active phase, its day, whether a gate blocks it. */
export const ProgramPhase = defineSearchAttributeKey('ProgramPhase', SearchAttributeType.KEYWORD);
export const ProgramDay = defineSearchAttributeKey('ProgramDay', SearchAttributeType.INT);
export const ProgramBlocked = defineSearchAttributeKey('ProgramBlocked', SearchAttributeType.BOOL);

/** name → CLI type, for `temporal server start-dev --search-attribute` and operator registration. */
export const searchAttributeTypes: Record<string, 'Keyword' | 'Double' | 'Int' | 'Bool'> = {
  GovTenant: 'Keyword',
  GovTeam: 'Keyword',
  GovProject: 'Keyword',
  GovUseCase: 'Keyword',
  GovKind: 'Keyword',
  GovState: 'Keyword',
  GovPriority: 'Keyword',
  GovRiskClass: 'Keyword',
  GovCostUsd: 'Double',
  ProgramPhase: 'Keyword',
  ProgramDay: 'Int',
  ProgramBlocked: 'Bool',
};

export const RUNBOOK_BASE = 'runbooks/';
