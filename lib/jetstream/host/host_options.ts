/**
 * A worker host's options: `WorkerHostOptions`, their check, and the
 * settings a host runs with.
 *
 * @module
 */

import { checkOptionNames } from "../../checks.ts";
import {
  checkConnectionOptions,
  CONNECTION_OPTION_NAMES,
  type ConnectionOptions,
} from "../connection.ts";

/**
 * The options of `WorkerHost.start`: the connection, and what the host runs.
 *
 * @example A host that imports module targets from one place only
 * ```ts ignore
 * import { WorkerHost, type WorkerHostOptions } from "@mpipe/mpipe/jetstream";
 *
 * const options: WorkerHostOptions = {
 *   servers: "127.0.0.1:4222",
 *   workers: 2,
 *   allowTargets: ["https://code.example.com/tasks/"],
 *   hostName: "scorer-1",
 * };
 * await using host = await WorkerHost.start(options);
 * ```
 */
export interface WorkerHostOptions extends ConnectionOptions {
  /**
   * The most Web Workers the host runs, shared by every stage it serves.
   * @default {navigator.hardwareConcurrency}
   */
  workers?: number;
  /**
   * The public keys of the coordinators the host trusts (as
   * `JetStreamCluster.generateKeys()` or `host.ts --new-keys` makes them):
   * the host then takes only stage announcements signed with one of their
   * signing keys, and ignores (and reports) every other. Without it, the
   * host takes unsigned announcements, and runs only module targets under
   * `allowTargets`.
   * @default {[]: no coordinator is trusted}
   */
  trust?: string[];
  /**
   * Run function and class targets, which travel as source text and run
   * with the host's permissions, from trusted coordinators (it needs
   * `trust`). Without it the host refuses them.
   * @default {false}
   */
  allowSource?: boolean;
  /**
   * URL prefixes of the module targets the host may import
   * (`https://example.com/tasks/`, `file:///srv/shared/`); others are
   * refused. A target is under a prefix when its URL, normalized (`..` and
   * `.` resolved), has the prefix's scheme, host and port, and its path
   * starts with the prefix's path on a segment boundary.
   * @default {[]: no module target}
   */
  allowTargets?: string[];
  /**
   * The host's name in errors.
   * @default {"<hostname>:<pid>"}
   */
  hostName?: string;
}

/** What a host runs, with the defaults filled in. */
export type HostSettings =
  & Required<
    Pick<WorkerHostOptions, "workers" | "allowSource" | "allowTargets">
  >
  & {
    /** The trusted coordinators' public keys. */
    trust: CryptoKey[];
  };

/** Checks `WorkerHost.start`'s options, throwing a TypeError or RangeError that names a bad one. */
export function checkHostOptions(options: unknown): WorkerHostOptions {
  const checked = checkConnectionOptions(
    "WorkerHost.start",
    options,
  ) as WorkerHostOptions;
  const known = [
    ...CONNECTION_OPTION_NAMES,
    "workers",
    "trust",
    "allowSource",
    "allowTargets",
    "hostName",
  ];
  checkOptionNames("WorkerHost.start", checked, known);
  const workers = checked.workers;
  if (
    workers !== undefined &&
    !(typeof workers === "number" && Number.isInteger(workers) && workers >= 1)
  ) {
    throw new RangeError(
      `WorkerHost.start: 'options.workers' must be a positive integer, got ${
        JSON.stringify(workers)
      }`,
    );
  }
  if (
    checked.allowSource !== undefined &&
    typeof checked.allowSource !== "boolean"
  ) {
    throw new TypeError(
      "WorkerHost.start: 'options.allowSource' must be a boolean",
    );
  }
  const trust = checked.trust;
  if (
    trust !== undefined &&
    !(Array.isArray(trust) && trust.every((t) => typeof t === "string"))
  ) {
    throw new TypeError(
      "WorkerHost.start: 'options.trust' must be an array of public keys (from JetStreamCluster.generateKeys())",
    );
  }
  if (checked.allowSource === true && (trust ?? []).length === 0) {
    throw new TypeError(
      "WorkerHost.start: 'options.allowSource' needs 'options.trust' (--trust PUBLIC_KEY): a host runs function and class targets only from coordinators whose signing key it trusts. Make a key pair with `deno run jsr:@mpipe/mpipe/host --new-keys`",
    );
  }
  const targets = checked.allowTargets;
  if (
    targets !== undefined &&
    !(Array.isArray(targets) &&
      targets.every((t) => typeof t === "string" && URL.canParse(t)))
  ) {
    throw new TypeError(
      `WorkerHost.start: 'options.allowTargets' must be an array of URL prefixes (https://example.com/tasks/), got ${
        JSON.stringify(targets)
      }`,
    );
  }
  if (
    checked.hostName !== undefined &&
    (typeof checked.hostName !== "string" || checked.hostName === "")
  ) {
    throw new TypeError(
      "WorkerHost.start: 'options.hostName' must be a non-empty string",
    );
  }
  return checked;
}

/** `<hostname>:<pid>`, or `host:<pid>` without `--allow-sys=hostname`. */
export function defaultHostName(): string {
  let name = "host";
  try {
    // Only if granted: never a permission prompt.
    const { state } = Deno.permissions.querySync({
      name: "sys",
      kind: "hostname",
    });
    if (state === "granted") name = Deno.hostname();
  } catch { /* No --allow-sys=hostname. */ }
  return `${name}:${Deno.pid}`;
}
