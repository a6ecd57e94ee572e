// A chaos run of remote stages (issue 24, "Done when"): local -> remote -> local, ordered,
// against a nats-server and worker hosts of its own, under one fault per scenario:
// hosts SIGKILLed (and replaced), a host SIGSTOPped then resumed, the server SIGKILLed and
// restarted on its store, and on an empty one, the coordinator SIGKILLed, a poison task
// that kills every host it reaches. Each scenario must end with every result exactly once
// and in order, or a StageError; every wait is bounded (a scenario still running after
// its deadline is reported as a HANG and the run fails). It prints each scenario's
// outcome, time, and the longest stall of the output after each fault (recovery).
//
//   deno run -A bench/chaos_remote.ts [--n 20000] [--ack-wait 30000] [--only kill,stop,...]
//
// Not part of the unit suite: it takes minutes.

import { parseArgs } from "node:util";
import { OrderedStage, Pipeline, StageError } from "../mod.ts";
import { JetStreamCluster } from "../jetstream.ts";
import { connect, jetstreamManager } from "../lib/jetstream/connection.ts";
import {
  clusterOptions,
  HostProcess,
  NatsServer,
} from "../tests/support/nats.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    n: { type: "string", default: "20000" },
    "ack-wait": { type: "string", default: "30000" },
    only: { type: "string", default: "" },
    child: { type: "string" },
  },
});
const N = Number(values.n);
const ACK_WAIT = Number(values["ack-wait"]);

/** The chain: local x+1 -> remote x*2 (task 7777 is poison when asked) -> local x-1. */
function chain(
  cluster: JetStreamCluster,
  poison: boolean,
  onError?: () => void,
) {
  const remote = new OrderedStage(
    poison
      ? async (x: number) => {
        if (x === 7778) Deno.kill(Deno.pid, "SIGKILL");
        await new Promise((resolve) => setTimeout(resolve, 1));
        return x * 2;
      }
      : async (x: number) => {
        await new Promise((resolve) => setTimeout(resolve, 1));
        return x * 2;
      },
    32,
    { cluster, name: "chaos", ...(onError ? { onError } : {}) },
  );
  return new Pipeline<number, number>(
    new OrderedStage((x: number) => x + 1, 1).link(
      remote.link(new OrderedStage((x: number) => x - 1, 1)),
    ),
  );
}

const expected = (i: number) => (i + 1) * 2 - 1;

// The coordinator killed: a child that runs the chain until it is killed.
if (values.child !== undefined) {
  const cluster = await JetStreamCluster.connect(
    clusterOptions(values.child, { ackWait: ACK_WAIT }),
  );
  const pipe = chain(cluster, false);
  (async () => {
    for (let i = 0; i < N; i++) await pipe.put(i);
  })();
  let seen = 0;
  for await (const _ of pipe) if (++seen === 500) console.log("running");
  Deno.exit(0);
}

interface Outcome {
  scenario: string;
  outcome: string;
  seconds: number;
  /** The longest gap between results after each fault, ms. */
  stalls: number[];
}

/** Runs the chain once, calling `fault(k)` when result k of `at` arrives; bounded by `deadlineMs`. */
async function run(
  scenario: string,
  url: string,
  at: number[],
  fault: (k: number) => Promise<void> | void,
  deadlineMs: number,
  poison = false,
): Promise<Outcome> {
  const started = performance.now();
  await using cluster = await JetStreamCluster.connect(
    clusterOptions(url, { ackWait: ACK_WAIT, hostTimeout: 30_000 }),
  );
  const skipped: number[] = [];
  const pipe = chain(
    cluster,
    poison,
    poison ? () => skipped.push(1) : undefined,
  );
  (async () => {
    for (let i = 0; i < N; i++) await pipe.put(i);
    await pipe.put(null);
  })().catch(() => {});
  const results: number[] = [];
  const stalls: number[] = [];
  let faultAt = -1;
  let last = performance.now();
  let gap = 0;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<string>((resolve) => {
    timer = setTimeout(() => resolve("HANG"), deadlineMs);
  });
  const reading = (async () => {
    try {
      for await (const value of pipe) {
        const now = performance.now();
        if (faultAt >= 0) gap = Math.max(gap, now - last);
        last = now;
        results.push(value);
        const k = at.indexOf(results.length);
        if (k >= 0) {
          if (faultAt >= 0) stalls.push(Math.round(gap));
          gap = 0;
          faultAt = now;
          await fault(k);
          last = performance.now();
        }
      }
      if (faultAt >= 0) stalls.push(Math.round(gap));
      const want = poison ? N - skipped.length : N;
      let ok = results.length === want;
      for (let i = 0, j = 0; ok && i < N; i++) {
        if (poison && i === 7777 && results[j] !== expected(i)) continue;
        if (results[j++] !== expected(i)) ok = false;
      }
      return ok
        ? `every result once, in order${
          skipped.length
            ? ` (${skipped.length} poison task skipped by onError)`
            : ""
        }`
        : `WRONG: ${results.length} results`;
    } catch (error) {
      // How long after the fault the run failed.
      if (faultAt >= 0) stalls.push(Math.round(performance.now() - faultAt));
      return error instanceof StageError
        ? `StageError: ${error.message.split("\n")[0]!.slice(0, 160)}`
        : `OTHER ERROR: ${error}`;
    }
  })();
  const outcome = await Promise.race([reading, deadline]);
  clearTimeout(timer);
  if (outcome === "HANG") pipe.terminate();
  await Promise.race([
    pipe.done.catch(() => {}),
    new Promise((r) => setTimeout(r, 10_000)),
  ]);
  return {
    scenario,
    outcome,
    seconds: Math.round((performance.now() - started) / 100) / 10,
    stalls,
  };
}

