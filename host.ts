/**
 * A worker host of a JetStream cluster, from the command line: it serves
 * the remote stages of every pipeline on the cluster (see
 * `@mpipe/mpipe/jetstream`), with up to `--workers` Web Workers.
 *
 * ```sh
 * deno run jsr:@mpipe/mpipe/host --new-keys   # once: a key pair for your coordinators and hosts
 * deno run --allow-net=127.0.0.1:4222 --allow-env=MPIPE_TRUST,MPIPE_NATS_PASS,MPIPE_NATS_TOKEN --allow-sys=hostname \
 *   jsr:@mpipe/mpipe/host --servers 127.0.0.1:4222 --workers 8 --trust PUBLIC_KEY --allow-source
 * ```
 *
 * | flag | meaning |
 * | --- | --- |
 * | `--new-keys` | print a new key pair (a coordinator's `signingKey`, and the public key for `--trust`), and exit |
 * | `--servers LIST` | the NATS servers, comma-separated (`host:port` or URLs); default `127.0.0.1:4222` |
 * | `--workers N` | the most Web Workers, shared by the stages it serves; default: the cores |
 * | `--trust PUBLIC_KEY` | take only stage announcements signed by this coordinator key; repeatable (or `MPIPE_TRUST`, comma-separated) |
 * | `--allow-source` | run function and class targets (they arrive as source text) from trusted coordinators; needs `--trust` |
 * | `--allow-target PREFIX` | import module targets under this URL prefix (normalized, on path-segment boundaries); repeatable |
 * | `--name NAME` | the host's name in errors; default `<hostname>:<pid>` |
 * | `--user NAME`, `--pass PASSWORD` | a user account (or `MPIPE_NATS_PASS` for the password) |
 * | `--token TOKEN` | a token (or `MPIPE_NATS_TOKEN`) |
 * | `--creds FILE` | a `.creds` file (user JWT and NKey seed) |
 * | `--tls` | require TLS; `--tls-ca FILE`, `--tls-cert FILE`, `--tls-key FILE` for a private CA or a client certificate |
 * | `-h`, `--help` | print the usage and the flags, and exit |
 *
 * It prints `mpipe host <name> ready` once it serves, and on SIGINT or
 * SIGTERM finishes the batches it holds and exits.
 *
 * @example Start a host from a program, as the command line does (needs a server)
 * ```ts ignore
 * import { main } from "@mpipe/mpipe/host";
 *
 * const host = await main([
 *   "--servers", "127.0.0.1:4222",
 *   "--workers", "2",
 *   "--trust", Deno.env.get("MPIPE_TRUST")!,
 *   "--allow-source",
 * ]);
 * await host.close();
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { WorkerHost } from "./lib/jetstream/host/worker_host.ts";
import type { WorkerHostOptions } from "./lib/jetstream/host/host_options.ts";
import { generateKeys } from "./lib/jetstream/keys.ts";

const USAGE =
  "usage: deno run --allow-net=SERVER host.ts [--servers LIST] [--workers N] [--trust PUBLIC_KEY]... [--allow-source] [--allow-target PREFIX]... [--name NAME] [--user NAME --pass PASSWORD | --token TOKEN | --creds FILE] [--tls [--tls-ca FILE] [--tls-cert FILE --tls-key FILE]]\n       deno run host.ts --new-keys";

/** What `--help` prints: the usage and each flag (as in the module's doc). */
const HELP = `${USAGE}

Serves the remote stages of every pipeline on a JetStream cluster.

  --servers LIST         the NATS servers, comma-separated (host:port or URLs); default 127.0.0.1:4222
  --workers N            the most Web Workers, shared by the stages it serves; default: the cores
  --trust PUBLIC_KEY     run what coordinators signed with this key's pair; repeatable
                         (or MPIPE_TRUST); --new-keys makes a pair
  --allow-source         run function and class targets (they arrive as source text);
                         needs --trust
  --allow-target PREFIX  import module targets under this URL prefix; repeatable
  --name NAME            the host's name in errors; default <hostname>:<pid>
  --user NAME, --pass PASSWORD
                         a user account (or MPIPE_NATS_PASS for the password)
  --token TOKEN          a token (or MPIPE_NATS_TOKEN)
  --creds FILE           a .creds file (user JWT and NKey seed)
  --tls                  require TLS; --tls-ca FILE, --tls-cert FILE, --tls-key FILE
                         for a private CA or a client certificate
  -h, --help             print this and exit

It prints "mpipe host <name> ready" once it serves, and on SIGINT or SIGTERM
finishes the batches it holds and exits.`;

