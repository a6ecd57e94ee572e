// Remote stages against the same chains fully local, side by side on this machine: a
// nats-server, one worker host and the coordinator, all on the same cores.
//
//   deno run -A bench/remote.ts [--rounds 5] [--n 1000000] [--size 8192] [--workers 1]
//                               [--only W1,W5,RTT]
//
// Cases, each as a fresh coordinator process per round, local and remote alternating:
// - W1: stage 1 `x => x + 1` (local, 1 worker) -> stage 2 `x => x * 2` (1 local worker, or
//   remote with size `--size`), ordered, tiny numbers.
// - W5: the same chain of W5's objects `{ id, name, tags }`: stage 1 adds `a` (local),
//   stage 2 adds `b` (local or remote), ordered.
// - RTT: one item at a time through one stage `x => x + 1` (local, or remote with size 1):
//   the round trip's median and p99.
// Throughput cases run 6 timed passes of N through one pipeline after a warm-up (as
// BENCHMARKS.md): pass 1 and the steady state (median of passes 2-6) come out, with the CPU
// each process spent per item (from /proc; Linux only) in the steady passes. The host stays
// up across rounds (a host is a long-lived process), so its code is warm from round 2 on.
// The summary gives medians over rounds and the medians of the per-round ratios
// remote / local.

import { parseArgs } from "node:util";
import { OrderedStage, Pipeline } from "../mod.ts";
import { JetStreamCluster } from "../jetstream.ts";
import {
  clusterOptions,
  HostProcess,
  NatsServer,
  TEST_KEYS,
} from "../tests/support/nats.ts";
import { median } from "./stats.ts";
import * as w from "./workloads.ts";

const PASSES = 6;
const WARMUP = 2000;

interface Options {
  rounds: number;
  n: number;
  size: number;
  workers: number;
  only: string[];
}

/** What a child prints: one case, one variant. */
interface ChildResult {
  what: string;
  variant: "local" | "remote";
  /** Throughput: items/s per pass. */
  perPass?: number[];
  /** CPU µs per item in the steady passes: coordinator, host, server. */
  cpu?: { coordinator: number; host: number; server: number };
  /** Round trip: median and p99 in µs. */
  p50?: number;
  p99?: number;
}

/** User + system CPU ms of process `pid` so far (Linux /proc). */
function cpuMs(pid: number): number {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // utime and stime, in clock ticks (100 per second on Linux).
    return (Number(fields[11]) + Number(fields[12])) * 10;
  } catch {
    return NaN;
  }
}

// ---------------------------------------------------------------- the child

async function child(
  what: string,
  variant: "local" | "remote",
  url: string,
  opts: Options,
  pids: { host: number; server: number },
): Promise<ChildResult> {
  await using cluster = variant === "remote"
    ? await JetStreamCluster.connect(clusterOptions(url))
    : null;
  if (what === "RTT") return await roundTrips(variant, cluster);
  const w1 = what === "W1";
  const first = new OrderedStage(
    (w1 ? w.w1Increment : w.w5AddA) as (x: unknown) => unknown,
    1,
  );
  const second = new OrderedStage(
    (w1 ? w.w1Double : w.w5AddB) as (x: unknown) => unknown,
    variant === "remote" ? opts.size : 1,
    variant === "remote" ? { cluster } : {},
  );
  first.link(second);
  const pipe = new Pipeline<unknown, unknown>(first);
  const task = (w1 ? w.w1Task : w.w5Task) as (i: number) => unknown;
  const check = w1 ? w.w1Check : (k: number, r: unknown) => {
    const o = r as { id: number; a: number; b: number };
    if (o.id !== k || o.a !== 2 * k || o.b !== ("item-" + k).length) {
      throw new Error(`W5 result ${k} is wrong: ${JSON.stringify(r)}`);
    }
  };
  const run = async (n: number) => {
    const feed = (async () => {
      for (let i = 0; i < n; i++) await pipe.put(task(i));
    })();
    for (let k = 0; k < n; k++) check(k, await pipe.get());
    await feed;
  };
  await run(WARMUP);
  const perPass: number[] = [];
  const cpu = { coordinator: 0, host: 0, server: 0 };
  for (let pass = 0; pass < PASSES; pass++) {
    const before = [cpuMs(Deno.pid), cpuMs(pids.host), cpuMs(pids.server)];
    const t0 = performance.now();
    await run(opts.n);
    perPass.push(opts.n / ((performance.now() - t0) / 1000));
    if (pass === 0) continue;
    const after = [cpuMs(Deno.pid), cpuMs(pids.host), cpuMs(pids.server)];
    const perItem = (i: number) =>
      (after[i]! - before[i]!) * 1000 / opts.n / (PASSES - 1);
    cpu.coordinator += perItem(0);
    cpu.host += perItem(1);
    cpu.server += perItem(2);
  }
  await pipe.close();
  await pipe.done;
  return { what, variant, perPass, cpu };
}

