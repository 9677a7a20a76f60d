/** The double-booking check: live placements recounted from scratch (governance/placement.ts). */
import type { TopologyIndex } from '../topology';
import type { Placement } from './types';
import { MILLI } from './state';

// ---------------------------------------------------------------------------------------------
// Audit

export interface AuditResult {
  /** GPUs held more than they have: whole twice, whole plus shares, shares above 1000, MIG slices above the GPU's, shares and MIG mixed, MPS and time-slice shares mixed. */
  doubleBookedGpus: number;
  /** Nodes whose CPU or memory is committed beyond capacity. */
  overcommittedNodes: number;
  /** GPUs in use, counting shares and MIG slices by their fraction. */
  allocatedGpus: number;
}

/** Recounts a set of live placements from scratch, independently of any state: the double-booking check. */
export function audit(index: TopologyIndex, placements: readonly Placement[]): AuditResult {
  const whole = new Uint8Array(index.totalGpus);
  const milli = new Int32Array(index.totalGpus);
  const milliTs = new Int32Array(index.totalGpus);
  const migC = new Int32Array(index.totalGpus);
  const migM = new Int32Array(index.totalGpus);
  const cpu = new Float64Array(index.nodes.length);
  const mem = new Float64Array(index.nodes.length);
  for (const p of placements) {
    for (const a of p.assignments) {
      const n = index.nodeIndex.get(a.node)!;
      const node = index.nodes[n]!;
      cpu[n]! += a.cpuMilli;
      mem[n]! += a.memoryMib;
      const mig = a.kind === 'mig' ? index.gpuTypes[node.type]!.migProfiles.get(a.migProfile) : undefined;
      for (const g of a.gpus) {
        const x = node.gpuOffset + g;
        if (a.kind === 'whole') whole[x]!++;
        else if (a.kind === 'milli' && a.sharing === 'timeslice') milliTs[x]! += a.milli;
        else if (a.kind === 'milli') milli[x]! += a.milli;
        else if (mig !== undefined) {
          migC[x]! += mig.computeSlices;
          migM[x]! += mig.memorySlices;
        }
      }
    }
  }
  let doubleBooked = 0;
  let allocated = 0;
  for (const node of index.nodes) {
    const t = index.gpuTypes[node.type]!;
    for (let g = 0; g < node.gpus; g++) {
      const x = node.gpuOffset + g;
      const kinds = (whole[x]! > 0 ? 1 : 0) + (milli[x]! > 0 ? 1 : 0) + (milliTs[x]! > 0 ? 1 : 0) + (migC[x]! > 0 ? 1 : 0);
      if (kinds > 1 || whole[x]! > 1 || milli[x]! > MILLI || milliTs[x]! > MILLI || migC[x]! > t.migComputeSlices || migM[x]! > t.migMemorySlices)
        doubleBooked++;
      allocated += whole[x]! + (milli[x]! + milliTs[x]!) / MILLI + migC[x]! / t.migComputeSlices;
    }
  }
  let over = 0;
  for (const node of index.nodes) if (cpu[node.index]! > node.cpuMilli || mem[node.index]! > node.memoryMib) over++;
  return { doubleBookedGpus: doubleBooked, overcommittedNodes: over, allocatedGpus: allocated };
}