/**
 * Parses the command line's flags (see the module's doc) and starts a host.
 *
 * @param args The flags, as in `Deno.args`.
 * @returns The running host.
 * @throws {TypeError} If a flag is unknown or lacks its value.
 * @throws {RangeError} If `--workers` is not a positive integer.
 *
 * @example Parse flags and start (needs a server)
 * ```ts ignore
 * import { main } from "@mpipe/mpipe/host";
 * import assert from "node:assert/strict";
 *
 * const host = await main(["--servers", "127.0.0.1:4222", "--name", "h1"]);
 * assert.equal(host.name, "h1");
 * await host.close();
 * ```
 */
export async function main(args: string[]): Promise<WorkerHost> {
  return await WorkerHost.start(hostOptions(args));
}

/** The options of `WorkerHost.start` that the flags `args` give. */
function hostOptions(args: string[]): WorkerHostOptions {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: {
        servers: { type: "string", multiple: true },
        workers: { type: "string" },
        trust: { type: "string", multiple: true },
        "allow-source": { type: "boolean" },
        "allow-target": { type: "string", multiple: true },
        name: { type: "string" },
        user: { type: "string" },
        pass: { type: "string" },
        token: { type: "string" },
        creds: { type: "string" },
        tls: { type: "boolean" },
        "tls-ca": { type: "string" },
        "tls-cert": { type: "string" },
        "tls-key": { type: "string" },
      },
      strict: true,
      allowPositionals: false,
    }).values;
  } catch (error) {
    throw new TypeError(
      `${error instanceof Error ? error.message : error}\n${USAGE}`,
    );
  }
  // Read only if granted: never a permission prompt.
  const env = (name: string) => {
    try {
      const { state } = Deno.permissions.querySync({
        name: "env",
        variable: name,
      });
      return state === "granted" ? Deno.env.get(name) : undefined;
    } catch {
      return undefined;
    }
  };
  const options: WorkerHostOptions = {
    servers: (parsed.servers ?? ["127.0.0.1:4222"]).flatMap((list) =>
      list.split(",").map((s) => s.trim()).filter((s) => s !== "")
    ),
  };
  if (parsed.workers !== undefined) {
    const workers = Number(parsed.workers);
    if (!Number.isInteger(workers) || workers < 1) {
      throw new RangeError(
        `--workers must be a positive integer, got ${parsed.workers}`,
      );
    }
    options.workers = workers;
  }
  const trust = parsed.trust ??
    env("MPIPE_TRUST")?.split(",").map((key) => key.trim()).filter((key) =>
      key !== ""
    );
  if (trust !== undefined) options.trust = trust;
  if (parsed["allow-source"]) options.allowSource = true;
  if (parsed["allow-target"]) options.allowTargets = parsed["allow-target"];
  if (parsed.name !== undefined) options.hostName = parsed.name;
  if (parsed.user !== undefined) options.user = parsed.user;
  const pass = parsed.pass ?? env("MPIPE_NATS_PASS");
  if (pass !== undefined) options.pass = pass;
  const token = parsed.token ?? env("MPIPE_NATS_TOKEN");
  if (token !== undefined) options.token = token;
  if (parsed.creds !== undefined) options.credentials = parsed.creds;
  const ca = parsed["tls-ca"];
  const cert = parsed["tls-cert"];
  const key = parsed["tls-key"];
  if (ca !== undefined || cert !== undefined || key !== undefined) {
    options.tls = {
      ...(ca === undefined ? {} : { caFile: ca }),
      ...(cert === undefined ? {} : { certFile: cert }),
      ...(key === undefined ? {} : { keyFile: key }),
    };
  } else if (parsed.tls) options.tls = true;
  return options;
}

if (
  import.meta.main && Deno.args.some((arg) => arg === "--help" || arg === "-h")
) {
  console.log(HELP);
} else if (
  import.meta.main && Deno.args.length === 1 && Deno.args[0] === "--new-keys"
) {
  const { signingKey, publicKey } = await generateKeys();
  console.log(
    `# The coordinators' signingKey option (keep it secret):\nMPIPE_SIGNING_KEY=${signingKey}\n# The hosts' --trust (public):\nMPIPE_TRUST=${publicKey}`,
  );
} else if (import.meta.main) {
  let host: WorkerHost;
  try {
    host = await main(Deno.args);
  } catch (error) {
    console.error(
      `mpipe host: ${error instanceof Error ? error.message : error}`,
    );
    Deno.exit(2);
  }
  let stopping = false;
  const stop = () => {
    if (stopping) Deno.exit(1);
    stopping = true;
    host.close().then(() => Deno.exit(0), () => Deno.exit(1));
  };
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
  console.log(`mpipe host ${host.name} ready`);
}