async function roundTrips(
  variant: "local" | "remote",
  cluster: JetStreamCluster | null,
): Promise<ChildResult> {
  const pipe = new Pipeline<number, number>(
    new OrderedStage(
      (x: number) => x + 1,
      1,
      cluster === null ? {} : { cluster },
    ),
  );
  const n = 2000;
  const us = new Float64Array(n);
  for (let i = 0; i < 200; i++) {
    pipe.put(i);
    await pipe.get();
  }
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    pipe.put(i);
    if (await pipe.get() !== i + 1) throw new Error(`round trip ${i} is wrong`);
    us[i] = (performance.now() - t0) * 1000;
  }
  us.sort();
  await pipe.close();
  await pipe.done;
  return {
    what: "RTT",
    variant,
    p50: us[Math.ceil(0.5 * n) - 1]!,
    p99: us[Math.ceil(0.99 * n) - 1]!,
  };
}

// ---------------------------------------------------------------- the parent

async function parent(opts: Options): Promise<void> {
  await using server = await NatsServer.start();
  const host = await HostProcess.start(server.url, "bench-host", [
    "--trust",
    TEST_KEYS.publicKey,
    "--allow-source",
    "--workers",
    String(opts.workers),
  ]);
  const serverPid = server.pid;
  const cores = navigator.hardwareConcurrency;
  const load = Deno.loadavg?.()[0];
  console.log(
    `# bench/remote.ts: nats-server ${server.url}, 1 host of ${opts.workers} worker(s), ` +
      `coordinator, all on ${cores} cores (load ${
        load?.toFixed(2) ?? "?"
      }); Deno ${Deno.version.deno}; ${new Date().toISOString()}`,
  );
  console.log(
    `# N ${opts.n} per pass, ${PASSES} passes, remote size ${opts.size}, ${opts.rounds} rounds`,
  );
  const results: ChildResult[][] = [];
  try {
    for (let round = 0; round < opts.rounds; round++) {
      const row: ChildResult[] = [];
      for (const what of opts.only) {
        // Alternate which variant goes first, round by round.
        const order: ("local" | "remote")[] = round % 2 === 0
          ? ["local", "remote"]
          : ["remote", "local"];
        for (const variant of order) {
          const result = await spawnChild(what, variant, server.url, opts, {
            host: host.pid,
            server: serverPid,
          });
          row.push(result);
          console.log(`round ${round + 1} ${format(result)}`);
        }
      }
      results.push(row);
    }
  } finally {
    await host.stop();
  }
  summarize(results, opts);
}

