/** Fixtures shared by the Kubernetes backend tests. */
import { KubeConfig } from '@kubernetes/client-node';
import { type JobSpec, jobName } from '../../cluster/backend';

/** A JobSpec as dispatchJob builds it: 8 exclusive H100s for acme/search/ranker, torchrun template. */
export class JobSpecBuilder {
  private spec: JobSpec;

  constructor(taskId = 'llama-ft-nightly-1a2b3c4d') {
    this.spec = {
      name: jobName(taskId),
      taskId,
      gpus: 8,
      gpuType: 'H100',
      sharing: 'exclusive',
      priorityClass: 'govloop-normal',
      labels: { 'govloop.io/tenant': 'acme', 'govloop.io/team': 'search', 'govloop.io/project': 'ranker', 'govloop.io/task': taskId },
      runtime: {
        image: 'nvcr.io/nvidia/pytorch:24.08-py3',
        command: ['torchrun', '--nnodes=$(NNODES)', '--nproc-per-node=$(GPUS_PER_NODE)', 'train.py'],
        env: {},
      },
      simulation: { durationSeconds: 60, tokensPerSecond: 10, failAfterSeconds: null },
    };
  }

  /** Another name than jobName(taskId): what a name collision would look like. */
  named(name: string): this {
    this.spec = { ...this.spec, name };
    return this;
  }

  gpus(gpus: number, sharing: JobSpec['sharing'] = 'exclusive'): this {
    this.spec = { ...this.spec, gpus, sharing };
    return this;
  }

  labels(labels: Record<string, string>): this {
    this.spec = { ...this.spec, labels: { ...this.spec.labels, ...labels } };
    return this;
  }

  runtime(runtime: Partial<JobSpec['runtime']>): this {
    this.spec = { ...this.spec, runtime: { ...this.spec.runtime, ...runtime } };
    return this;
  }

  build(): JobSpec {
    return structuredClone(this.spec);
  }
}

export const aJob = (taskId?: string) => new JobSpecBuilder(taskId);

/** A KubeConfig for a server URL with a bearer token (TLS not verified: test servers self-sign). */
export function kubeConfigFor(server: string, token: string): KubeConfig {
  const kc = new KubeConfig();
  kc.loadFromOptions({
    clusters: [{ name: 'test', server, skipTLSVerify: true }],
    users: [{ name: 'test', token }],
    contexts: [{ name: 'test', cluster: 'test', user: 'test', namespace: 'govloop' }],
    currentContext: 'test',
  });
  return kc;
}

/** A clock the test moves by hand. */
export class ManualClock {
  constructor(public now = new Date('2026-01-01T00:00:00Z')) {}
  advance(seconds: number): void {
    this.now = new Date(this.now.getTime() + seconds * 1000);
  }
  readonly fn = () => this.now;
}
