import assert from "node:assert/strict";
import {
  OrderedStage,
  OrderedWorker,
  Pipeline,
  PipelineClosedError,
  Stage,
  StageError,
  UnorderedStage,
} from "../mod.ts";
import { within } from "./support/bounded.ts";

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}

const double = (x: number) => x * 2;

/** A stage whose task `x === 3` throws. */
function failingAt3() {
  return new OrderedStage(
    (x: number) => {
      if (x === 3) throw new Error("three");
      return x;
    },
    1,
    { name: "picky" },
  );
}

// ---- writable and readable ----

Deno.test("Pipeline.writable and .readable are the same streams every time", async () => {
  await using pipe = new Pipeline(new OrderedStage(double));
  assert.equal(pipe.writable, pipe.writable);
  assert.equal(pipe.readable, pipe.readable);
  await pipe.close();
  assert.deepEqual(await Array.fromAsync(pipe.readable), []);
});

Deno.test("source.pipeThrough(pipe).pipeTo(sink) carries every result in order", async () => {
  const pipe = new Pipeline(new OrderedStage(double, 2));
  const seen: number[] = [];
  await ReadableStream.from(range(1000)).pipeThrough(pipe).pipeTo(
    new WritableStream({ write: (x) => void seen.push(x) }),
  );
  assert.deepEqual(seen, range(1000).map(double));
  await pipe.done;
});

Deno.test("a chain of pipelines through pipeThrough", async () => {
  const first = new Pipeline(new OrderedStage((x: number) => x + 1));
  const second = new Pipeline(new UnorderedStage(double, 2));
  const results = await Array.fromAsync(
    ReadableStream.from(range(100)).pipeThrough(first).pipeThrough(second),
  );
  assert.deepEqual(
    results.sort((a, b) => a - b),
    range(100).map((x) => (x + 1) * 2),
  );
  await Promise.all([first.done, second.done]);
});

Deno.test("Pipeline.writable: backpressure: writes wait while the pipeline is full, and none is lost", async () => {
  const pipe = new Pipeline(
    new OrderedStage(
      async (x: number) => {
        await new Promise((resolve) => setTimeout(resolve, 1));
        return x;
      },
      1,
      { maxBacklog: 2 },
    ),
  );
  const writer = pipe.writable.getWriter();
  const reading = Array.fromAsync(pipe.readable);
  let sawFull = false;
  for (let i = 0; i < 50; i++) {
    await writer.ready;
    if (writer.desiredSize !== null && writer.desiredSize <= 0) sawFull = true;
    writer.write(i);
    if (writer.desiredSize === 0) sawFull = true;
  }
  await writer.close();
  assert.deepEqual(await reading, range(50));
  assert.ok(sawFull, "desiredSize never showed a full pipeline");
  await pipe.done;
});

Deno.test("Pipeline.writable.close() is the stop request; close() after it resolves too", async () => {
  const pipe = new Pipeline(new OrderedStage(double));
  const writer = pipe.writable.getWriter();
  await writer.write(1);
  await writer.close();
  await pipe.close();
  assert.deepEqual(await Array.fromAsync(pipe), [2]);
  await pipe.done;
});

Deno.test("Pipeline.writable.abort() terminates the pipeline; readers get its reason", async () => {
  const pipe = new Pipeline(new OrderedStage(double));
  const writer = pipe.writable.getWriter();
  await writer.write(1);
  const reason = new Error("enough");
  await writer.abort(reason);
  await pipe.done;
  await assert.rejects(pipe.get(), (error) => error === reason);
  await assert.rejects(Array.fromAsync(pipe), (error) => error === reason);
  await assert.rejects(pipe.put(2), PipelineClosedError);
});

Deno.test("pipeThrough(pipe, { signal }): an abort aborts the destination with its reason (the readable errors, as a TransformStream's does)", async () => {
  const controller = new AbortController();
  const reason = new Error("enough");
  let aborted: unknown = "not aborted";
  let closed = false;
  let written = 0;
  const source = new ReadableStream<number>({
    pull: (c) => c.enqueue(written),
  });
  const pipe = new Pipeline(new OrderedStage(double));
  const sink = new WritableStream<number>({
    write: () => {
      if (++written === 100) controller.abort(reason);
    },
    close: () => void (closed = true),
    abort: (why) => void (aborted = why),
  });
  await assert.rejects(
    source.pipeThrough(pipe, { signal: controller.signal }).pipeTo(sink),
    (error) => error === reason,
  );
  assert.equal(aborted, reason);
  assert.equal(closed, false);
  await pipe.done;
});

