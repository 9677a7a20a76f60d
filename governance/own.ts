/**
 * A config record's entry for a name the caller sent, or undefined. Records parsed from YAML are
 * plain objects, so `record[name]` also finds what every object inherits: a model called
 * `valueOf` or a priority called `toString` would read a function as its price or rank. Every
 * lookup keyed by a name from an intent, a step or a ledger row goes through here.
 */
export function own<T>(record: Readonly<Record<string, T>>, key: string): T | undefined {
  return Object.hasOwn(record, key) ? record[key] : undefined;
}
