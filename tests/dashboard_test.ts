// The dashboard (`@mpipe/mpipe/dashboard`) as its users meet it: a real
// server on a free loopback port, the page in the real headless Chromium
// (Debian's `chromium`, driven by puppeteer-core), the metrics scraped by the
// real Prometheus and checked by `promtool`. Every wait is bounded: a test
// fails, it never hangs, and it stops every process it started.

import assert from "node:assert/strict";
import puppeteer from "puppeteer-core";
import {
  metricsText,
  type PipelineSource,
  serveDashboard,
} from "../dashboard.ts";
import { OrderedStage, Pipeline } from "../mod.ts";
import { JetStreamCluster } from "../jetstream.ts";
import {
  clusterOptions,
  natsUrl,
  stopSharedServer,
  withHosts,
} from "./support/nats.ts";
import {
  failing,
  filtered,
  forkJoin,
  keepFeeding,
  MARKUP,
  markup,
  slowChain,
  withRemote,
} from "./fixtures/dashboard/pipelines.ts";
import { layout } from "../lib/dashboard/model.ts";
import { docSymbols } from "./support/deno_doc.ts";
import { runScript } from "./support/run_script.ts";

const CHROMIUM = "/usr/bin/chromium";
const PROMETHEUS = "/usr/bin/prometheus";
const PROMTOOL = "/usr/bin/promtool";

/** `promise`, or a failure naming `what` after `ms` (a hang guard, not a speed check). */
async function within<T>(ms: number, what: string, promise: Promise<T>) {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`${what}: not within ${ms} ms`)),
          ms,
        );
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Polls `check` until it returns a value other than undefined; fails naming `what` after `ms`. */
async function eventually<T>(
  ms: number,
  what: string,
  check: () => Promise<T | undefined> | T | undefined,
): Promise<T> {
  const end = Date.now() + ms;
  let last: unknown = undefined;
  while (Date.now() < end) {
    try {
      const value = await check();
      if (value !== undefined) return value;
    } catch (error) {
      last = error;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(
    `${what}: not within ${ms} ms${last === undefined ? "" : ` (${last})`}`,
  );
}

/** The metrics the issue asks for, each with whether it has a `stage` label. */
const METRICS: [string, boolean][] = [
  ["mpipe_pipeline_tasks_put_total", false],
  ["mpipe_pipeline_results_read_total", false],
  ["mpipe_stage_tasks_total", true],
  ["mpipe_stage_results_total", true],
  ["mpipe_stage_skipped_total", true],
  ["mpipe_stage_restarts_total", true],
  ["mpipe_stage_retries_total", true],
  ["mpipe_stage_quarantined_total", true],
  ["mpipe_stage_busy_seconds_total", true],
  ["mpipe_stage_blocked_seconds_total", true],
  ["mpipe_stage_idle_seconds_total", true],
  ["mpipe_stage_backlog", true],
  ["mpipe_stage_in_flight", true],
  ["mpipe_stage_workers", true],
];

/** Runs `promtool check metrics` on `text`; returns its exit code and output. */
async function promtool(text: string): Promise<{ code: number; out: string }> {
  const child = new Deno.Command(PROMTOOL, {
    args: ["check", "metrics"],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(20_000),
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(text));
  await writer.close();
  const { code, stdout, stderr } = await child.output();
  const decode = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code, out: decode(stdout) + decode(stderr) };
}

/** The real headless Chromium, started by puppeteer-core (bounded). */
function launchChromium() {
  return within(
    30_000,
    "Chromium's start",
    puppeteer.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
    }),
  );
}

/** Closes `browser` (or kills it) and waits until its process has exited, bounded. */
async function closeChromium(
  browser: Awaited<ReturnType<typeof launchChromium>>,
): Promise<void> {
  const chromium = browser.process();
  await within(15_000, "Chromium's close", browser.close()).catch(() =>
    chromium?.kill("SIGKILL")
  );
  if (chromium !== null && chromium.exitCode === null) {
    await within(
      10_000,
      "Chromium's exit",
      new Promise((resolve) => chromium.once("exit", resolve)),
    );
  }
}

/** A free loopback port (a race with other programs is possible, and harmless here). */
function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