Deno.test("Pipeline.writable.abort(reason) errors the readable with it; readable.cancel(reason) errors the writable", async () => {
  for (const read of ["reader", "for await"]) {
    const pipe = new Pipeline(new OrderedStage(double));
    const reason = new Error("aborted");
    const writer = pipe.writable.getWriter();
    await writer.write(1);
    await writer.abort(reason);
    const reading = read === "reader"
      ? pipe.readable.getReader().read()
      : Array.fromAsync(pipe.readable);
    await assert.rejects(reading, (error) => error === reason);
  }
  const pipe = new Pipeline(new OrderedStage(double));
  const reason = new Error("cancelled");
  const writer = pipe.writable.getWriter();
  await pipe.readable.cancel(reason);
  await assert.rejects(writer.write(1), (error) => error === reason);
});

Deno.test("Pipeline.writable errors with the StageError when the pipeline fails", async () => {
  const pipe = new Pipeline(failingAt3());
  const writer = pipe.writable.getWriter();
  for (let i = 0; i < 5; i++) writer.write(i).catch(() => {});
  await assert.rejects(pipe.done, StageError);
  await assert.rejects(writer.ready, StageError);
  await assert.rejects(writer.write(9), StageError);
});

Deno.test("Pipeline.readable errors with the StageError when the pipeline fails", async () => {
  const pipe = new Pipeline(failingAt3());
  pipe.feed(range(10)).catch(() => {});
  await assert.rejects(Array.fromAsync(pipe.readable), (error: unknown) => {
    assert.ok(error instanceof StageError);
    assert.equal(error.stage, "picky");
    return true;
  });
});

Deno.test("Pipeline.readable.cancel() terminates the pipeline", async () => {
  const pipe = new Pipeline(new OrderedStage(double));
  pipe.feed(range(10), { close: false }).catch(() => {});
  const reader = pipe.readable.getReader();
  assert.deepEqual(await reader.read(), { value: 0, done: false });
  await reader.cancel(new Error("enough"));
  await pipe.done;
  await assert.rejects(pipe.put(1), PipelineClosedError);
});

Deno.test("Pipeline.readable and results() divide the results between them", async () => {
  const pipe = new Pipeline(new OrderedStage(double));
  await pipe.feed(range(200));
  const reader = pipe.readable.getReader();
  const first = await reader.read();
  reader.releaseLock();
  const rest = await Array.fromAsync(pipe.results());
  const streamed = await Array.fromAsync(pipe.readable);
  const all = [first.value!, ...rest, ...streamed].sort((a, b) => a - b);
  assert.deepEqual(all, range(200).map(double));
});

/** Counts its tasks on a shared word and returns a 1 KiB result. */
class Counting extends OrderedWorker<number, Uint8Array> {
  words: Int32Array;
  constructor(words: Int32Array) {
    super();
    this.words = words;
  }
  doTask(task: number) {
    Atomics.add(this.words, 0, 1);
    return new Uint8Array(1024).fill(task & 255);
  }
}

// `for await` over the readable reads the results directly (see ResultStream):
// what the stream had read ahead, or was reading, must come first and once.
Deno.test("for await over Pipeline.readable: every result once, in order, after those the stream read ahead", async () => {
  for (const size of [1, 300, 5000]) {
    const pipe = new Pipeline(new OrderedStage(double, 2));
    const readable = pipe.readable; // its first pull waits for a result now
    const feeding = pipe.feed(range(size));
    const reader = readable.getReader();
    const first = await reader.read();
    reader.releaseLock();
    const rest: number[] = [];
    for await (const value of readable) rest.push(value);
    await feeding;
    await pipe.done;
    assert.deepEqual([first.value, ...rest], range(size).map(double));
  }
});

Deno.test("for await over Pipeline.readable: a result its pending pull took comes first", async () => {
  for (const size of [1, 2, 1000]) {
    const pipe = new Pipeline(new OrderedStage(double, 2));
    const readable = pipe.readable;
    await new Promise((resolve) => setTimeout(resolve, 10)); // the pull waits
    const reading = Array.fromAsync(readable);
    await pipe.feed(range(size));
    assert.deepEqual(await reading, range(size).map(double));
  }
});

