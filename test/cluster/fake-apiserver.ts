/**
 * A recorded stand-in for kube-apiserver's batch/v1 Jobs endpoints, on 127.0.0.1 with a random port.
 * It answers what the Kubernetes backend calls with the real server's status codes and `Status`
 * bodies (verified against a real kube-apiserver where one could be built, see
 * docs/decisions/0012-kubernetes-backend.md), and records every request so tests can assert the
 * exact calls. There is no Job controller: tests play it with `setStatus()` and `finishDeletion()`.
 *
 * Implemented:
 *   POST   /apis/batch/v1/namespaces/{ns}/jobs            201 | 409 AlreadyExists | 422 Invalid | 404 namespace
 *   GET    /apis/batch/v1/namespaces/{ns}/jobs[?watch=1]  list, or a watch stream (ADDED/MODIFIED/DELETED)
 *   GET    /apis/batch/v1/namespaces/{ns}/jobs/{name}     200 | 404 NotFound
 *   PATCH  …/jobs/{name}  merge-patch+json / strategic-merge-patch+json (RFC 7386 merge);
 *          a metadata.resourceVersion in the patch must match (409 Conflict otherwise); 415 for others
 *   DELETE …/jobs/{name}?propagationPolicy=Foreground|Background|Orphan
 *          Foreground: 200 with the Job, now carrying deletionTimestamp and the foregroundDeletion
 *          finalizer, until finishDeletion(); Background/Orphan: 200 Status Success, gone at once
 * Every answer can be replaced once by `failNext(method, code)` (401, 403, 500 … with the body the
 * real server sends for that code). A bearer token is required when `token` is given.
 */
