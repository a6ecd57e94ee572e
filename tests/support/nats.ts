/**
 * A NATS server and worker hosts for the JetStream tests, as processes.
 *
 * `NatsServer.start()` runs `nats-server` with JetStream on a free loopback
 * port and a temporary store, waits until it is ready, and can stop it and
 * start it again on the same port and store. `natsUrl()` is the server that
 * `.ci/run` started (`MPIPE_NATS_URL`), or one started here for the whole
 * test process. `HostProcess.start()` runs `host.ts` as a user would, and
 * waits until it serves.
 *
 * Without `nats-server` on the machine, these fail with a message that says
 * how to install it: the JetStream tests never skip silently.
 *
 * @module
 */

import assert from "node:assert/strict";
import { OrderedStage, Pipeline, type StageOptions } from "../../mod.ts";
import type { JetStreamCluster } from "../../jetstream.ts";
import { readEnv } from "./env.ts";
import { generateKeys } from "../../lib/jetstream/keys.ts";

/**
 * The test coordinators' key pair: clusters sign with `signingKey`
 * (`clusterOptions()`), hosts trust `publicKey` (`HostProcess`'s default
 * flags). Also set as `MPIPE_SIGNING_KEY` and `MPIPE_TRUST` in this
 * process's environment, for the scripts the tests run (README snippets,
 * doc examples).
 */
export const TEST_KEYS: { signingKey: string; publicKey: string } =
  readEnv("MPIPE_SIGNING_KEY") !== undefined &&
    readEnv("MPIPE_TRUST") !== undefined
    // A process the tests started (a benchmark's coordinator): the same keys.
    ? {
      signingKey: readEnv("MPIPE_SIGNING_KEY")!,
      publicKey: readEnv("MPIPE_TRUST")!,
    }
    : await generateKeys();
try {
  Deno.env.set("MPIPE_SIGNING_KEY", TEST_KEYS.signingKey);
  Deno.env.set("MPIPE_TRUST", TEST_KEYS.publicKey);
} catch { /* No --allow-env: the scripts get no keys. */ }

/** The options of a test's `JetStreamCluster.connect`: `servers`, the test signing key, and `more`. */
export function clusterOptions<T extends object>(
  servers: string,
  more?: T,
): { servers: string; signingKey: string } & T {
  return { servers, signingKey: TEST_KEYS.signingKey, ...more } as
    & { servers: string; signingKey: string }
    & T;
}

/** How to install the server, for the error when it is missing. */
const INSTALL_HINT =
  "nats-server is not installed: run the tests with .ci/run (it installs it), or apt-get install -y nats-server";

/** The path of `nats-server`, or a clear error. */
export async function natsServerPath(): Promise<string> {
  const path = readEnv("PATH") ?? "/usr/local/bin:/usr/bin";
  // Debian installs it in /usr/sbin, which a user's PATH may lack.
  for (const dir of [...path.split(":"), "/usr/local/sbin", "/usr/sbin"]) {
    const path = `${dir}/nats-server`;
    try {
      const info = await Deno.stat(path);
      if (info.isFile) return path;
    } catch { /* Not here. */ }
  }
  throw new Error(INSTALL_HINT);
}

/** A free TCP port on the loopback interface. */
function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/** A `nats-server` process with JetStream, on a loopback port and a store of its own. */
export class NatsServer {
  readonly port: number;
  readonly storeDir: string;
  readonly #dir: string;
  readonly #extra: string[];
  #process: Deno.ChildProcess | null = null;
  #starts = 0;

  private constructor(dir: string, port: number, extra: string[]) {
    this.#dir = dir;
    this.storeDir = `${dir}/store`;
    this.port = port;
    this.#extra = extra;
  }

  /**
   * Starts a server with JetStream on a free port and a new temporary
   * store, and waits until it is ready. `extra` are more flags (a config
   * file, accounts).
   */
  static async start(extra: string[] = []): Promise<NatsServer> {
    const dir = await Deno.makeTempDir({ prefix: "mpipe-nats-" });
    const server = new NatsServer(dir, freePort(), extra);
    await server.#launch();
    return server;
  }

  /** The running server's process id (NaN while stopped). */
  get pid(): number {
    return this.#process?.pid ?? NaN;
  }

