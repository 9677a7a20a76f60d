import { describe, expect, it } from 'vitest';
import {
  MIG_80GB,
  type TopologyInput,
  TopologyError,
  buildTopologyIndex,
  childLevel,
  defaultTopology,
  domainOfNode,
  parseTopology,
  parseTopologyYaml,
} from '../../governance/topology';

type NodeInput = TopologyInput['blocks'][number]['racks'][number]['nodes'][number];

/** A valid two-rack topology to break one field at a time. */
function aDoc(): TopologyInput {
  const node = (name: string, extra: Partial<NodeInput> = {}): NodeInput => ({
    name,
    gpuType: 'H100',
    gpus: 4,
    cpuMilli: 64_000,
    memoryMib: 262_144,
    ...extra,
  });
  return {
    cluster: 'test',
    gpuTypes: { H100: { memoryGb: 80, mig: { computeSlices: 7, memorySlices: 8, profiles: MIG_80GB } }, T4: { memoryGb: 16 } },
    blocks: [
      {
        name: 'b0',
        racks: [
          { name: 'r0', nodes: [node('n0', { nvlinkDomain: 'nv0' }), node('n1', { nvlinkDomain: 'nv0' })] },
          { name: 'r1', nodes: [node('n2'), node('n3', { gpuType: 'T4', gpus: 2 })] },
        ],
      },
    ],
  };
}

interface ValidationCase {
  name: string;
  edit: (doc: TopologyInput) => void;
  wantPath: string;
  wantMessage: RegExp;
}

const validationCases: ValidationCase[] = [
  {
    name: 'duplicate node name',
    edit: (d) => (d.blocks[0]!.racks[1]!.nodes[0]!.name = 'n0'),
    wantPath: 'blocks.0.racks.1.nodes.0.name',
    wantMessage: /duplicate node "n0"/,
  },
  { name: 'duplicate rack name', edit: (d) => (d.blocks[0]!.racks[1]!.name = 'r0'), wantPath: 'blocks.0.racks.1.name', wantMessage: /duplicate rack "r0"/ },
  {
    name: 'duplicate block name',
    edit: (d) => d.blocks.push({ name: 'b0', racks: [{ name: 'r9', nodes: [{ name: 'n9', gpuType: 'H100', gpus: 1, cpuMilli: 1, memoryMib: 1 }] }] }),
    wantPath: 'blocks.1.name',
    wantMessage: /duplicate block "b0"/,
  },
  {
    name: 'unknown GPU type',
    edit: (d) => (d.blocks[0]!.racks[0]!.nodes[1]!.gpuType = 'B200'),
    wantPath: 'blocks.0.racks.0.nodes.1.gpuType',
    wantMessage: /unknown GPU type "B200"/,
  },
  {
    name: 'MIG on a type without MIG profiles',
    edit: (d) => (d.blocks[0]!.racks[1]!.nodes[1]!.sharing = { mig: true }),
    wantPath: 'blocks.0.racks.1.nodes.1.sharing.mig',
    wantMessage: /has no MIG profiles/,
  },
  {
    name: 'an NVLink domain spanning two racks',
    edit: (d) => (d.blocks[0]!.racks[1]!.nodes[0]!.nvlinkDomain = 'nv0'),
    wantPath: 'blocks.0.racks.1.nodes.0.nvlinkDomain',
    wantMessage: /NVLink domain "nv0" spans racks/,
  },
  {
    name: 'an NVLink domain mixing GPU types',
    edit: (d) => (d.blocks[0]!.racks[0]!.nodes[1]!.gpuType = 'T4'),
    wantPath: 'blocks.0.racks.0.nodes.1.nvlinkDomain',
    wantMessage: /spans racks or GPU types/,
  },
  { name: 'negative GPU count', edit: (d) => (d.blocks[0]!.racks[0]!.nodes[0]!.gpus = -1), wantPath: 'blocks.0.racks.0.nodes.0.gpus', wantMessage: /./ },
  {
    name: 'a node name with a space',
    edit: (d) => (d.blocks[0]!.racks[0]!.nodes[0]!.name = 'n 0'),
    wantPath: 'blocks.0.racks.0.nodes.0.name',
    wantMessage: /letters, digits/,
  },
  { name: 'an unknown field', edit: (d) => Object.assign(d.blocks[0]!.racks[0]!, { switch: 'tor-1' }), wantPath: 'blocks.0.racks.0', wantMessage: /switch/ },
  { name: 'an empty rack', edit: (d) => (d.blocks[0]!.racks[0]!.nodes = []), wantPath: 'blocks.0.racks.0.nodes', wantMessage: /./ },
  {
    name: 'a MIG profile larger than its GPU',
    edit: (d) => (d.gpuTypes.H100!.mig = { computeSlices: 4, memorySlices: 4, profiles: [{ name: '7g.80gb', computeSlices: 7, memorySlices: 8 }] }),
    wantPath: 'gpuTypes.H100.mig.profiles.0',
    wantMessage: /more slices than the GPU has/,
  },
  {
    name: 'a MIG profile listed twice',
    edit: (d) => (d.gpuTypes.H100!.mig = { profiles: [MIG_80GB[0]!, MIG_80GB[0]!] }),
    wantPath: 'gpuTypes.H100.mig.profiles.1.name',
    wantMessage: /duplicate MIG profile/,
  },
  {
    name: 'a bad MIG profile name',
    edit: (d) => (d.gpuTypes.H100!.mig = { profiles: [{ name: 'half', computeSlices: 3, memorySlices: 4 }] }),
    wantPath: 'gpuTypes.H100.mig.profiles.0.name',
    wantMessage: /MIG profile name/,
  },
];