const only = values.only === "" ? null : values.only.split(",");
const outcomes: Outcome[] = [];
/** Keeps an outcome, and prints it at once (a long run shows its progress). */
const record = (o: Outcome) => {
  outcomes.push(o);
  console.log(
    `${o.scenario}: ${o.outcome} (${o.seconds} s; stalls ${
      o.stalls.join(", ")
    } ms)`,
  );
};
await using server = await NatsServer.start();
const url = server.url;
const hosts: HostProcess[] = [];
const startHost = async (name: string) => {
  const host = await HostProcess.start(url, name, undefined, { run: true });
  hosts.push(host);
  return host;
};
let named = 0;
const live = () => hosts.filter((h) => !h.exited);
for (let i = 0; i < 3; i++) await startHost(`chaos-${++named}`);
const replacing: Promise<unknown>[] = [];
const wanted = (s: string) => only === null || only.includes(s);
const deadline = 120_000 + 4 * ACK_WAIT;

try {
  if (wanted("none")) {
    record(await run("no fault", url, [], () => {}, deadline));
  }
  if (wanted("kill")) {
    const at = [0.2, 0.4, 0.6, 0.8, 0.9].map((f) => Math.floor(f * N));
    record(
      await run("5 hosts SIGKILLed (each replaced)", url, at, () => {
        live()[0]!.kill("SIGKILL");
        // Replaced, while the run goes on.
        replacing.push(startHost(`chaos-${++named}`));
      }, deadline),
    );
  }
  if (wanted("stop")) {
    record(
      await run(
        "a host SIGSTOPped for 10 s, then resumed",
        url,
        [Math.floor(N / 4)],
        () => {
          const host = live()[0]!;
          host.kill("SIGSTOP");
          setTimeout(() => host.kill("SIGCONT"), 10_000);
        },
        deadline,
      ),
    );
  }
  if (wanted("server")) {
    record(
      await run(
        "server SIGKILLed, restarted on its store",
        url,
        [Math.floor(N / 3)],
        async () => {
          await server.stop("SIGKILL");
          await server.restart();
        },
        deadline,
      ),
    );
  }
  if (wanted("empty")) {
    record(
      await run(
        "server SIGKILLed, restarted on an empty store",
        url,
        [Math.floor(N / 3)],
        async () => {
          await server.stop("SIGKILL");
          await Deno.remove(server.storeDir, { recursive: true }).catch(
            () => {},
          );
          await server.restart();
        },
        deadline,
      ),
    );
  }
  if (wanted("poison")) {
    // The poison kills each host it reaches; a supervisor replaces them.
    await Promise.all(replacing);
    const exitedBefore = hosts.filter((h) => h.exited).length;
    let supervising = true;
    const supervisor = (async () => {
      while (supervising) {
        while (supervising && live().length < 3) {
          await startHost(`chaos-${++named}`);
        }
        await new Promise((r) => setTimeout(r, 200));
      }
    })();
    record(
      await run(
        "a poison task (hosts replaced)",
        url,
        [],
        () => {},
        deadline,
        true,
      ),
    );
    supervising = false;
    await supervisor;
    const killed = hosts.filter((h) => h.exited).length - exitedBefore;
    outcomes.at(-1)!.outcome += `; it killed ${killed} hosts`;
    console.log(`(the poison killed ${killed} hosts)`);
  }
  if (wanted("coordinator")) {
    const started = performance.now();
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        new URL(import.meta.url).pathname,
        "--child",
        url,
        "--n",
        "1000000",
      ],
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    const reader = child.stdout.pipeThrough(new TextDecoderStream())
      .getReader();
    let said = "";
    while (!said.includes("running")) {
      const { value, done } = await reader.read();
      if (done) break;
      said += value;
    }
    child.kill("SIGKILL");
    await child.status;
    reader.cancel().catch(() => {});
    // Its run's stream must go (the hosts remove it), bounded.
    const nc = await connect({ servers: url });
    const jsm = await jetstreamManager(nc);
    const killedAt = performance.now();
    let left = -1;
    for (let i = 0; i < 120; i++) {
      left = 0;
      for await (const s of jsm.streams.list()) {
        if (
          s.config.name.startsWith("MPIPE_") && s.config.name !== "MPIPE_STAGES"
        ) left++;
      }
      if (left === 0) break;
      await new Promise((r) => setTimeout(r, 1_000));
    }
    await nc.close();
    const gone = Math.round((performance.now() - killedAt) / 1000);
    record({
      scenario: "the coordinator SIGKILLed mid-run",
      outcome: left === 0
        ? `its streams removed by the hosts ${gone} s after`
        : `HANG: ${left} stream(s) left after ${gone} s`,
      seconds: Math.round((performance.now() - started) / 100) / 10,
      stalls: [],
    });
    record(
      await run("the next run after it", url, [], () => {}, deadline),
    );
  }
} finally {
  await Promise.all(hosts.map((h) => h.stop(2_000)));
}

console.log(
  `\nN = ${N} per run, ackWait ${ACK_WAIT} ms, 3 hosts of 2 workers\n`,
);
console.log("| scenario | outcome | s | output stall after each fault, ms |");
console.log("| --- | --- | ---: | --- |");
for (const o of outcomes) {
  console.log(
    `| ${o.scenario} | ${o.outcome} | ${o.seconds} | ${o.stalls.join(", ")} |`,
  );
}
if (outcomes.some((o) => /HANG|WRONG|OTHER/.test(o.outcome))) Deno.exit(1);
Deno.exit(0);