Deno.test("for await over Pipeline.readable: a break cancels the stream and terminates the pipeline", async () => {
  const pipe = new Pipeline(new OrderedStage(double));
  pipe.feed(range(1000), { close: false }).catch(() => {});
  for await (const value of pipe.readable) if (value === 20) break;
  await pipe.done;
  await assert.rejects(pipe.put(1), PipelineClosedError);
});

Deno.test("Pipeline.readable.values({ preventCancel: true }): a break leaves the rest to read", async () => {
  const pipe = new Pipeline(new OrderedStage(double));
  const feeding = pipe.feed(range(1000));
  const head: number[] = [];
  for await (const value of pipe.readable.values({ preventCancel: true })) {
    head.push(value);
    if (head.length === 10) break;
  }
  const tail = await Array.fromAsync(pipe.readable);
  await feeding;
  assert.deepEqual([...head, ...tail], range(1000).map(double));
});

Deno.test("for await over Pipeline.readable: a return() during a pending next() waits for it, as the stream's own iterator does", async () => {
  const pipe = new Pipeline(new OrderedStage(double));
  const iterator = pipe.readable[Symbol.asyncIterator]();
  const next = iterator.next();
  const returned = iterator.return!();
  await pipe.put(1);
  assert.deepEqual(await next, { value: 2, done: false });
  assert.deepEqual(await returned, { value: undefined, done: true });
  assert.deepEqual(await iterator.next(), { value: undefined, done: true });
  await pipe.done; // the return cancelled the stream: the pipeline ended
});

Deno.test("for await over Pipeline.readable: its iterator is async-disposable (await using cancels)", async () => {
  const pipe = new Pipeline(new OrderedStage(double));
  pipe.feed(range(10), { close: false });
  {
    await using iterator = pipe.readable.values() as
      & AsyncIterableIterator<number>
      & AsyncDisposable;
    assert.deepEqual(await iterator.next(), { value: 0, done: false });
  }
  await pipe.done;
  await assert.rejects(pipe.put(1), PipelineClosedError);
});

Deno.test("Pipeline.readable: for await over a locked stream throws a TypeError", () => {
  const pipe = new Pipeline(new OrderedStage(double));
  const reader = pipe.readable.getReader();
  assert.throws(() => pipe.readable.values(), TypeError);
  reader.releaseLock();
  pipe.terminate();
});