Deno.test("PipelineOptions.name names a pipeline; unnamed ones are pipeline-1, pipeline-2, … in creation order", async () => {
  const stage = () => new OrderedStage((x: number) => x);
  const first = new Pipeline(stage());
  const named = new Pipeline(stage(), { name: "squares" });
  const second = new Pipeline(stage());
  const n = Number(/^pipeline-(\d+)$/.exec(first.name)?.[1]);
  assert.ok(n >= 1, first.name);
  assert.equal(named.name, "squares");
  assert.equal(second.name, `pipeline-${n + 1}`);
  assert.throws(
    () => new Pipeline(stage(), { name: "" }),
    (e: unknown) =>
      e instanceof TypeError && /'options\.name' must be a non-empty string/
        .test(e.message),
  );
  for (const pipe of [first, named, second]) {
    pipe.terminate();
    await pipe.done;
  }
});

Deno.test("serveDashboard checks its arguments, and refuses a non-loopback address without a token", async () => {
  const pipe = new Pipeline(new OrderedStage((x: number) => x));
  try {
    assert.throws(
      () => serveDashboard(pipe, { hostname: "0.0.0.0" }),
      (e: unknown) =>
        e instanceof TypeError && /not loopback, needs 'options.token'/.test(
          e.message,
        ),
    );
    assert.throws(
      () => serveDashboard(pipe, { port: 70000 }),
      (e: unknown) =>
        e instanceof RangeError && /options\.port/.test(e.message),
    );
    assert.throws(
      () => serveDashboard(pipe, { colour: "red" } as never),
      (e: unknown) =>
        e instanceof TypeError && /'options\.colour' is not an option/.test(
          e.message,
        ),
    );
    assert.throws(
      () => serveDashboard(42 as unknown as PipelineSource),
      (e: unknown) => e instanceof TypeError && /'pipelines'/.test(e.message),
    );
    assert.throws(
      () => metricsText([pipe, {}] as unknown as PipelineSource),
      (e: unknown) => e instanceof TypeError && /'pipelines'/.test(e.message),
    );
  } finally {
    pipe.terminate();
    await pipe.done;
  }
});

Deno.test("serveDashboard: with a token, a request needs it (header or ?token=); url ends with /; close() ends the event streams", async () => {
  const pipe = new Pipeline(new OrderedStage((x: number) => x), {
    name: "guarded",
  });
  const dashboard = serveDashboard(pipe, { token: "s3cret" });
  try {
    assert.match(dashboard.url, /^http:\/\/127\.0\.0\.1:\d+\/$/);
    const get = async (path: string, headers: HeadersInit = {}) => {
      const response = await fetch(new URL(path, dashboard.url), { headers });
      await response.body?.cancel();
      return response.status;
    };
    assert.equal(await get("metrics"), 401);
    assert.equal(await get("metrics", { authorization: "Bearer wrong" }), 401);
    assert.equal(await get("metrics", { authorization: "Bearer s3cret" }), 200);
    assert.equal(await get("?token=s3cret"), 200);
    assert.equal(await get("nothing-here?token=s3cret"), 404);
    const events = await fetch(new URL("events?token=s3cret", dashboard.url));
    assert.equal(events.headers.get("content-type"), "text/event-stream");
    const reader = events.body!.getReader();
    const first = new TextDecoder().decode((await reader.read()).value);
    assert.match(first, /^data: \[\{"name":"guarded","state":"running"/);
    await within(10_000, "close()", dashboard.close());
    // The stream ends with the server.
    await within(
      10_000,
      "the event stream's end",
      (async () => {
        while (!(await reader.read()).done) { /* messages sent before */ }
      })(),
    );
  } finally {
    await dashboard.close();
    pipe.terminate();
    await pipe.done;
  }
});

/** Sends GET `path` to `url`'s server over a raw connection, naming `host` in the Host header; returns the status code. */
async function statusFor(
  url: string,
  path: string,
  host: string,
  headers: string[] = [],
): Promise<number> {
  const { hostname, port } = new URL(url);
  const conn = await Deno.connect({ hostname, port: Number(port) });
  try {
    await conn.write(new TextEncoder().encode(
      [
        `GET ${path} HTTP/1.1`,
        `Host: ${host}`,
        "Connection: close",
        ...headers,
        "",
        "",
      ].join("\r\n"),
    ));
    const head = await within(
      10_000,
      `the answer to ${path}`,
      new Response(conn.readable).text(),
    );
    return Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1]);
  } catch (error) {
    conn.close();
    throw error;
  }
}

