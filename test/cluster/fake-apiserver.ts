/**
 * A recorded stand-in for the parts of kube-apiserver the Kubernetes backend uses, on 127.0.0.1
 * with a random port. It answers with the real server's status codes and `Status` bodies (checked
 * against a real kube-apiserver in ./kubernetes-apiserver.test.ts, "the recorded server answers
 * like the real one"), and records every request so tests can assert the exact calls. There is
 * no controller: tests play the Job controller with `setStatus()` / `addPod()` and the garbage
 * collector with `finishDeletion()`.
 *
 * Implemented:
 *   /apis/batch/v1/namespaces/{ns}/jobs[/{name}[/status]]   batch/v1 Jobs, with a watch
 *   /api/v1/namespaces/{ns}/services[/{name}]               Services
 *   /api/v1/namespaces/{ns}/pods[/{name}], /api/v1/pods     Pods (list in a namespace or in all)
 *   /api/v1/nodes[/{name}]                                  Nodes
 *   /apis/coordination.k8s.io/v1/namespaces/{ns}/leases[/{name}]   Leases (the placement lease)
 *   POST   collection          201 | 409 AlreadyExists | 422 Invalid | 404 namespace
 *   GET    collection          list (labelSelector: k, !k, k=v, k==v, k!=v; fieldSelector: a.b=v, a.b!=v), or a Job watch
 *   GET    …/{name}            200 | 404 NotFound
 *   PATCH  …/{name}[/status]   merge-patch+json / strategic-merge-patch+json (RFC 7386 merge);
 *          a metadata.resourceVersion in the patch must match (409 Conflict otherwise); 415 for
 *          others. A Job's pod template may change only in its scheduling directives, and only
 *          while the Job is suspended and has no status.startTime (422 otherwise, as the real one);
 *          `/status` changes only the status
 *   DELETE …/jobs/{name}?propagationPolicy=Foreground|Background|Orphan
 *          Foreground: 200 with the Job, now carrying deletionTimestamp and the foregroundDeletion
 *          finalizer, until finishDeletion(); Background/Orphan: 200 Status Success, gone at once
 *   DELETE other objects: gone at once, 200 with the object
 * Every answer can be replaced once by `failNext(method, code)` (optionally only for one resource:
 * `failNext('PATCH', 403, 'pods')`), with the body the real server sends for that code. A bearer
 * token is required when `token` is given.
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
type Obj = Json & {
  metadata: Json & {
    name: string;
    namespace?: string;
    resourceVersion: string;
    uid?: string;
    annotations?: Record<string, string>;
    labels?: Record<string, string>;
    ownerReferences?: { uid: string }[];
  };
  spec?: Json;
  status?: Json;
};
type Job = Obj & { metadata: Obj['metadata'] & { namespace: string }; spec: Json; status: Json };

const DNS1123 = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

/** A resource the server keeps. */
interface Resource {
  group: string;
  plural: string;
  kind: string;
  namespaced: boolean;
}
const RESOURCES: Record<string, Resource> = {
  jobs: { group: 'batch', plural: 'jobs', kind: 'Job', namespaced: true },
  services: { group: '', plural: 'services', kind: 'Service', namespaced: true },
  pods: { group: '', plural: 'pods', kind: 'Pod', namespaced: true },
  nodes: { group: '', plural: 'nodes', kind: 'Node', namespaced: false },
  leases: { group: 'coordination.k8s.io', plural: 'leases', kind: 'Lease', namespaced: true },
};
const qualified = (r: Resource) => (r.group ? `${r.plural}.${r.group}` : r.plural);

/** The body kube-apiserver sends with an error: a `Status` object. */
export function statusError(code: number, reason: string, message: string, details?: Json): Json {
  return { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, ...(details ? { details } : {}), code };
}