  /** The server's URL for clients. */
  get url(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** Starts the server again, on the same port and store (after `stop()`). */
  async restart(): Promise<void> {
    if (this.#process !== null) await this.stop();
    await this.#launch();
  }

  /**
   * Stops the server (SIGTERM, which flushes the store; SIGKILL after 10 s)
   * and waits until it has exited. The store stays, for `restart()`.
   */
  async stop(signal: Deno.Signal = "SIGTERM"): Promise<void> {
    const process = this.#process;
    if (process === null) return;
    this.#process = null;
    try {
      process.kill(signal);
    } catch { /* It has exited already. */ }
    const timer = setTimeout(() => {
      try {
        process.kill("SIGKILL");
      } catch { /* Exited. */ }
    }, 10_000);
    await process.status;
    clearTimeout(timer);
  }

  /** Stops the server and removes its store. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
    await Deno.remove(this.#dir, { recursive: true }).catch(() => {});
  }

  async #launch(): Promise<void> {
    const log = `${this.#dir}/server-${this.#starts++}.log`;
    const command = new Deno.Command(await natsServerPath(), {
      args: [
        "-a",
        "127.0.0.1",
        "-p",
        String(this.port),
        "-js",
        "-sd",
        this.storeDir,
        "-l",
        log,
        ...this.#extra,
      ],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    });
    const process = command.spawn();
    this.#process = process;
    // Ready once the log says so (JetStream's state is restored by then).
    const deadline = Date.now() + 15_000;
    for (;;) {
      const text = await Deno.readTextFile(log).catch(() => "");
      if (text.includes("Server is ready")) return;
      if (Date.now() > deadline) {
        await this.stop("SIGKILL");
        throw new Error(`nats-server did not start in 15 s; its log:\n${text}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
  }
}

let shared: Promise<NatsServer> | null = null;

/**
 * The server most tests share: `MPIPE_NATS_URL` if set (`.ci/run` starts one
 * and sets it), or else one started on first use for this test process.
 * The process's exit stops it (the tests leave no process of their own).
 */
export async function natsUrl(): Promise<string> {
  const url = readEnv("MPIPE_NATS_URL");
  if (url !== undefined && url !== "") return url;
  shared ??= NatsServer.start();
  const server = await shared;
  return server.url;
}

/** Stops the server `natsUrl()` started, if it started one (call at the end of a test file). */
export async function stopSharedServer(): Promise<void> {
  const server = shared;
  shared = null;
  if (server !== null) await (await server)[Symbol.asyncDispose]();
}

/** The host entry point, `host.ts`. */
const HOST = new URL("../../host.ts", import.meta.url);

/** Permissions a host gets beyond the least (`hostPermissions`). */
export interface HostGrants {
  /** More paths to read (a CA's or a client certificate's files). */
  read?: string[];
  /** `--allow-run` (a task that kills its host with `Deno.kill`). */
  run?: boolean;
}

/**
 * The least permissions a host run from this checkout needs, as the README
 * gives them: the server (`url`), reading the checkout (its workers load
 * `lib/` from there), the environment variables it reads, and the host's
 * name; and `more`.
 */
export function hostPermissions(url: string, more: HostGrants = {}): string[] {
  const root = new URL("../../", import.meta.url).pathname;
  const server = url.replace(/^[a-z]+:\/\//, "");
  return [
    `--allow-net=${server}`,
    `--allow-read=${[root, ...more.read ?? []].join(",")}`,
    "--allow-env=MPIPE_TRUST,MPIPE_NATS_PASS,MPIPE_NATS_TOKEN",
    "--allow-sys=hostname",
    ...(more.run ? ["--allow-run"] : []),
  ];
}

/** A host's flags: it trusts the test coordinator's key, runs source targets, with `workers` workers. */
export function trustedHost(workers: number): string[] {
  return [
    "--trust",
    TEST_KEYS.publicKey,
    "--allow-source",
    "--workers",
    String(workers),
  ];
}

/** A worker host (`host.ts`) as a process of its own. */
export class HostProcess {
  readonly name: string;
  readonly #process: Deno.ChildProcess;
  #output = "";
  #drained: Promise<void> = Promise.resolve();
  #exited = false;

  private constructor(name: string, process: Deno.ChildProcess) {
    this.name = name;
    this.#process = process;
    process.status.then(() => this.#exited = true);
  }

  /**
   * Starts `deno run <permissions> host.ts --servers <url> --name <name>
   * <flags>` and waits until it prints that it is ready (at most 30 s).
   * The permissions are the least a host needs, as the README gives them
   * (`hostPermissions`), and `more` of them.
   */
  static async start(
    url: string,
    name: string,
    flags: string[] = trustedHost(2),
    more: HostGrants = {},
  ): Promise<HostProcess> {
    const process = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        ...hostPermissions(url, more),
        HOST.href,
        "--servers",
        url,
        "--name",
        name,
        ...flags,
      ],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      // Trust only as the flags say (not this process's MPIPE_TRUST).
      env: { NO_COLOR: "1", MPIPE_TRUST: "" },
    }).spawn();
    const host = new HostProcess(name, process);
    await host.#readUntilReady();
    return host;
  }

  /** Reads its output until it says it is ready, then drains the rest in the background. */
  async #readUntilReady(): Promise<void> {
    const process = this.#process;
    const stdout = process.stdout.pipeThrough(new TextDecoderStream())
      .getReader();
    const stderr = new Response(process.stderr).text();
    const ready = `mpipe host ${this.name} ready`;
    const deadline = setTimeout(() => this.kill("SIGKILL"), 30_000);
    try {
      while (!this.#output.includes(ready)) {
        const { value, done } = await stdout.read();
        if (done) {
          await process.status;
          throw new Error(
            `host ${this.name} ended before it was ready:\n${this.#output}\n${await stderr}`,
          );
        }
        this.#output += value;
      }
    } finally {
      clearTimeout(deadline);
    }
    this.#drained = (async () => {
      for (;;) {
        const { value, done } = await stdout.read();
        if (done) break;
        this.#output += value;
      }
      this.#output += await stderr;
    })();
  }

  /** The process id. */
  get pid(): number {
    return this.#process.pid;
  }

  /** Whether it has exited. */
  get exited(): boolean {
    return this.#exited;
  }

  /** What it printed so far (all of it once it has exited). */
  get output(): string {
    return this.#output;
  }

  /** Kills it with `signal` (SIGKILL: at once, holding what it held). */
  kill(signal: Deno.Signal = "SIGKILL"): void {
    try {
      this.#process.kill(signal);
    } catch { /* Exited already. */ }
  }

  /** Its exit status, once it has exited. */
  get status(): Promise<Deno.CommandStatus> {
    return this.#process.status;
  }

  /** Stops it (SIGTERM; SIGKILL after `graceMs`) and waits until it and its output have ended. */
  async stop(graceMs = 10_000): Promise<void> {
    this.kill("SIGTERM");
    const timer = setTimeout(() => this.kill("SIGKILL"), graceMs);
    await this.#process.status;
    clearTimeout(timer);
    await this.#drained;
  }

  /** Stops it. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }
}

/** A test that may take up to `ms` (a hang guard), with the sanitizers on. */
export function timed(
  name: string,
  ms: number,
  fn: () => Promise<void>,
): void {
  Deno.test(name, async () => {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const guard = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`${name}: still running after ${ms} ms`)),
        ms,
      );
    });
    try {
      await Promise.race([fn(), guard]);
    } finally {
      clearTimeout(timer);
    }
  });
}