Deno.test("serveDashboard without a token answers only requests that name a loopback host (DNS rebinding); with one, the Bearer scheme in any case", async () => {
  const pipe = new Pipeline(new OrderedStage((x: number) => x));
  const open = serveDashboard(pipe);
  const guarded = serveDashboard(pipe, { token: "s3cret" });
  try {
    const port = new URL(open.url).port;
    // A page of evil.example whose name now resolves to 127.0.0.1.
    for (const path of ["/", "/metrics", "/events"]) {
      assert.equal(
        await statusFor(open.url, path, `evil.example:${port}`),
        403,
        path,
      );
    }
    assert.equal(await statusFor(open.url, "/metrics", "evil.example"), 403);
    for (const host of [`127.0.0.1:${port}`, `localhost:${port}`, "[::1]"]) {
      assert.equal(await statusFor(open.url, "/metrics", host), 200, host);
    }
    // A token guards the server whatever its name (a LAN name, say).
    const bearer = (scheme: string) => [`Authorization: ${scheme} s3cret`];
    const host = `mpipe.lan:${new URL(guarded.url).port}`;
    assert.equal(await statusFor(guarded.url, "/metrics", host), 401);
    for (const scheme of ["Bearer", "bearer", "BEARER"]) {
      assert.equal(
        await statusFor(guarded.url, "/metrics", host, bearer(scheme)),
        200,
        scheme,
      );
    }
  } finally {
    await open.close();
    await guarded.close();
    pipe.terminate();
    await pipe.done;
  }
});

Deno.test("the page may run its own script only: a content security policy with a fresh nonce, no framing, no referrer", async () => {
  const pipe = new Pipeline(new OrderedStage((x: number) => x));
  await using dashboard = serveDashboard(pipe);
  try {
    const nonces = [];
    for (let i = 0; i < 2; i++) {
      const response = await fetch(dashboard.url);
      const page = await response.text();
      const policy = response.headers.get("content-security-policy") ?? "";
      const nonce = /script-src 'nonce-([^']+)'/.exec(policy)?.[1];
      assert.ok(nonce !== undefined, policy);
      assert.match(policy, /default-src 'none'/);
      assert.match(policy, /frame-ancestors 'none'/);
      assert.ok(page.includes(`<script nonce="${nonce}">`));
      assert.equal(page.match(/<script/g)?.length, 1);
      assert.equal(response.headers.get("referrer-policy"), "no-referrer");
      nonces.push(nonce);
    }
    assert.notEqual(nonces[0], nonces[1]);
  } finally {
    pipe.terminate();
    await pipe.done;
  }
});

Deno.test("the figures are read once a tick however many pages watch, and not at all once they have gone", async () => {
  const pipe = new Pipeline(new OrderedStage((x: number) => x));
  let reads = 0;
  const dashboard = serveDashboard(() => {
    reads++;
    return pipe as unknown as Pipeline<never, unknown>;
  });
  const aborts = [0, 1, 2].map(() => new AbortController());
  try {
    const readers = await Promise.all(aborts.map(async (abort) => {
      const response = await fetch(new URL("events", dashboard.url), {
        signal: abort.signal,
      });
      const reader = response.body!.getReader();
      await within(10_000, "a first message", reader.read());
      return reader;
    }));
    // Three pages read along; count the reads over five messages of one.
    const along = readers.slice(1).map(async (reader) => {
      while (!(await reader.read().catch(() => ({ done: true }))).done) {
        /* read */
      }
    });
    const before = reads;
    for (let i = 0; i < 5; i++) {
      await within(10_000, "a message", readers[0]!.read());
    }
    const during = reads - before;
    assert.ok(during <= 6, `${during} reads for 5 messages to each of 3 pages`);
    for (const abort of aborts) abort.abort();
    await Promise.all(along);
    // A tick may be under way as the pages leave; after it, none.
    await new Promise((resolve) => setTimeout(resolve, 500));
    const after = reads;
    await new Promise((resolve) => setTimeout(resolve, 1000));
    assert.equal(reads, after, "the figures were read with no page open");
  } finally {
    for (const abort of aborts) abort.abort();
    await dashboard.close();
    pipe.terminate();
    await pipe.done;
  }
});