Deno.test("Pipeline.readable: a slow reader holds the results back in the rings (the workers wait)", async () => {
  // 4 KiB rings and 1 KiB results: before the reader reads on, the worker
  // can finish only what the rings and the stream's read-ahead (256) hold.
  const words = new Int32Array(new SharedArrayBuffer(4));
  const pipe = new Pipeline(new Stage(Counting, 1, { args: [words] }), {
    ringBytes: 4096,
  });
  const fed = pipe.feed(range(2000));
  const reader = pipe.readable.getReader();
  await reader.read();
  // Let the worker run as far as it can.
  for (let last = -1; last !== Atomics.load(words, 0);) {
    last = Atomics.load(words, 0);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  const ran = Atomics.load(words, 0);
  assert.ok(
    ran < 400,
    `the worker ran ${ran} tasks ahead of a reader that read 1`,
  );
  let count = 1;
  while (!(await reader.read()).done) count++;
  await fed;
  assert.equal(count, 2000);
  await pipe.done;
});

// ---- feed ----

Deno.test("Pipeline.feed() puts an iterable, an async iterable and a ReadableStream, in order, then the stop", async () => {
  async function* numbers() {
    for (let i = 0; i < 300; i++) yield i;
  }
  const sources = [
    () => range(300),
    () => numbers(),
    () => ReadableStream.from(range(300)),
  ];
  for (const source of sources) {
    const pipe = new Pipeline(new OrderedStage(double, 2));
    const fed = pipe.feed(source());
    assert.deepEqual(await Array.fromAsync(pipe), range(300).map(double));
    await fed;
    await pipe.done;
  }
});

Deno.test("Pipeline.feed({ close: false }) leaves the pipeline open for more", async () => {
  const pipe = new Pipeline(new OrderedStage(double));
  await pipe.feed([1, 2], { close: false });
  await pipe.feed([3]);
  assert.deepEqual(await Array.fromAsync(pipe), [2, 4, 6]);
});

Deno.test("Pipeline.feed() rejects with the pipeline's failure, then closes the source's iterator", async () => {
  let returned = false;
  const source = {
    i: 0,
    [Symbol.iterator]() {
      return this;
    },
    next() {
      return { value: this.i++, done: false };
    },
    return() {
      returned = true;
      return { value: undefined, done: true as const };
    },
  };
  const pipe = new Pipeline(failingAt3());
  const reading = Array.fromAsync(pipe).catch((error) => error);
  await assert.rejects(pipe.feed(source), StageError);
  assert.ok(returned, "the source's return() was not called");
  assert.ok(await reading instanceof StageError);
});

Deno.test("Pipeline.feed({ signal }) stops feeding and closes the source; the tasks already put stay", async () => {
  const controller = new AbortController();
  async function* endless() {
    try {
      for (let i = 0;; i++) {
        if (i === 50) controller.abort(new Error("stop feeding"));
        yield i;
      }
    } finally {
      closed = true;
    }
  }
  let closed = false;
  const pipe = new Pipeline(new OrderedStage(double));
  await assert.rejects(
    pipe.feed(endless(), { signal: controller.signal }),
    /stop feeding/,
  );
  assert.ok(closed, "the source was not closed");
  await pipe.close();
  const results = await Array.fromAsync(pipe);
  assert.deepEqual(results, range(results.length).map(double));
  assert.ok(results.length >= 50);
});

Deno.test("Pipeline.feed({ signal }): an abort while the source is slow to yield ends feed at once and cancels a stream source", async () => {
  let cancelled: unknown = "not cancelled";
  const silent = new ReadableStream<number>({
    cancel: (reason) => void (cancelled = reason),
  });
  let released!: () => void;
  const stalled = new Promise<void>((resolve) => released = resolve);
  async function* quiet() {
    await stalled; // yields nothing until the test ends
    yield 0;
  }
  for (const source of [silent, quiet()]) {
    const pipe = new Pipeline(new OrderedStage(double));
    const controller = new AbortController();
    const feeding = pipe.feed(source, { signal: controller.signal });
    setTimeout(() => controller.abort(new Error("enough")), 20);
    await assert.rejects(feeding, /enough/);
    pipe.terminate();
  }
  assert.equal(cancelled, undefined);
  assert.equal(silent.locked, false);
  released();
});

Deno.test("Pipeline.feed({ signal }) with a signal aborted already rejects with its reason and cancels a stream source", async () => {
  let cancelled = false;
  const source = new ReadableStream<number>({
    start: (controller) => controller.enqueue(1),
    cancel: () => void (cancelled = true),
  });
  const pipe = new Pipeline(new OrderedStage(double));
  const reason = new Error("aborted before");
  await assert.rejects(
    pipe.feed(source, { signal: AbortSignal.abort(reason) }),
    (error) => error === reason,
  );
  assert.ok(cancelled);
  assert.equal(source.locked, false);
  await pipe.close();
  assert.deepEqual(await Array.fromAsync(pipe), []);
});

Deno.test("Pipeline.feed(otherPipe.readable) chains two pipelines", async () => {
  const first = new Pipeline(new OrderedStage(double));
  const second = new Pipeline(new OrderedStage(double));
  first.feed(range(3000));
  await second.feed(first.readable);
  assert.deepEqual(
    await Array.fromAsync(second),
    range(3000).map((x) => 4 * x),
  );
});

Deno.test("Pipeline.feed() refuses a source that is not iterable, and bad options", async () => {
  const pipe = new Pipeline(new OrderedStage(double));
  await assert.rejects(pipe.feed(42 as never), TypeError);
  await assert.rejects(pipe.feed([], { closed: true } as never), TypeError);
  pipe.terminate();
  await pipe.done;
});

Deno.test("Pipeline.feed() does not hang on a throw while the pipeline is throttled (a full backlog)", async () => {
  const pipe = new Pipeline(
    new OrderedStage(
      async (x: number) => {
        await new Promise((resolve) => setTimeout(resolve, 2));
        if (x === 20) throw new Error("twenty");
        return x;
      },
      1,
      { maxBacklog: 1, name: "throttled" },
    ),
  );
  const fed = pipe.feed(range(1000));
  await assert.rejects(Array.fromAsync(pipe.readable), StageError);
  await assert.rejects(fed, StageError);
});

// ---- a source that fails, or a pipeline that ends under a pending step ----

Deno.test("Pipeline.feed(): a source that throws ends the pipeline: every reader rejects with its error (issue 21.2)", async () => {
  const broke = new Error("source broke");
  function* source() {
    for (let i = 0; i < 100; i++) {
      if (i === 50) throw broke;
      yield i;
    }
  }
  for (const read of ["results", "readable", "get"] as const) {
    const pipe = new Pipeline(new OrderedStage(double));
    const fed = pipe.feed(source());
    const reading: Promise<unknown> = read === "results"
      ? Array.fromAsync(pipe)
      : read === "readable"
      ? Array.fromAsync(pipe.readable)
      : (async () => {
        while (await pipe.get() !== null);
      })();
    await assert.rejects(within(fed, `feed (${read})`), (e) => e === broke);
    await assert.rejects(
      within(reading, `the reader (${read})`),
      (e) => e === broke,
    );
    await within(pipe.done, `done (${read})`);
    await assert.rejects(pipe.put(1), PipelineClosedError);
  }
});

Deno.test("Pipeline.feed(): an item that cannot be cloned ends the pipeline with its DataCloneError", async () => {
  const pipe = new Pipeline(new OrderedStage((x: unknown) => x));
  const fed = pipe.feed([1, 2, () => 3, 4]);
  const reading = Array.fromAsync(pipe);
  await assert.rejects(within(fed, "feed"), { name: "DataCloneError" });
  await assert.rejects(within(reading, "the reader"), {
    name: "DataCloneError",
  });
});

Deno.test("Pipeline.writable: a chunk that cannot be cloned errors the stream and ends the pipeline with its DataCloneError", async () => {
  const pipe = new Pipeline(new OrderedStage((x: unknown) => x));
  const reading = Array.fromAsync(pipe);
  await assert.rejects(
    within(
      ReadableStream.from([1, 2, () => 3, 4]).pipeTo(pipe.writable),
      "pipeTo",
    ),
    { name: "DataCloneError" },
  );
  await assert.rejects(within(reading, "the reader"), {
    name: "DataCloneError",
  });
});

Deno.test("b.feed(a.readable) when a fails: b ends with a's StageError (issue 21.2)", async () => {
  const a = new Pipeline(failingAt3());
  const b = new Pipeline(new OrderedStage(double));
  a.feed(range(100)).catch(() => {}); // it may have ended before the failure
  const fed = b.feed(a.readable);
  const reading = Array.fromAsync(b);
  await assert.rejects(within(fed, "b.feed"), StageError);
  await assert.rejects(within(reading, "b's reader"), StageError);
  await within(b.done, "b.done");
});

Deno.test("Pipeline.feed(): terminate() or a failure while the source is slow to yield ends feed at once and cancels a stream source (issue 21.3)", async () => {
  let released!: () => void;
  const stalled = new Promise<void>((resolve) => released = resolve);
  async function* quiet() {
    yield 3; // fails the picky stage, for the failure case
    await stalled; // then yields nothing until the test ends
    yield 4;
  }
  /** Feeds `source` to a pipeline that ends while the source is quiet. */
  const endWhileQuiet = async (
    end: "terminate" | "failure",
    source: AsyncIterable<number> | ReadableStream<number>,
  ) => {
    const pipe = new Pipeline(
      end === "terminate" ? new OrderedStage(double) : failingAt3(),
    );
    const reading = (async () => {
      while (await pipe.get() !== null);
      return null;
    })().catch((error) => error);
    const fed = pipe.feed(source);
    if (end === "terminate") setTimeout(() => pipe.terminate(), 20);
    await assert.rejects(
      within(fed, `feed (${end})`),
      end === "terminate" ? PipelineClosedError : StageError,
    );
    const read = await within(reading, "the reader");
    if (end === "terminate") assert.equal(read, null);
    else assert.ok(read instanceof StageError);
    await within(pipe.done, "done");
  };
  for (const end of ["terminate", "failure"] as const) {
    let cancelled = false;
    const silent = new ReadableStream<number>({
      start: (controller) => controller.enqueue(3),
      cancel: () => void (cancelled = true),
    });
    await endWhileQuiet(end, silent);
    assert.ok(cancelled, `${end}: the stream source was not cancelled`);
    assert.equal(silent.locked, false);
    await endWhileQuiet(end, quiet());
    // Another pipeline's readable, with nothing to read yet: it is cancelled
    // (its pipeline terminated) as any stream is.
    const quietPipe = new Pipeline(new OrderedStage(double));
    quietPipe.put(1.5).catch(() => {}); // 3, which fails the picky stage
    await endWhileQuiet(end, quietPipe.readable);
    await within(quietPipe.done, "the source pipeline's done");
    await assert.rejects(quietPipe.put(1), PipelineClosedError);
  }
  released();
});

Deno.test("Pipeline.readable.pipeTo(sink): a sink that errors while the pipeline is quiet ends the pipeline at once; a failure aborts the sink", async () => {
  const pipe = new Pipeline(new OrderedStage(double));
  const reason = new Error("sink broke");
  let sinkController!: WritableStreamDefaultController;
  const sink = new WritableStream({ start: (c) => void (sinkController = c) });
  const piping = pipe.readable.pipeTo(sink);
  setTimeout(() => sinkController.error(reason), 20);
  await assert.rejects(within(piping, "pipeTo"), (e) => e === reason);
  await within(pipe.done, "done");
  await assert.rejects(pipe.put(1), PipelineClosedError);

  const failing = new Pipeline(failingAt3());
  let aborted: unknown = null;
  failing.feed(range(10)).catch(() => {});
  await assert.rejects(
    within(
      failing.readable.pipeTo(
        new WritableStream({ abort: (why) => void (aborted = why) }),
      ),
      "pipeTo",
    ),
    StageError,
  );
  assert.ok(aborted instanceof StageError);
});

// ---- HTTP: a stage that fails during an upload (issue 21.4) ----

/** Splits a text stream into lines. */
function lineSplitter(): TransformStream<string, string> {
  let rest = "";
  return new TransformStream({
    transform(chunk, controller) {
      const lines = (rest + chunk).split("\n");
      rest = lines.pop()!;
      for (const line of lines) controller.enqueue(line);
    },
    flush(controller) {
      if (rest !== "") controller.enqueue(rest);
    },
  });
}

// Deno's bug, not MPipe's, so the first two tests below are skipped; run them
// with MPIPE_HTTP_REPRO=1 (they pass with Deno 2.8.2, the last release that
// served HTTP/1.1 with hyper, and will once Deno is fixed). The error reaches
// every stream: the writable errors, the upload's pipeTo cancels the request
// body, the readable and the response body error. But on a response body
// error, Deno's own HTTP/1.1 server (the default since 2.8.3; seen with
// 2.9.6) returns without
// closing the connection, which it shares with the request body, and a read
// of the body that waits for the client's bytes at that moment holds it for
// ever: no one wakes that read again (the response writer, which forwarded the
// socket's wake-ups to it, is gone), and cancelling the body does not cancel
// its read. The pipeline's writable takes chunks at once and a stage fails
// later, in a worker, so such a read usually waits then; a TransformStream
// whose transform throws fails while no read waits.
// tests/fixtures/http_parked_read.ts is the case without MPipe; README "Over
// HTTP" gives the workaround, which the third test checks.
const SKIP_HTTP_REPRO = Deno.env.get("MPIPE_HTTP_REPRO") === undefined;

Deno.test({
  name:
    "HTTP (Deno): a streamed response that errors while a request body read waits ends",
  ignore: SKIP_HTTP_REPRO,
  async fn() {
    const run = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-net",
        new URL("./fixtures/http_parked_read.ts", import.meta.url).pathname,
      ],
      stdout: "piped",
      stderr: "piped",
    });
    // The fixture bounds its own wait (3 s) and exits 1 on a hang.
    const { code, stdout } = await within(run.output(), "the fixture", 20_000);
    assert.equal(code, 0, new TextDecoder().decode(stdout));
  },
});