async function spawnChild(
  what: string,
  variant: string,
  url: string,
  opts: Options,
  pids: { host: number; server: number },
): Promise<ChildResult> {
  const output = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      import.meta.url,
      "--child",
      what,
      "--variant",
      variant,
      "--url",
      url,
      "--n",
      String(opts.n),
      "--size",
      String(opts.size),
      "--host-pid",
      String(pids.host),
      "--server-pid",
      String(pids.server),
    ],
    stdout: "piped",
    stderr: "inherit",
    signal: AbortSignal.timeout(600_000),
  }).output();
  if (!output.success) throw new Error(`${what} ${variant} failed`);
  const lines = new TextDecoder().decode(output.stdout).trim().split("\n");
  return JSON.parse(lines.at(-1)!) as ChildResult;
}

function format(r: ChildResult): string {
  if (r.what === "RTT") {
    return `RTT ${r.variant}: p50 ${r.p50!.toFixed(0)} µs, p99 ${
      r.p99!.toFixed(0)
    } µs`;
  }
  const steady = median(r.perPass!.slice(1))!;
  const c = r.cpu!;
  return `${r.what} ${r.variant}: pass 1 ${
    Math.round(r.perPass![0]!)
  } items/s, steady ${Math.round(steady)} items/s; CPU µs/item coordinator ${
    c.coordinator.toFixed(2)
  }, host ${c.host.toFixed(2)}, server ${c.server.toFixed(2)}`;
}

function summarize(rounds: ChildResult[][], opts: Options): void {
  console.log("\n| case | figure | local | remote | remote ÷ local |");
  console.log("| --- | --- | ---: | ---: | ---: |");
  const find = (row: ChildResult[], what: string, variant: string) =>
    row.find((r) => r.what === what && r.variant === variant)!;
  for (const what of opts.only) {
    const figures: [string, (r: ChildResult) => number][] = what === "RTT"
      ? [["p50 µs", (r) => r.p50!], ["p99 µs", (r) => r.p99!]]
      : [
        ["items/s, pass 1", (r) => r.perPass![0]!],
        ["items/s, steady", (r) => median(r.perPass!.slice(1))!],
        ["CPU µs/item, coordinator", (r) => r.cpu!.coordinator],
        ["CPU µs/item, host", (r) => r.cpu!.host],
        ["CPU µs/item, server", (r) => r.cpu!.server],
        [
          "CPU µs/item, all three",
          (r) => r.cpu!.coordinator + r.cpu!.host + r.cpu!.server,
        ],
      ];
    for (const [label, figure] of figures) {
      const local = rounds.map((row) => figure(find(row, what, "local")));
      const remote = rounds.map((row) => figure(find(row, what, "remote")));
      // A ratio only where the local figure is one (no host, no server).
      const ratios = rounds.map((_, i) => remote[i]! / local[i]!)
        .filter((ratio) => Number.isFinite(ratio) && median(local)! > 0.1);
      const show = (v: number) =>
        Math.abs(v) >= 100 ? Math.round(v).toLocaleString("en") : v.toFixed(2);
      console.log(
        `| ${what} | ${label} | ${show(median(local)!)} | ${
          show(median(remote)!)
        } | ${ratios.length === 0 ? "—" : `${median(ratios)!.toFixed(2)}×`} |`,
      );
    }
  }
}

// ---------------------------------------------------------------- main

const { values } = parseArgs({
  args: Deno.args,
  options: {
    rounds: { type: "string", default: "5" },
    n: { type: "string", default: "1000000" },
    size: { type: "string", default: "8192" },
    workers: { type: "string", default: "1" },
    only: { type: "string", default: "W1,W5,RTT" },
    child: { type: "string" },
    variant: { type: "string" },
    url: { type: "string" },
    "host-pid": { type: "string" },
    "server-pid": { type: "string" },
  },
});
const opts: Options = {
  rounds: Number(values.rounds),
  n: Number(values.n),
  size: Number(values.size),
  workers: Number(values.workers),
  only: values.only!.split(","),
};
if (values.child !== undefined) {
  const result = await child(
    values.child,
    values.variant as "local" | "remote",
    values.url!,
    opts,
    { host: Number(values["host-pid"]), server: Number(values["server-pid"]) },
  );
  console.log(JSON.stringify(result));
} else {
  await parent(opts);
}