Deno.test("a program whose dashboard was closed (by close() or its signal) exits by itself, even with a page's stream open", async () => {
  for (const how of ["close", "signal"]) {
    const { code, stdout, stderr, signal } = await runScript(
      new URL("./fixtures/dashboard/exits.ts", import.meta.url),
      { flags: ["--allow-net", "--allow-read"], args: [how] },
    );
    assert.equal(signal, null, `${how}: killed by the hang guard\n${stderr}`);
    assert.equal(code, 0, `${how}: ${stderr}`);
    assert.equal(stdout, "[2,3,4]\nclosed\n");
  }
});

Deno.test("metricsText: every metric, for a chain, a fork and a join, a FilterStage, a remote stage and a failed pipeline; promtool check metrics passes", async () => {
  const pipes = [
    slowChain("m-chain"),
    forkJoin("m-fork"),
    filtered("m-filter"),
    withRemote("m-remote"),
    failing("m-failing"),
  ];
  const stop = new AbortController();
  const runs = pipes.map((pipe) => keepFeeding(pipe, stop.signal, 20));
  try {
    // Until the failing one has failed, and every stage has done a task.
    await eventually(30_000, "every stage working, 'm-failing' failed", () => {
      const text = metricsText(pipes);
      return /mpipe_stage_tasks_total\{[^}]*\} 0\n/.test(text) ||
          !/mpipe_stage_skipped_total/.test(text)
        ? undefined
        : pipes[4]!.stats().done
        ? text
        : undefined;
    });
    stop.abort();
    for (const pipe of pipes) pipe.terminate();
    await within(20_000, "the pipelines' end", Promise.all(runs));
    const text = metricsText(pipes);
    for (const [name, staged] of METRICS) {
      assert.match(text, new RegExp(`^# TYPE ${name} (counter|gauge)$`, "m"));
      for (const pipe of pipes) {
        if (!staged) {
          assert.match(
            text,
            new RegExp(`^${name}\\{pipeline="${pipe.name}"\\} \\d`, "m"),
          );
          continue;
        }
        for (const stage of pipe.stats().stages) {
          assert.match(
            text,
            new RegExp(
              `^${name}\\{pipeline="${pipe.name}",stage="${stage.name}"\\} [\\d.e+-]+$`,
              "m",
            ),
          );
        }
      }
    }
    assert.match(
      text,
      /^mpipe_stage_workers\{pipeline="m-remote",stage="remote-stage"\} 1$/m,
    );
    // The histogram: a bucket per bound from 10 µs to 10 s and +Inf, its sum and count.
    assert.match(
      text,
      /^# TYPE mpipe_stage_task_duration_seconds histogram$/m,
    );
    for (const pipe of pipes) {
      for (const stage of pipe.stats().stages) {
        const series =
          `mpipe_stage_task_duration_seconds_bucket\\{pipeline="${pipe.name}",stage="${stage.name}"`;
        assert.match(text, new RegExp(`^${series},le="0.00001"\\} \\d+$`, "m"));
        assert.match(text, new RegExp(`^${series},le="10"\\} \\d+$`, "m"));
        assert.match(text, new RegExp(`^${series},le="\\+Inf"\\} \\d+$`, "m"));
      }
    }
    const slowCount = Number(
      /^mpipe_stage_task_duration_seconds_count\{pipeline="m-chain",stage="slow"\} (\d+)$/m
        .exec(text)?.[1],
    );
    assert.ok(slowCount > 0, "the slow stage's tasks are counted");
    const { code, out } = await promtool(text);
    assert.equal(code, 0, out);
  } finally {
    stop.abort();
    for (const pipe of pipes) pipe.terminate();
    await within(20_000, "the pipelines' end", Promise.all(runs));
  }
});

