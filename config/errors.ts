/** A config file, or the environment, failed validation: every problem with its field path. */
export class ConfigError extends Error {
  constructor(
    readonly file: string,
    readonly errors: { path: string; message: string }[],
  ) {
    super(`invalid config ${file}:\n${errors.map((e) => `  ${e.path}: ${e.message}`).join('\n')}`);
    this.name = 'ConfigError';
  }
}
