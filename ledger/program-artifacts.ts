import type { Queryable } from './db';
import type { Deliverable } from './program-deliverables';

/**
 * Keeps a produced deliverable whole in program_artifacts, under the program and phase it was
 * produced for. Idempotent: the same content (same id and hash) is the same row.
 */
export async function storeProgramArtifact(q: Queryable, programId: string, phase: string, a: Deliverable): Promise<void> {
  await q.query(
    `INSERT INTO program_artifacts (program_id, deliverable_id, phase_id, kind, version, sha256, content, sources)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING`,
    [programId, a.id, phase, a.kind, a.version, a.sha256, a.content, JSON.stringify(a.sources)],
  );
}