Deno.test("metricsText: repeated stage and pipeline names get distinct labels (promtool refuses duplicate series)", async () => {
  const same = () => {
    const a = new OrderedStage((x: number) => x, 1, { name: "step" });
    a.link(new OrderedStage((x: number) => x, 1, { name: "step" }));
    return new Pipeline<number, number>(a, { name: "twin" });
  };
  // A third pipeline is already named as the first would be renamed, and
  // its stage as the second's would be.
  const third = new OrderedStage((x: number) => x, 1, { name: "step" });
  third.link(new OrderedStage((x: number) => x, 1, { name: "step" }))
    .link(new OrderedStage((x: number) => x, 1, { name: "step (stage 2)" }));
  const pipes = [
    same(),
    same(),
    new Pipeline<number, number>(third, { name: "twin (1)" }),
  ];
  try {
    const text = metricsText(pipes);
    assert.match(
      text,
      /^mpipe_stage_tasks_total\{pipeline="twin \(2\)",stage="step \(stage 2\)"\} 0$/m,
    );
    assert.match(
      text,
      /^mpipe_stage_tasks_total\{pipeline="twin \(1\) #2",stage="step \(stage 1\)"\} 0$/m,
    );
    assert.match(
      text,
      /^mpipe_stage_tasks_total\{pipeline="twin \(1\)",stage="step \(stage 2\) #2"\} 0$/m,
    );
    const { code, out } = await promtool(text);
    assert.equal(code, 0, out);
  } finally {
    for (const pipe of pipes) {
      pipe.terminate();
      await pipe.done;
    }
  }
});