/**
 * Uploads 50 MB of JSON lines to a server whose handler sends the lines
 * through a pipeline whose stage fails at line 1000, the results wrapped by
 * `respond`; returns the response's text once it ends (or rejects if it ends
 * with an error), and how much of the upload was sent.
 */
async function failingUpload(
  respond: (results: ReadableStream<string>) => ReadableStream<string>,
): Promise<{ text: Promise<string>; sent: number }> {
  const server = Deno.serve(
    {
      hostname: "127.0.0.1",
      port: 0,
      onListen() {},
      onError: () => new Response(null, { status: 500 }),
    },
    (request) => {
      const pipe = new Pipeline(
        new OrderedStage((line: string) => {
          if (line.includes('"id":1000,')) throw new Error("bad line");
          return line.toUpperCase() + "\n";
        }, 2),
      );
      pipe.done.catch(() => {});
      const results = request.body!.pipeThrough(new TextDecoderStream())
        .pipeThrough(lineSplitter()).pipeThrough(pipe);
      return new Response(
        respond(results).pipeThrough(new TextEncoderStream()),
      );
    },
  );
  const encoder = new TextEncoder();
  let id = 0;
  let sent = 0;
  const upload = new ReadableStream<Uint8Array>({
    pull(controller) {
      if (sent >= 50e6) return controller.close();
      let text = "";
      for (let i = 0; i < 100; i++) {
        text += JSON.stringify({ id: id++, pad: "x".repeat(60) }) + "\n";
      }
      const bytes = encoder.encode(text);
      sent += bytes.length;
      controller.enqueue(bytes);
    },
  });
  const aborter = new AbortController();
  const text = (async () => {
    const response = await fetch(`http://127.0.0.1:${server.addr.port}/`, {
      method: "POST",
      body: upload,
      signal: aborter.signal,
    });
    return await response.text();
  })();
  text.catch(() => {});
  try {
    await within(text.catch(() => {}), "the response", 20_000);
  } finally {
    aborter.abort();
    await within(server.shutdown(), "server.shutdown", 10_000);
  }
  return { text, sent };
}

