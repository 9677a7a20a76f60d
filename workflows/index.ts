export { governedTask } from './governed-task';
export { meteringRollup } from './metering-rollup';
export { budgetController } from './budget-controller';
export { auditCheckpoint } from './audit-checkpoint';
export { reconciler } from './reconciler';
export { migrationProgram } from './migration-program';