Deno.test({
  name:
    "the page in the real headless Chromium: every stage shown, tasks done advance, the slow stage marked, the failure's StageError in full",
  // puppeteer-core's connection and child process are its own; the test
  // closes the browser (or kills it) and checks the process has exited.
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const pipes = [
      slowChain("chain"),
      forkJoin("fork-join"),
      filtered("filter"),
      withRemote("remote"),
      failing("failing"),
      withRemote("remote-1", 1),
    ];
    // Named in markup: not in `pipes`, whose names the selectors below hold.
    const marked = markup();
    const stop = new AbortController();
    const runs = [...pipes, marked].map((pipe, i) =>
      keepFeeding(pipe, stop.signal, i === 0 ? 0 : 20)
    );
    const dashboard = serveDashboard([...pipes, marked]);
    const browser = await launchChromium();
    try {
      const page = await browser.newPage();
      page.setDefaultTimeout(20_000);
      // Nothing but the page and its event stream is requested.
      const requested: string[] = [];
      page.on("request", (request) => requested.push(request.url()));
      await page.goto(dashboard.url);
      await page.waitForSelector('section[data-pipeline="failing"] g.stage');
      const tasksOf = (pipeline: string, stage: string) =>
        page.$eval(
          `section[data-pipeline="${pipeline}"] g.stage[data-stage="${stage}"] .tasks`,
          (el) => Number(el.textContent!.replace(/,/g, "")),
        );
      // Every stage's name is shown, in its pipeline's graph.
      for (const pipe of pipes) {
        for (const stage of pipe.stats().stages) {
          const text = await page.$eval(
            `section[data-pipeline="${pipe.name}"] g.stage[data-stage="${stage.name}"] text.name`,
            (el) => el.textContent,
          );
          assert.ok(text!.startsWith(stage.name), `${pipe.name}/${stage.name}`);
        }
      }
      // The links are drawn: a fork and a join, and a filter's sub-pipeline (dashed).
      const links = (pipeline: string, dashed: boolean) =>
        page.$$eval(
          `section[data-pipeline="${pipeline}"] svg.graph path[marker-end]`,
          (els, dashed) =>
            els.filter((el) => el.hasAttribute("stroke-dasharray") === dashed)
              .length,
          dashed,
        );
      assert.equal(await links("fork-join", false), 4);
      assert.equal(await links("filter", false), 2); // filter → sink, check → enrich
      assert.equal(await links("filter", true), 1); // filter ⇢ check
      const remoteBox = await page.$eval(
        'section[data-pipeline="remote"] g.stage[data-stage="remote-stage"]',
        (el) => el.textContent,
      );
      assert.match(remoteBox!, /remote: 4 at once on its cluster/);
      // A remote stage of size 1 is remote too (one stand-in, as one local worker).
      assert.match(
        await page.$eval(
          'section[data-pipeline="remote-1"] g.stage[data-stage="remote-stage"]',
          (el) => el.textContent,
        ) ?? "",
        /remote: 1 at once on its cluster/,
      );
      // Names are shown as text, never run as markup.
      const shown = await page.$$eval("section.pipeline", (sections) => {
        const section = sections.find((el) =>
          el.getAttribute("data-pipeline")?.startsWith("<")
        );
        return {
          pipeline: section?.querySelector("h2")?.firstChild?.textContent,
          stage: section?.querySelector("g.stage")?.getAttribute("data-stage"),
          pwned: (globalThis as { pwned?: string }).pwned ?? null,
        };
      });
      assert.deepEqual(shown, {
        pipeline: `${MARKUP.pipeline} `,
        stage: MARKUP.stage,
        pwned: null,
      });
      // Tasks done advance.
      const before = await tasksOf("chain", "slow");
      await eventually(
        10_000,
        "the slow stage's tasks done advancing on the page",
        async () =>
          (await tasksOf("chain", "slow")) > before ? true : undefined,
      );
      // The slow stage is the one marked, with insights()' sentence.
      const marked = await eventually(
        15_000,
        "a stage of 'chain' marked as the bottleneck",
        () =>
          page.$$eval(
            'section[data-pipeline="chain"] g.stage.bottleneck',
            (els) =>
              els.length > 0 ? els.map((el) => el.dataset.stage) : undefined,
          ),
      );
      assert.deepEqual(marked, ["slow"]);
      const sentence = await page.$eval(
        'section[data-pipeline="chain"] .bottleneck-text',
        (el) => el.textContent,
      );
      assert.match(sentence!, /^Bottleneck: stage 'slow' held the run back\./);
      // And since when.
      const since = await page.$eval(
        'section[data-pipeline="chain"] .bottleneck-since',
        (el) => el.textContent,
      );
      assert.match(
        since!,
        /^'slow' has been marked since (before )?\d+\.\d s into the run/,
      );
      // The failure: its state, and its StageError in full.
      const error = await page.waitForSelector(
        'section[data-pipeline="failing"] pre.error',
      );
      const errorText = await error!.evaluate((el) => el.textContent!);
      assert.match(
        errorText,
        /^StageError: stage 'picky', worker 0, task 40: /,
      );
      assert.match(errorText, /bad input 40: expected fewer than 40/);
      assert.equal(
        await page.$eval(
          'section[data-pipeline="failing"] .state',
          (el) => el.textContent,
        ),
        "failed",
      );
      // The chart has a line per stage that did tasks, once it has two
      // samples (a loaded box may not have drawn it yet): waited for, bounded
      // by the page's default timeout.
      await page.waitForSelector(
        'section[data-pipeline="chain"] svg.chart polyline',
      );
      const origin = new URL(dashboard.url).origin;
      assert.deepEqual(
        requested.filter((url) => !url.startsWith(origin)),
        [],
        "the page requested something from elsewhere",
      );
    } finally {
      await closeChromium(browser);
      stop.abort();
      for (const pipe of [...pipes, marked]) pipe.terminate();
      await dashboard.close();
      await within(20_000, "the pipelines' end", Promise.all(runs));
    }
  },
});

