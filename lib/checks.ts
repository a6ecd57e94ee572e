/**
 * The argument checks every public call shares: the one "unknown option"
 * check, and the checks of an object, a boolean, a name, a positive integer
 * and a signal. Each throws a `TypeError` (a `RangeError` for a number out of
 * range) that begins with the call, names the argument and shows its value.
 * It imports nothing from lib/, so every layer may use it.
 *
 * @module
 */

/** Describes a value for an error message: its type, and itself if short. */
export function describe(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value);
  if (typeof value === "function") return `function ${value.name}`;
  if (value === null || typeof value !== "object") return String(value);
  if (Array.isArray(value)) return "an array";
  return `an object (${Object.prototype.toString.call(value).slice(8, -1)})`;
}

/**
 * `value` as a record of its fields; throws a `TypeError` unless it is an
 * object (not null).
 *
 * @param where The call, as its errors begin (`"Pipeline"`, `"feed"`).
 * @param name The argument, as its errors name it (`"options"`).
 */
export function checkObject(
  where: string,
  name: string,
  value: unknown,
): Record<string, unknown> {
  if (typeof value !== "object" || value === null) {
    throw new TypeError(
      `${where}: '${name}' must be an object, got ${describe(value)}`,
    );
  }
  return value as Record<string, unknown>;
}

/**
 * The "unknown option" check: throws a `TypeError` naming the first field of
 * `options` that is not one of `names`, and listing `names`.
 *
 * @param where The call, as its errors begin.
 * @param options The options object (already checked to be one).
 * @param names The options the call takes.
 * @param kind What they are options of, if the message says it (`"stage"`
 * gives "is not a stage option"; `""` gives "is not an option").
 * @param path The options' own name in messages (`"options.progress"`).
 */
export function checkOptionNames(
  where: string,
  options: object,
  names: readonly string[],
  kind: string = "",
  path: string = "options",
): void {
  for (const key of Object.keys(options)) {
    if (!names.includes(key)) {
      throw new TypeError(
        `${where}: '${path}.${key}' is not ${
          kind === "" ? "an" : `a ${kind}`
        } option; the options are ${names.join(", ")}`,
      );
    }
  }
}

/** Throws a `TypeError` unless `value` is undefined or a boolean. */
export function checkBoolean(where: string, name: string, value: unknown) {
  if (value !== undefined && typeof value !== "boolean") {
    throw new TypeError(
      `${where}: '${name}' must be a boolean, got ${describe(value)}`,
    );
  }
}

/** Throws a `TypeError` unless `value` is undefined or a non-empty string. */
export function checkName(where: string, name: string, value: unknown) {
  if (value !== undefined && (typeof value !== "string" || value === "")) {
    throw new TypeError(
      `${where}: '${name}' must be a non-empty string, got ${describe(value)}`,
    );
  }
}

/** Throws a `RangeError` unless `value` is undefined or a positive integer. */
export function checkPositiveInteger(
  where: string,
  name: string,
  value: unknown,
) {
  if (
    value !== undefined &&
    !(typeof value === "number" && Number.isInteger(value) && value >= 1)
  ) {
    throw new RangeError(
      `${where}: '${name}' must be a positive integer, got ${describe(value)}`,
    );
  }
}

/** Throws a `TypeError` unless `value` is undefined or an `AbortSignal`. */
export function checkSignal(where: string, name: string, value: unknown) {
  if (value !== undefined && !(value instanceof AbortSignal)) {
    throw new TypeError(
      `${where}: '${name}' must be an AbortSignal, got ${describe(value)}`,
    );
  }
}