import { randomUUID } from 'node:crypto';
import { type IncomingMessage, type ServerResponse, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface RecordedRequest {
  method: string;
  path: string;
  query: Record<string, string>;
  contentType: string | null;
  body: unknown;
}

type Json = Record<string, unknown>;
type Job = Json & { metadata: Json & { name: string; namespace: string; resourceVersion: string; annotations?: Record<string, string>; labels?: Record<string, string> }; spec: Json; status: Json };

const DNS1123 = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

/** The body kube-apiserver sends with an error: a `Status` object. */
export function statusError(code: number, reason: string, message: string, details?: Json): Json {
  return { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, ...(details ? { details } : {}), code };
}

function statusFor(code: number, ns: string, verb: string, name?: string): Json {
  const details = { ...(name ? { name } : {}), group: 'batch', kind: 'jobs' };
  switch (code) {
    case 401:
      return statusError(401, 'Unauthorized', 'Unauthorized');
    case 403:
      return statusError(403, 'Forbidden', `jobs.batch${name ? ` "${name}"` : ''} is forbidden: User "system:serviceaccount:govloop:dispatcher" cannot ${verb} resource "jobs" in API group "batch" in the namespace "${ns}"`, details);
    case 404:
      return statusError(404, 'NotFound', `jobs.batch "${name}" not found`, details);
    case 409:
      return statusError(409, 'Conflict', `Operation cannot be fulfilled on jobs.batch "${name}": the object has been modified; please apply your changes to the latest version and try again`, details);
    case 429:
      return statusError(429, 'TooManyRequests', 'the server has received too many requests and has asked us to try again later', { retryAfterSeconds: 1 });
    case 500:
      return statusError(500, 'InternalError', 'Internal error occurred: etcdserver: request timed out', { causes: [{ message: 'etcdserver: request timed out' }] });
    case 503:
      return statusError(503, 'ServiceUnavailable', 'the server is currently unable to handle the request');
    default:
      return statusError(code, 'Unknown', `fake apiserver: injected ${code}`);
  }
}

function isObj(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** RFC 7386 JSON merge patch. */
export function mergePatch(target: unknown, patch: unknown): unknown {
  if (!isObj(patch)) return patch;
  const out: Json = isObj(target) ? { ...target } : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}

const clone = <T>(v: T): T => structuredClone(v);

export class FakeApiServer {
  readonly requests: RecordedRequest[] = [];
  readonly jobs = new Map<string, Job>();
  private readonly namespaces: Set<string>;
  private readonly failures: { method: string; code: number }[] = [];
  private readonly watchers = new Set<{ ns: string; selector: string | null; res: ServerResponse }>();
  private rv = 1000;
  private server = createServer((req, res) => void this.handle(req, res));
  url = '';

  constructor(private readonly opts: { namespaces?: string[]; token?: string } = {}) {
    this.namespaces = new Set(opts.namespaces ?? ['default', 'govloop']);
  }

  async start(): Promise<string> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this.url;
  }

  async stop(): Promise<void> {
    for (const w of this.watchers) w.res.end();
    this.watchers.clear();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  /** Open watch streams. */
  get watching(): number {
    return this.watchers.size;
  }

  /** Ends every open watch stream, as the API server does when its watch timeout runs out. */
  closeWatches(): void {
    for (const w of this.watchers) w.res.end();
    this.watchers.clear();
  }

  /** The next request with this method (or '*') gets this error code instead of its answer. */
  failNext(method: string, code: number): void {
    this.failures.push({ method: method.toUpperCase(), code });
  }

  /** Plays the Job controller: replaces a Job's status (bumps resourceVersion, notifies watchers). */
  setStatus(ns: string, name: string, status: Json): void {
    const job = this.jobs.get(`${ns}/${name}`);
    if (!job) throw new Error(`no job ${ns}/${name}`);
    job.status = clone(status);
    this.bump(job, 'MODIFIED');
  }

  /** Plays the garbage collector: removes a Job held by foreground deletion. */
  finishDeletion(ns: string, name: string): void {
    const job = this.jobs.get(`${ns}/${name}`);
    if (!job) return;
    this.jobs.delete(`${ns}/${name}`);
    this.notify('DELETED', job);
  }

  /** Requests without the bodies of reads, for compact assertions: "METHOD path?query". */
  calls(): string[] {
    return this.requests.map((r) => {
      const q = new URLSearchParams(r.query).toString();
      return `${r.method} ${r.path}${q ? `?${q}` : ''}`;
    });
  }

  private bump(job: Job, event: 'ADDED' | 'MODIFIED'): void {
    job.metadata.resourceVersion = String(++this.rv);
    this.notify(event, job);
  }

  private notify(type: string, job: Job): void {
    for (const w of this.watchers) {
      if (w.ns !== job.metadata.namespace) continue;
      if (w.selector && !(job.metadata.labels && w.selector in job.metadata.labels)) continue;
      w.res.write(`${JSON.stringify({ type, object: job })}\n`);
    }
  }

  private send(res: ServerResponse, code: number, body: unknown): void {
    res.writeHead(code, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body));
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://x');
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const raw = Buffer.concat(chunks).toString('utf8');
    let body: unknown = null;
    try {
      body = raw ? JSON.parse(raw) : null;
    } catch {
      body = raw;
    }
    const method = req.method ?? 'GET';
    this.requests.push({ method, path: url.pathname, query: Object.fromEntries(url.searchParams), contentType: req.headers['content-type'] ?? null, body });

    const m = url.pathname.match(/^\/apis\/batch\/v1\/namespaces\/([^/]+)\/jobs(?:\/([^/]+))?$/);
    if (!m) return this.send(res, 404, statusError(404, 'NotFound', 'the server could not find the requested resource'));
    const ns = decodeURIComponent(m[1]!);
    const name = m[2] ? decodeURIComponent(m[2]) : undefined;
    const verb = { POST: 'create', GET: name ? 'get' : 'list', PATCH: 'patch', DELETE: 'delete' }[method] ?? method.toLowerCase();

    if (this.opts.token && req.headers.authorization !== `Bearer ${this.opts.token}`) return this.send(res, 401, statusFor(401, ns, verb));
    const i = this.failures.findIndex((f) => f.method === method || f.method === '*');
    if (i >= 0) {
      const [f] = this.failures.splice(i, 1);
      // Like RBAC, a create is authorized on the collection: its message has no object name.
      return this.send(res, f!.code, statusFor(f!.code, ns, verb, name ?? (f!.code === 403 || !isObj(body) || !isObj(body.metadata) ? undefined : String(body.metadata.name))));
    }
    if (!this.namespaces.has(ns)) return this.send(res, 404, statusError(404, 'NotFound', `namespaces "${ns}" not found`, { name: ns, kind: 'namespaces' }));

    const key = name ? `${ns}/${name}` : '';
    if (method === 'POST' && !name) return this.create(res, ns, body);
    if (method === 'GET' && !name) {
      const selector = url.searchParams.get('labelSelector');
      if (url.searchParams.get('watch') === 'true' || url.searchParams.get('watch') === '1') {
        res.writeHead(200, { 'content-type': 'application/json', 'transfer-encoding': 'chunked' });
        const w = { ns, selector, res };
        this.watchers.add(w);
        // From a resourceVersion: only what happens next (no history is kept). Without: every Job as ADDED first.
        if (!url.searchParams.get('resourceVersion')) {
          for (const job of this.jobs.values()) {
            if (job.metadata.namespace === ns && (!selector || (job.metadata.labels && selector in job.metadata.labels))) res.write(`${JSON.stringify({ type: 'ADDED', object: job })}\n`);
          }
        }
        req.on('close', () => this.watchers.delete(w));
        return;
      }
      const items = [...this.jobs.values()].filter((j) => j.metadata.namespace === ns && (!selector || (j.metadata.labels && selector in j.metadata.labels)));
      return this.send(res, 200, { kind: 'JobList', apiVersion: 'batch/v1', metadata: { resourceVersion: String(this.rv) }, items });
    }
    const job = this.jobs.get(key);
    if (!job || !name) return this.send(res, 404, statusFor(404, ns, verb, name));
    if (method === 'GET') return this.send(res, 200, job);
    if (method === 'PATCH') return this.patch(res, req.headers['content-type'] ?? '', job, body);
    if (method === 'DELETE') {
      const policy = url.searchParams.get('propagationPolicy') ?? (isObj(body) ? (body.propagationPolicy as string | undefined) : undefined) ?? 'Orphan';
      if (policy === 'Foreground') {
        if (!job.metadata.deletionTimestamp) {
          job.metadata.deletionTimestamp = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
          job.metadata.deletionGracePeriodSeconds = 0;
          job.metadata.finalizers = ['foregroundDeletion'];
          this.bump(job, 'MODIFIED');
        }
        return this.send(res, 200, job);
      }
      this.jobs.delete(key);
      this.notify('DELETED', job);
      return this.send(res, 200, { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Success', details: { name, group: 'batch', kind: 'jobs', uid: job.metadata.uid } });
    }
    return this.send(res, 405, statusError(405, 'MethodNotAllowed', `the server does not allow this method on the requested resource`));
  }

  private create(res: ServerResponse, ns: string, body: unknown): void {
    if (!isObj(body) || !isObj(body.metadata) || !isObj(body.spec)) return this.send(res, 400, statusError(400, 'BadRequest', 'the body of the request was in an unknown format'));
    const name = String(body.metadata.name ?? '');
    const causes: Json[] = [];
    if (!DNS1123.test(name) || name.length > 63) causes.push({ reason: 'FieldValueInvalid', message: `Invalid value: "${name}": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'`, field: 'metadata.name' });
    if (body.metadata.namespace !== undefined && body.metadata.namespace !== ns) {
      return this.send(res, 400, statusError(400, 'BadRequest', 'the namespace of the provided object does not match the namespace sent on the request'));
    }
    if (causes.length) {
      return this.send(res, 422, statusError(422, 'Invalid', `Job.batch "${name}" is invalid: ${causes.map((c) => `${String(c.field)}: ${String(c.message)}`).join(', ')}`, { name, group: 'batch', kind: 'Job', causes }));
    }
    const key = `${ns}/${name}`;
    if (this.jobs.has(key)) return this.send(res, 409, statusError(409, 'AlreadyExists', `jobs.batch "${name}" already exists`, { name, group: 'batch', kind: 'jobs' }));
    const job = clone(body) as Job;
    job.metadata = { ...job.metadata, namespace: ns, uid: randomUUID(), generation: 1, creationTimestamp: new Date().toISOString().replace(/\.\d+Z$/, 'Z'), resourceVersion: '' };
    job.status = {};
    this.jobs.set(key, job);
    this.bump(job, 'ADDED');
    this.send(res, 201, job);
  }

  private patch(res: ServerResponse, contentType: string, job: Job, body: unknown): void {
    const type = contentType.split(';')[0]!.trim();
    if (type !== 'application/merge-patch+json' && type !== 'application/strategic-merge-patch+json') {
      return this.send(res, 415, statusError(415, 'UnsupportedMediaType', `the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml`));
    }
    if (!isObj(body)) return this.send(res, 400, statusError(400, 'BadRequest', 'the body of the request was in an unknown format'));
    const rv = isObj(body.metadata) ? body.metadata.resourceVersion : undefined;
    if (rv !== undefined && rv !== job.metadata.resourceVersion) return this.send(res, 409, statusFor(409, job.metadata.namespace, 'patch', job.metadata.name));
    const next = mergePatch(job, body) as Job;
    next.metadata.name = job.metadata.name;
    next.metadata.namespace = job.metadata.namespace;
    next.metadata.uid = job.metadata.uid;
    next.status = job.status;
    if (JSON.stringify(next.spec) !== JSON.stringify(job.spec)) next.metadata.generation = Number(job.metadata.generation ?? 1) + 1;
    this.jobs.set(`${job.metadata.namespace}/${job.metadata.name}`, next);
    this.bump(next, 'MODIFIED');
    this.send(res, 200, next);
  }
}