Deno.test({
  name:
    "the real Prometheus scrapes /metrics every second: every series of a chain, a fork and a join, a FilterStage, a remote stage and a failed pipeline is there, and the counters increase",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const pipes = [
      slowChain("p-chain"),
      forkJoin("p-fork"),
      filtered("p-filter"),
      withRemote("p-remote"),
      failing("p-failing"),
    ];
    const stop = new AbortController();
    const runs = pipes.map((pipe, i) =>
      keepFeeding(pipe, stop.signal, i === 0 ? 0 : 20)
    );
    const dashboard = serveDashboard(() => pipes);
    const dir = await Deno.makeTempDir({ prefix: "mpipe-prometheus-" });
    const port = freePort();
    const target = new URL(dashboard.url).host;
    await Deno.writeTextFile(
      `${dir}/prometheus.yml`,
      [
        "global:",
        "  scrape_interval: 1s",
        "  evaluation_interval: 1s",
        "scrape_configs:",
        "  - job_name: mpipe",
        "    scrape_interval: 1s",
        "    scrape_timeout: 1s",
        "    static_configs:",
        `      - targets: ["${target}"]`,
        "",
      ].join("\n"),
    );
    const prometheus = new Deno.Command(PROMETHEUS, {
      args: [
        `--config.file=${dir}/prometheus.yml`,
        `--storage.tsdb.path=${dir}/data`,
        `--web.listen-address=127.0.0.1:${port}`,
        "--log.level=warn",
      ],
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const logs = new Response(prometheus.stderr).text();
    const api = `http://127.0.0.1:${port}`;
    const query = async (promql: string) => {
      const response = await fetch(
        `${api}/api/v1/query?query=${encodeURIComponent(promql)}`,
      );
      const body = await response.json() as {
        data: {
          result: { metric: Record<string, string>; value: [number, string] }[];
        };
      };
      return body.data.result;
    };
    const value = async (promql: string) => {
      const [series] = await query(promql);
      return series === undefined ? undefined : Number(series.value[1]);
    };
    try {
      await eventually(30_000, "Prometheus ready", async () => {
        const response = await fetch(`${api}/-/ready`);
        await response.body?.cancel();
        return response.ok ? true : undefined;
      });
      // Every series, for every pipeline (and stage).
      for (const [name, staged] of METRICS) {
        for (const pipe of pipes) {
          const expected = staged
            ? pipe.stats().stages.map((stage) => stage.name).sort()
            : [undefined];
          await eventually(
            20_000,
            `${name} of ${pipe.name} scraped`,
            async () => {
              const found = (await query(`${name}{pipeline="${pipe.name}"}`))
                .map((series) => series.metric.stage).sort();
              return JSON.stringify(found) === JSON.stringify(expected)
                ? true
                : undefined;
            },
          );
        }
      }
      // The counters increase from scrape to scrape.
      for (
        const promql of [
          'mpipe_stage_tasks_total{pipeline="p-chain",stage="slow"}',
          'mpipe_stage_busy_seconds_total{pipeline="p-chain",stage="slow"}',
          'mpipe_pipeline_results_read_total{pipeline="p-chain"}',
          'mpipe_stage_results_total{pipeline="p-fork",stage="merge"}',
          'mpipe_stage_task_duration_seconds_count{pipeline="p-chain",stage="slow"}',
        ]
      ) {
        const first = await eventually(10_000, promql, () => value(promql));
        await eventually(
          15_000,
          `${promql} increasing`,
          async () => ((await value(promql)) ?? 0) > first ? true : undefined,
        );
      }
      // The histogram, as a Grafana heatmap or quantile panel would ask it:
      // the slow stage's tasks take about 10 ms.
      const median = await eventually(
        15_000,
        "a median task duration",
        () =>
          value(
            'histogram_quantile(0.5, rate(mpipe_stage_task_duration_seconds_bucket{pipeline="p-chain",stage="slow"}[5s]))',
          ),
      );
      assert.ok(median > 0.005 && median <= 0.1, `median ${median} s`);
      // Prometheus sees the rate, as a Grafana panel would ask it.
      const rate = await eventually(
        15_000,
        "a rate",
        () =>
          value(
            'rate(mpipe_stage_tasks_total{pipeline="p-chain",stage="slow"}[5s])',
          ),
      );
      assert.ok(rate > 0, `rate ${rate}`);
    } catch (error) {
      prometheus.kill("SIGTERM");
      throw new Error(`${error}\nPrometheus' log:\n${await logs}`);
    } finally {
      try {
        prometheus.kill("SIGTERM");
      } catch { /* already ended */ }
      await within(15_000, "Prometheus' exit", prometheus.status).catch(() => {
        prometheus.kill("SIGKILL");
        return prometheus.status;
      });
      await logs;
      stop.abort();
      for (const pipe of pipes) pipe.terminate();
      await dashboard.close();
      await within(20_000, "the pipelines' end", Promise.all(runs));
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("dashboard.ts exports exactly serveDashboard and metricsText (and their types), each documented (deno doc)", async () => {
  const dashboard = await import("../dashboard.ts");
  assert.deepEqual(Object.keys(dashboard).sort(), [
    "metricsText",
    "serveDashboard",
  ]);
  const symbols = await docSymbols(new URL("../dashboard.ts", import.meta.url));
  assert.deepEqual(symbols.map((symbol) => symbol.name).sort(), [
    "Dashboard",
    "DashboardOptions",
    "PipelineSource",
    "metricsText",
    "serveDashboard",
  ]);
  for (const symbol of symbols) {
    assert.ok(
      symbol.declarations.some((d) => (d.jsDoc?.doc ?? "").trim() !== ""),
      `${symbol.name} has no documentation`,
    );
  }
});

Deno.test("the picture's layout: a stage right of those linked to it, a filter's sub-pipeline below the filter", async () => {
  const pipes = [forkJoin("l-fork"), filtered("l-filter")];
  try {
    const places = pipes.map((pipe) =>
      Object.fromEntries(
        layout(pipe.stats()).map((
          place,
          i,
        ) => [pipe.stats().stages[i]!.name, [place.column, place.row]]),
      )
    );
    assert.deepEqual(places[0], {
      split: [0, 0],
      double: [1, 0],
      negate: [1, 1],
      merge: [2, 0],
    });
    assert.deepEqual(places[1], {
      filter: [0, 0],
      check: [0, 1],
      enrich: [1, 1],
      sink: [1, 0],
    });
  } finally {
    for (const pipe of pipes) {
      pipe.terminate();
      await pipe.done;
    }
  }
});

Deno.test({
  name:
    "a pipeline with a remote stage on the real NATS JetStream and two worker hosts: its page in Chromium and its metrics",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const url = await natsUrl();
    try {
      await using cluster = await JetStreamCluster.connect(clusterOptions(url));
      await withHosts(url, ["dash-host-1", "dash-host-2"], async () => {
        const first = new OrderedStage((x: number) => x, 1, { name: "local" });
        const remote = new OrderedStage(
          async (x: number) => {
            await new Promise((resolve) => setTimeout(resolve, 5));
            return x * 3;
          },
          4,
          { name: "on-hosts", cluster },
        );
        const last = new OrderedStage((x: number) => x - 1, 1, {
          name: "after",
        });
        first.link(remote.link(last));
        const pipe = new Pipeline<number, number>(first, { name: "jet" });
        const stop = new AbortController();
        const run = keepFeeding(pipe, stop.signal, 20);
        const dashboard = serveDashboard(pipe);
        const browser = await launchChromium();
        try {
          const page = await browser.newPage();
          page.setDefaultTimeout(20_000);
          await page.goto(dashboard.url);
          const box =
            'section[data-pipeline="jet"] g.stage[data-stage="on-hosts"]';
          await page.waitForSelector(box);
          // Its hosts, once they answered: each that did, none other.
          const hosts = ["dash-host-1", "dash-host-2"];
          const shown = await eventually(
            20_000,
            "the remote stage's hosts on the page",
            async () => {
              const text = await page.$eval(
                `${box} text.small`,
                (el) => el.textContent,
              );
              return /^remote: 4 at once on dash-host-\d/.test(text ?? "")
                ? text
                : undefined;
            },
          );
          const answered = pipe.stats().stages[1]!.hosts;
          assert.ok(answered.length > 0, "stats() names no host");
          for (const host of answered) assert.ok(hosts.includes(host), host);
          assert.ok(
            answered.some((host) => shown!.includes(host)),
            `${shown} / ${answered}`,
          );
          const tasks = () =>
            page.$eval(
              `${box} .tasks`,
              (el) => Number(el.textContent!.replace(/,/g, "")),
            );
          const before = await tasks();
          await eventually(
            20_000,
            "the remote stage's tasks done advancing on the page",
            async () => (await tasks()) > before ? true : undefined,
          );
          const text = await (await fetch(new URL("metrics", dashboard.url)))
            .text();
          assert.match(
            text,
            /^mpipe_stage_workers\{pipeline="jet",stage="on-hosts"\} 1$/m,
          );
          const done = Number(
            /^mpipe_stage_tasks_total\{pipeline="jet",stage="on-hosts"\} (\d+)$/m
              .exec(text)?.[1],
          );
          assert.ok(done > 0, text);
          const { code, out } = await promtool(text);
          assert.equal(code, 0, out);
        } finally {
          await closeChromium(browser);
          stop.abort();
          await within(60_000, "the pipeline's end", run);
          await dashboard.close();
        }
      });
    } finally {
      await stopSharedServer();
    }
  },
});