function statusFor(code: number, r: Resource, ns: string | null, verb: string, name?: string): Json {
  const details = { ...(name ? { name } : {}), ...(r.group ? { group: r.group } : {}), kind: r.plural };
  const where = ns === null ? 'at the cluster scope' : `in the namespace "${ns}"`;
  switch (code) {
    case 401:
      return statusError(401, 'Unauthorized', 'Unauthorized');
    case 403:
      return statusError(
        403,
        'Forbidden',
        `${qualified(r)}${name ? ` "${name}"` : ''} is forbidden: User "system:serviceaccount:govloop:dispatcher" cannot ${verb} resource "${r.plural}" in API group "${r.group}" ${where}`,
        details,
      );
    case 404:
      return statusError(404, 'NotFound', `${qualified(r)} "${name}" not found`, details);
    case 409:
      return statusError(
        409,
        'Conflict',
        `Operation cannot be fulfilled on ${qualified(r)} "${name}": the object has been modified; please apply your changes to the latest version and try again`,
        details,
      );
    case 429:
      return statusError(429, 'TooManyRequests', 'the server has received too many requests and has asked us to try again later', { retryAfterSeconds: 1 });
    case 500:
      return statusError(500, 'InternalError', 'Internal error occurred: etcdserver: request timed out', {
        causes: [{ message: 'etcdserver: request timed out' }],
      });
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
const now = () => new Date().toISOString().replace(/\.\d+Z$/, 'Z');

/** A label selector (`k`, `!k`, `k=v`, `k==v`, `k!=v`, comma-separated) against labels. */
export function matchesLabels(selector: string | null, labels: Record<string, string> | undefined): boolean {
  if (!selector) return true;
  const l = labels ?? {};
  return selector.split(',').every((term) => {
    const t = term.trim();
    let m: RegExpExecArray | null;
    if ((m = /^(.+?)!=(.*)$/.exec(t))) return l[m[1]!.trim()] !== m[2]!.trim();
    if ((m = /^(.+?)==?(.*)$/.exec(t))) return l[m[1]!.trim()] === m[2]!.trim();
    if (t.startsWith('!')) return !(t.slice(1) in l);
    return t in l;
  });
}

/** A field selector (`a.b=v`, `a.b!=v`, comma-separated) against an object. */
function matchesFields(selector: string | null, obj: unknown): boolean {
  if (!selector) return true;
  const get = (path: string) => path.split('.').reduce<unknown>((o, k) => (isObj(o) ? o[k] : undefined), obj) ?? '';
  return selector.split(',').every((term) => {
    const m = /^(.+?)(!=|==|=)(.*)$/.exec(term.trim());
    if (!m) return true;
    return m[2] === '!=' ? get(m[1]!) !== m[3] : get(m[1]!) === m[3];
  });
}

/** Pod template fields a suspended, never-started Job may change (Kubernetes' mutable scheduling directives). */
function schedulingOnly(before: Json, after: Json): boolean {
  const strip = (t: Json) => {
    const c = clone(t) as { metadata?: Json; spec?: Json };
    if (c.metadata) {
      delete c.metadata.labels;
      delete c.metadata.annotations;
    }
    if (c.spec) for (const k of ['affinity', 'nodeSelector', 'tolerations', 'schedulingGates']) delete c.spec[k];
    return JSON.stringify(c);
  };
  return strip(before) === strip(after);
}

export class FakeApiServer {
  readonly requests: RecordedRequest[] = [];
  readonly jobs = new Map<string, Job>();
  readonly services = new Map<string, Obj>();
  readonly pods = new Map<string, Obj>();
  /** By name (cluster-scoped). */
  readonly nodes = new Map<string, Obj>();
  /** coordination.k8s.io/v1 Leases, by namespace/name. */
  readonly leases = new Map<string, Obj>();
  private readonly namespaces: Set<string>;
  private readonly failures: { method: string; code: number; resource?: string }[] = [];
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

  /** The next request with this method (or '*'), on this resource if given (`jobs`, `services`, `pods`, `nodes`), gets this error code instead of its answer. */
  failNext(method: string, code: number, resource?: string): void {
    this.failures.push({ method: method.toUpperCase(), code, ...(resource ? { resource } : {}) });
  }

  /** Plays the Job controller: replaces a Job's status (bumps resourceVersion, notifies watchers). */
  setStatus(ns: string, name: string, status: Json): void {
    const job = this.jobs.get(`${ns}/${name}`);
    if (!job) throw new Error(`no job ${ns}/${name}`);
    job.status = clone(status);
    this.bump(job, 'MODIFIED');
  }

  /** Plays the garbage collector: removes a Job held by foreground deletion, and what it owns. */
  finishDeletion(ns: string, name: string): void {
    const job = this.jobs.get(`${ns}/${name}`);
    if (!job) return;
    this.jobs.delete(`${ns}/${name}`);
    this.notify('DELETED', job);
    for (const store of [this.services, this.pods]) {
      for (const [k, o] of store) if (o.metadata.ownerReferences?.some((r) => r.uid === job.metadata.uid)) store.delete(k);
    }
  }

  /** Plays the Job controller (or a kubelet): a pod, stored as given plus metadata the server sets. */
  addPod(pod: Json & { metadata: Json & { name: string; namespace: string } }): Obj {
    const o = this.stamp(clone(pod) as Obj, pod.metadata.namespace);
    this.pods.set(`${pod.metadata.namespace}/${pod.metadata.name}`, o);
    return o;
  }

  /** A Node (what a kubelet registers and an operator labels). */
  addNode(node: Json & { metadata: Json & { name: string } }): Obj {
    const o = this.stamp(clone(node) as Obj, null);
    this.nodes.set(node.metadata.name, o);
    return o;
  }

  /** Requests without the bodies of reads, for compact assertions: "METHOD path?query". */
  calls(): string[] {
    return this.requests.map((r) => {
      const q = new URLSearchParams(r.query).toString();
      return `${r.method} ${r.path}${q ? `?${q}` : ''}`;
    });
  }

  private stamp(o: Obj, ns: string | null): Obj {
    o.metadata = { ...o.metadata, ...(ns !== null ? { namespace: ns } : {}), uid: randomUUID(), creationTimestamp: now(), resourceVersion: String(++this.rv) };
    return o;
  }

  private bump(job: Obj, event: 'ADDED' | 'MODIFIED'): void {
    job.metadata.resourceVersion = String(++this.rv);
    if (this.jobs.get(`${job.metadata.namespace}/${job.metadata.name}`) === job) this.notify(event, job as Job);
  }

  private notify(type: string, job: Job): void {
    for (const w of this.watchers) {
      if (w.ns !== job.metadata.namespace) continue;
      if (!matchesLabels(w.selector, job.metadata.labels)) continue;
      w.res.write(`${JSON.stringify({ type, object: job })}\n`);
    }
  }

  private send(res: ServerResponse, code: number, body: unknown): void {
    res.writeHead(code, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body));
  }

  private route(path: string): { r: Resource; ns: string | null; name?: string; status: boolean } | null {
    let m = /^\/apis\/batch\/v1\/namespaces\/([^/]+)\/jobs(?:\/([^/]+)(\/status)?)?$/.exec(path);
    if (m) return { r: RESOURCES.jobs!, ns: decodeURIComponent(m[1]!), ...(m[2] ? { name: decodeURIComponent(m[2]) } : {}), status: !!m[3] };
    m = /^\/api\/v1\/namespaces\/([^/]+)\/(services|pods)(?:\/([^/]+))?$/.exec(path);
    if (m) return { r: RESOURCES[m[2]!]!, ns: decodeURIComponent(m[1]!), ...(m[3] ? { name: decodeURIComponent(m[3]) } : {}), status: false };
    m = /^\/apis\/coordination\.k8s\.io\/v1\/namespaces\/([^/]+)\/leases(?:\/([^/]+))?$/.exec(path);
    if (m) return { r: RESOURCES.leases!, ns: decodeURIComponent(m[1]!), ...(m[2] ? { name: decodeURIComponent(m[2]) } : {}), status: false };
    m = /^\/api\/v1\/(pods|nodes)(?:\/([^/]+))?$/.exec(path);
    if (m && !(m[1] === 'pods' && m[2])) return { r: RESOURCES[m[1]!]!, ns: null, ...(m[2] ? { name: decodeURIComponent(m[2]) } : {}), status: false };
    return null;
  }

  private store(r: Resource): Map<string, Obj> {
    return r.plural === 'jobs'
      ? (this.jobs as Map<string, Obj>)
      : r.plural === 'services'
        ? this.services
        : r.plural === 'pods'
          ? this.pods
          : r.plural === 'leases'
            ? this.leases
            : this.nodes;
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

    const route = this.route(url.pathname);
    if (!route) return this.send(res, 404, statusError(404, 'NotFound', 'the server could not find the requested resource'));
    const { r, ns, name } = route;
    const verb = { POST: 'create', GET: name ? 'get' : 'list', PATCH: 'patch', DELETE: 'delete' }[method] ?? method.toLowerCase();

    if (this.opts.token && req.headers.authorization !== `Bearer ${this.opts.token}`) return this.send(res, 401, statusFor(401, r, ns, verb));
    const i = this.failures.findIndex((f) => (f.method === method || f.method === '*') && (!f.resource || f.resource === r.plural));
    if (i >= 0) {
      const [f] = this.failures.splice(i, 1);
      // Like RBAC, a create is authorized on the collection: its message has no object name.
      return this.send(
        res,
        f!.code,
        statusFor(f!.code, r, ns, verb, name ?? (f!.code === 403 || !isObj(body) || !isObj(body.metadata) ? undefined : String(body.metadata.name))),
      );
    }
    if (ns !== null && !this.namespaces.has(ns))
      return this.send(res, 404, statusError(404, 'NotFound', `namespaces "${ns}" not found`, { name: ns, kind: 'namespaces' }));

    const store = this.store(r);
    if (method === 'POST' && !name) return this.create(res, r, ns, body);
    if (method === 'GET' && !name) {
      const selector = url.searchParams.get('labelSelector');
      const fields = url.searchParams.get('fieldSelector');
      if (r.plural === 'jobs' && ns !== null && (url.searchParams.get('watch') === 'true' || url.searchParams.get('watch') === '1')) {
        res.writeHead(200, { 'content-type': 'application/json', 'transfer-encoding': 'chunked' });
        const w = { ns, selector, res };
        this.watchers.add(w);
        // From a resourceVersion: only what happens next (no history is kept). Without: every Job as ADDED first.
        if (!url.searchParams.get('resourceVersion')) {
          for (const job of this.jobs.values()) {
            if (job.metadata.namespace === ns && matchesLabels(selector, job.metadata.labels)) res.write(`${JSON.stringify({ type: 'ADDED', object: job })}\n`);
          }
        }
        req.on('close', () => this.watchers.delete(w));
        return;
      }
      const items = [...store.values()].filter(
        (o) => (ns === null || o.metadata.namespace === ns) && matchesLabels(selector, o.metadata.labels) && matchesFields(fields, o),
      );
      return this.send(res, 200, {
        kind: `${r.kind}List`,
        apiVersion: r.group ? `${r.group}/v1` : 'v1',
        metadata: { resourceVersion: String(this.rv) },
        items,
      });
    }
    const key = r.namespaced ? `${ns}/${name}` : String(name);
    const obj = name ? store.get(key) : undefined;
    if (!obj || !name) return this.send(res, 404, statusFor(404, r, ns, verb, name));
    if (method === 'GET') return this.send(res, 200, obj);
    if (method === 'PATCH') return this.patch(res, r, req.headers['content-type'] ?? '', obj, body, route.status);
    if (method === 'DELETE') {
      if (r.plural !== 'jobs') {
        store.delete(key);
        return this.send(res, 200, obj);
      }
      const job = obj as Job;
      const policy = url.searchParams.get('propagationPolicy') ?? (isObj(body) ? (body.propagationPolicy as string | undefined) : undefined) ?? 'Orphan';
      if (policy === 'Foreground') {
        if (!job.metadata.deletionTimestamp) {
          job.metadata.deletionTimestamp = now();
          job.metadata.deletionGracePeriodSeconds = 0;
          job.metadata.finalizers = ['foregroundDeletion'];
          this.bump(job, 'MODIFIED');
        }
        return this.send(res, 200, job);
      }
      this.jobs.delete(key);
      this.notify('DELETED', job);
      return this.send(res, 200, {
        kind: 'Status',
        apiVersion: 'v1',
        metadata: {},
        status: 'Success',
        details: { name, group: 'batch', kind: 'jobs', uid: job.metadata.uid },
      });
    }
    return this.send(res, 405, statusError(405, 'MethodNotAllowed', `the server does not allow this method on the requested resource`));
  }

  private create(res: ServerResponse, r: Resource, ns: string | null, body: unknown): void {
    if (!isObj(body) || !isObj(body.metadata) || (r.plural !== 'nodes' && !isObj(body.spec)))
      return this.send(res, 400, statusError(400, 'BadRequest', 'the body of the request was in an unknown format'));
    const name = String(body.metadata.name ?? '');
    const causes: Json[] = [];
    if (!DNS1123.test(name) || name.length > 63)
      causes.push({
        reason: 'FieldValueInvalid',
        message: `Invalid value: "${name}": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'`,
        field: 'metadata.name',
      });
    if (ns !== null && body.metadata.namespace !== undefined && body.metadata.namespace !== ns) {
      return this.send(res, 400, statusError(400, 'BadRequest', 'the namespace of the provided object does not match the namespace sent on the request'));
    }
    if (causes.length) {
      return this.send(
        res,
        422,
        statusError(
          422,
          'Invalid',
          `${r.kind}${r.group ? `.${r.group}` : ''} "${name}" is invalid: ${causes.map((c) => `${String(c.field)}: ${String(c.message)}`).join(', ')}`,
          { name, ...(r.group ? { group: r.group } : {}), kind: r.kind, causes },
        ),
      );
    }
    const store = this.store(r);
    const key = r.namespaced ? `${ns}/${name}` : name;
    if (store.has(key))
      return this.send(
        res,
        409,
        statusError(409, 'AlreadyExists', `${qualified(r)} "${name}" already exists`, { name, ...(r.group ? { group: r.group } : {}), kind: r.plural }),
      );
    const obj = clone(body) as Obj;
    obj.metadata = {
      ...obj.metadata,
      ...(ns !== null ? { namespace: ns } : {}),
      uid: randomUUID(),
      generation: 1,
      creationTimestamp: now(),
      resourceVersion: '',
    };
    if (r.plural === 'jobs') obj.status = {};
    store.set(key, obj);
    if (r.plural === 'jobs') this.bump(obj, 'ADDED');
    else obj.metadata.resourceVersion = String(++this.rv);
    this.send(res, 201, obj);
  }

  private patch(res: ServerResponse, r: Resource, contentType: string, obj: Obj, body: unknown, status: boolean): void {
    const type = contentType.split(';')[0]!.trim();
    if (type !== 'application/merge-patch+json' && type !== 'application/strategic-merge-patch+json') {
      return this.send(
        res,
        415,
        statusError(
          415,
          'UnsupportedMediaType',
          `the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml`,
        ),
      );
    }
    if (!isObj(body)) return this.send(res, 400, statusError(400, 'BadRequest', 'the body of the request was in an unknown format'));
    const ns = obj.metadata.namespace ?? null;
    const name = obj.metadata.name;
    const rv = isObj(body.metadata) ? body.metadata.resourceVersion : undefined;
    if (rv !== undefined && rv !== obj.metadata.resourceVersion) return this.send(res, 409, statusFor(409, r, ns, 'patch', name));
    const merged = mergePatch(obj, body) as Obj;
    // The main resource does not change status; the status subresource changes only status.
    const next: Obj = status
      ? { ...obj, status: (merged.status as Json | undefined) ?? {} }
      : { ...merged, ...(obj.status !== undefined ? { status: obj.status } : {}) };
    next.metadata = status ? obj.metadata : { ...next.metadata, name, ...(ns !== null ? { namespace: ns } : {}), uid: obj.metadata.uid! };
    if (r.plural === 'jobs' && !status) {
      const before = (obj.spec?.template ?? {}) as Json;
      const after = (next.spec?.template ?? {}) as Json;
      if (JSON.stringify(before) !== JSON.stringify(after)) {
        const mutable = obj.spec?.suspend === true && !(obj.status as Json | undefined)?.startTime && schedulingOnly(before, after);
        if (!mutable) {
          return this.send(
            res,
            422,
            statusError(422, 'Invalid', `Job.batch "${name}" is invalid: spec.template: Invalid value: {...}: field is immutable`, {
              name,
              group: 'batch',
              kind: 'Job',
              causes: [{ reason: 'FieldValueInvalid', message: 'Invalid value: {...}: field is immutable', field: 'spec.template' }],
            }),
          );
        }
      }
      if (JSON.stringify(next.spec) !== JSON.stringify(obj.spec)) next.metadata.generation = Number(obj.metadata.generation ?? 1) + 1;
    }
    const store = this.store(r);
    store.set(r.namespaced ? `${ns}/${name}` : name, next);
    if (r.plural === 'jobs') this.bump(next, 'MODIFIED');
    else next.metadata.resourceVersion = String(++this.rv);
    this.send(res, 200, next);
  }
}