/** Starts hosts named `names` on `url`, runs `fn`, and stops them whatever happens. */
export async function withHosts(
  url: string,
  names: string[],
  fn: (hosts: HostProcess[]) => Promise<void>,
  flags?: string[],
  grants?: HostGrants,
): Promise<void> {
  const hosts = await Promise.all(
    names.map((name) => HostProcess.start(url, name, flags, grants)),
  );
  try {
    await fn(hosts);
  } finally {
    await Promise.all(hosts.map((host) => host.stop()));
  }
}

/**
 * Runs 600 tasks through an ordered remote stage of size 16 running `task`
 * (it gives `[x * 3, Deno.pid]`) on two hosts named `names`, SIGKILLs the first at the 100th result, and
 * checks that every result came once and in order, that both hosts worked,
 * and that the victim died by SIGKILL. Gives the ms from the kill to the
 * last result. `options` are more of the stage's.
 */
export async function runKillingOneHost(
  url: string,
  cluster: JetStreamCluster,
  names: [string, string],
  task: (x: number) => Promise<[number, number]>,
  options: StageOptions = {},
): Promise<number> {
  let after = 0;
  await withHosts(url, names, async ([victim, survivor]) => {
    const pipe = new Pipeline<number, [number, number]>(
      new OrderedStage(task, 16, { ...options, cluster }),
    );
    const N = 600;
    (async () => {
      for (let i = 0; i < N; i++) await pipe.put(i);
      await pipe.put(null);
    })();
    const results: number[] = [];
    const pids = new Set<number>();
    let killed = 0;
    for await (const [value, pid] of pipe) {
      results.push(value);
      pids.add(pid);
      if (results.length === 100) {
        victim!.kill("SIGKILL");
        killed = performance.now();
      }
    }
    after = performance.now() - killed;
    assert.deepEqual(results, Array.from({ length: N }, (_, i) => i * 3));
    assert.ok(pids.has(victim!.pid), "the victim did some of the work");
    assert.ok(pids.has(survivor!.pid), "the survivor did some of the work");
    assert.equal((await victim!.status).signal, "SIGKILL");
    await pipe.done;
  });
  return after;
}