Deno.test({
  name:
    "HTTP: a stage that fails during a large upload ends the response (issue 21.4)",
  ignore: SKIP_HTTP_REPRO,
  async fn() {
    // It must end, either way (an error is what curl and fetch get from the
    // same handler without the pipeline), and not after the whole upload:
    // the stage failed at line 1000.
    const { sent } = await failingUpload((results) => results);
    assert.ok(sent < 50e6, "the whole upload was sent");
  },
});

Deno.test("HTTP: the failure as the last line ends the response (README's workaround for issue 21.4)", async () => {
  const { text } = await failingUpload((results) => {
    const reader = results.getReader();
    return new ReadableStream<string>({
      async pull(controller) {
        try {
          const { done, value } = await reader.read();
          if (done) controller.close();
          else controller.enqueue(value);
        } catch (error) {
          controller.enqueue(JSON.stringify({ error: String(error) }) + "\n");
          controller.close();
        }
      },
      cancel: (reason) => reader.cancel(reason),
    });
  });
  // It ended (failingUpload waits for that). Deno 2.9.6 ends it normally,
  // with the failure as the last line; a server that closes the connection
  // rather than read the rest of the upload (Deno 2.8.2 did) breaks it.
  const body = await text.then((text) => text, () => null);
  if (body === null) return;
  const lines = body.trimEnd().split("\n");
  assert.match(
    lines.at(-1)!,
    /"error":"StageError: .*task 1000 failed: bad line"/,
  );
  // At most the results of the 1,000 tasks before the failing one (all of
  // them when the reader takes them before the failure reaches it), then the
  // failure: nothing from task 1000 on.
  assert.ok(lines.length <= 1001, `${lines.length} lines`);
  assert.ok(
    !lines.some((line) => line.includes('"ID":1000,')),
    "no result of the failing task",
  );
});

Deno.test("Pipeline.feed(): two feeds that both close: the one still feeding when the other puts the stop rejects with a PipelineClosedError that names { close: false }", async () => {
  const pipe = new Pipeline<number, number>(
    new UnorderedStage((x: number) => x, 2),
  );
  async function* slow() {
    for (let i = 0; i < 5; i++) {
      await new Promise((resolve) => setTimeout(resolve, 5));
      yield 100 + i;
    }
  }
  const first = pipe.feed([1, 2, 3]);
  const second = assert.rejects(
    within(pipe.feed(slow()), "the second feed"),
    (error) =>
      error instanceof PipelineClosedError &&
      /close: false/.test(error.message),
  );
  // The refused put ends the pipeline (as a feed's item that cannot be put
  // does), unless the reader had already read to the end: either is loud.
  const reading = within(Array.fromAsync(pipe), "the reader").then(
    (results) => assert.deepEqual(results.sort((a, b) => a - b), [1, 2, 3]),
    (error) => assert.ok(error instanceof PipelineClosedError, String(error)),
  );
  await first;
  await second;
  await reading;
  await within(pipe.done, "done");
});