describe('parseTopology', () => {
  it('accepts the valid document', () => {
    expect(parseTopology(aDoc()).blocks[0]!.racks).toHaveLength(2);
  });

  it.each(validationCases)('rejects $name, naming the path', ({ edit, wantPath, wantMessage }) => {
    const doc = aDoc();
    edit(doc);
    let caught: unknown;
    try {
      parseTopology(doc, 'config/topology.yaml');
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(TopologyError);
    const err = caught as TopologyError;
    expect(err.source).toBe('config/topology.yaml');
    expect(err.message).toContain('config/topology.yaml');
    const hit = err.errors.find((e) => e.path === wantPath);
    expect(hit, `errors: ${JSON.stringify(err.errors)}`).toBeDefined();
    expect(hit!.message).toMatch(wantMessage);
  });

  it('reports a YAML syntax error as the document', () => {
    expect(() => parseTopologyYaml('cluster: [unclosed', 'bad.yaml')).toThrow(/bad\.yaml[\s\S]*\(document\)/);
  });

  it('parses YAML', () => {
    const t = parseTopologyYaml(
      [
        'cluster: y',
        'gpuTypes: { L4: {} }',
        'blocks:',
        '  - name: b',
        '    racks:',
        '      - name: r',
        '        nodes:',
        '          - { name: a, gpuType: L4, gpus: 2, cpuMilli: 1000, memoryMib: 1024 }',
      ].join('\n'),
    );
    expect(t.blocks[0]!.racks[0]!.nodes[0]).toMatchObject({ name: 'a', gpus: 2, sharing: { mig: false, mps: false, timeslice: false } });
  });
});

describe('buildTopologyIndex', () => {
  it('indexes the example: GPU offsets, domains per level, NVLink domains of several nodes', () => {
    const index = buildTopologyIndex(parseTopology(aDoc()));
    expect(index.totalGpus).toBe(4 + 4 + 4 + 2);
    expect(index.nodes.map((n) => [n.name, n.gpuOffset, n.gpus])).toEqual([
      ['n0', 0, 4],
      ['n1', 4, 4],
      ['n2', 8, 4],
      ['n3', 12, 2],
    ]);
    expect(index.domains.nvlink.map((d) => [d.id, d.nodes])).toEqual([
      ['nv0', [0, 1]],
      ['n2', [2]],
      ['n3', [3]],
    ]);
    expect(index.domains.rack.map((d) => [d.id, d.nodes, d.children])).toEqual([
      ['r0', [0, 1], [0]],
      ['r1', [2, 3], [1, 2]],
    ]);
    expect(index.domains.block[0]).toMatchObject({ id: 'b0', nodes: [0, 1, 2, 3], children: [0, 1] });
    expect(index.domains.cluster[0]).toMatchObject({ id: 'test', nodes: [0, 1, 2, 3], children: [0] });
    expect(index.nvlinkIsNode).toBe(false);
    expect(domainOfNode(index, 'nvlink', 1).id).toBe('nv0');
    expect(domainOfNode(index, 'rack', 3).id).toBe('r1');
    expect(domainOfNode(index, 'cluster', 2).id).toBe('test');
    expect(index.gpuTypes[index.nodes[3]!.type]!.name).toBe('T4');
    expect(index.gpuTypes[index.gpuTypeIndex.get('H100')!]!.migProfiles.get('3g.40gb')).toEqual({ name: '3g.40gb', computeSlices: 3, memorySlices: 4 });
  });

  it('every node lies in exactly one domain per level, and children partition their parent', () => {
    const index = buildTopologyIndex(defaultTopology());
    for (const level of ['nvlink', 'rack', 'block', 'cluster'] as const) {
      const seen = index.domains[level].flatMap((d) => d.nodes).sort((a, b) => a - b);
      expect(seen).toEqual(index.nodes.map((n) => n.index));
      const below = childLevel(level)!;
      for (const d of index.domains[level]) {
        expect(d.children.flatMap((c) => index.domains[below][c]!.nodes).sort((a, b) => a - b)).toEqual([...d.nodes].sort((a, b) => a - b));
      }
    }
  });

  it('builds the default cluster: 320 GPUs in 2 blocks, 6 racks, single-node NVLink domains', () => {
    const index = buildTopologyIndex(defaultTopology());
    expect(index.totalGpus).toBe(320);
    expect(index.nodes).toHaveLength(40);
    expect(index.domains.rack).toHaveLength(6);
    expect(index.domains.block).toHaveLength(2);
    expect(index.nvlinkIsNode).toBe(true);
    expect(index.nodes.filter((n) => n.mig).length).toBe(6 + 8);
    expect(index.nodes.filter((n) => n.mps && n.timeslice).length).toBe(8);
  });
});

describe('childLevel', () => {
  it.each([
    ['cluster', 'block'],
    ['block', 'rack'],
    ['rack', 'nvlink'],
    ['nvlink', 'node'],
    ['node', undefined],
  ] as const)('%s → %s', (level, want) => {
    expect(childLevel(level)).toBe(want);
  });
});
