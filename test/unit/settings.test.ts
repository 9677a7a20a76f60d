import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../config/errors';
import { settings } from '../../config/settings';

describe('settings: the one reader of the environment', () => {
  it('types what it reads: numbers, lists, lower-cased levels; an empty variable counts as unset', () => {
    const s = settings({
      GOVLOOP_SIM_SPEEDUP: '600',
      GOVLOOP_PLATFORM_ADMINS: ' pat, ,oli ',
      GOVLOOP_LOG_LEVEL: 'WARN',
      GOVLOOP_TOKEN: '',
      GOVLOOP_API_KEY: 'k1',
    });
    expect(s.GOVLOOP_SIM_SPEEDUP).toBe(600);
    expect(s.GOVLOOP_PLATFORM_ADMINS).toEqual(['pat', 'oli']);
    expect(s.GOVLOOP_LOG_LEVEL).toBe('warn');
    expect(s.GOVLOOP_TOKEN).toBeUndefined();
    expect(s.GOVLOOP_API_KEY).toBe('k1');
    expect(settings({}).GOVLOOP_TASK_QUEUE).toBeUndefined();
  });

  it('refuses every bad variable at once, by name, with the value it got', () => {
    let err: unknown;
    try {
      settings({ GOVLOOP_SIM_SPEEDUP: '-2', GOVLOOP_NOTIFY_URL: 'not a url', GOVLOOP_CLUSTER_BACKEND: 'k8s', GOVLOOP_K8S_STOP_MARGIN_SECONDS: 'soon' });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    const errors = (err as ConfigError).errors;
    expect(errors.map((e) => e.path).sort()).toEqual([
      'GOVLOOP_CLUSTER_BACKEND',
      'GOVLOOP_K8S_STOP_MARGIN_SECONDS',
      'GOVLOOP_NOTIFY_URL',
      'GOVLOOP_SIM_SPEEDUP',
    ]);
    expect(errors.find((e) => e.path === 'GOVLOOP_SIM_SPEEDUP')?.message).toMatch(/positive number \(got "-2"\)/);
  });

  it('the CLI exits 2 naming the bad variable before it opens anything', () => {
    const r = spawnSync(process.execPath, ['bin/govloop.js', 'budget', 'show', '--tenant', 'acme', '--json'], {
      encoding: 'utf8',
      env: { ...process.env, GOVLOOP_SIM_SPEEDUP: 'abc', DATABASE_URL: 'postgresql://nobody@127.0.0.1:1/none' },
    });
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/invalid config environment:\n\s+GOVLOOP_SIM_SPEEDUP: must be a number \(got "abc"\)/);
  });
});
