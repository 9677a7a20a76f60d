import { DefaultLogger, type LogLevel, Runtime } from '@temporalio/worker';
import pino from 'pino';
import { settings } from '../config/settings';

let installed = false;

/**
 * One log sink for the process: pino JSON lines (to stdout, or to `file`), with Temporal's
 * worker, workflow and activity logs routed into it (Runtime.install).
 */
export function installLogging(opts: { file?: string; level?: string } = {}): pino.Logger {
  const level = (opts.level ?? settings().GOVLOOP_LOG_LEVEL ?? 'info').toLowerCase();
  const logger = pino({ level, base: { svc: 'govloop' } }, opts.file ? pino.destination({ dest: opts.file, mkdir: true, sync: false }) : undefined);
  if (!installed) {
    installed = true;
    const temporalLevel = level.toUpperCase() as LogLevel;
    Runtime.install({
      logger: new DefaultLogger(['TRACE', 'DEBUG', 'INFO', 'WARN', 'ERROR'].includes(temporalLevel) ? temporalLevel : 'INFO', (entry) => {
        const fn = entry.level === 'ERROR' ? 'error' : entry.level === 'WARN' ? 'warn' : entry.level === 'DEBUG' || entry.level === 'TRACE' ? 'debug' : 'info';
        logger[fn]({ ...entry.meta }, entry.message);
      }),
      // The SDK's Rust core (its own warnings: a slow workflow task, a lost connection) prints to
      // stdout unless forwarded; forwarded, it lands in the same JSON lines (and `govloop dev`'s
      // worker.log) as everything else. Warnings and errors only.
      telemetryOptions: { logging: { filter: { core: 'WARN', other: 'WARN' }, forward: {} } },
    });
  }
  return logger;
}
