/**
 * The dashboard's HTTP server (`Deno.serve`): `GET /` the page, `GET /events`
 * the figures as Server-Sent Events (2.5 times a second), `GET /metrics`
 * the Prometheus text. Each request reads the pipelines' figures anew (what
 * `stats()` reads); nothing runs between requests but each open event
 * stream's timer, and `close()` ends those streams, so a closed server keeps
 * nothing alive.
 *
 * @module
 */

import {
  checkName,
  checkObject,
  checkOptionNames,
  checkSignal,
  describe,
} from "../checks.ts";
import { METRICS_CONTENT_TYPE, metricsOf } from "./metrics.ts";
import { pipelinesOf, type PipelineSource, viewsOf } from "./model.ts";
import { PAGE } from "./page.ts";

/**
 * Ms between two event messages: more than twice a second, and no more
 * often, since a browser on the same machine redraws the page at each and
 * takes that CPU from the workers (bench/dashboard_ab.ts).
 */
export const EVENT_INTERVAL_MS = 400;

/**
 * Options of `serveDashboard`.
 *
 * @example Serve on a chosen port, with a token
 * ```ts
 * import { type DashboardOptions, serveDashboard } from "@mpipe/mpipe/dashboard";
 * import { OrderedStage, Pipeline } from "@mpipe/mpipe";
 * import assert from "node:assert/strict";
 *
 * const options: DashboardOptions = { port: 0, token: "s3cret" };
 * const pipe = new Pipeline(new OrderedStage((x: number) => x));
 * await using dashboard = serveDashboard(pipe, options);
 * const response = await fetch(new URL("metrics", dashboard.url));
 * assert.equal(response.status, 401);
 * await response.body?.cancel();
 * await pipe.feed([1]);
 * await Array.fromAsync(pipe);
 * ```
 */
export interface DashboardOptions {
  /**
   * The address to listen on. Anything but loopback (`127.0.0.1`,
   * `localhost`, `::1`) needs a `token`, since the page shows your tasks'
   * errors to whoever reaches it.
   * @default {"127.0.0.1"}
   */
  hostname?: string;
  /**
   * The port; 0 takes any free one (see `url`).
   * @default {0}
   */
  port?: number;
  /** Closes the server when it aborts. */
  signal?: AbortSignal;
  /** If set, every request needs `Authorization: Bearer <token>` or `?token=<token>`. */
  token?: string;
}

/**
 * A running dashboard: `serveDashboard`'s result.
 *
 * @example Read the metrics of a running dashboard
 * ```ts
 * import { type Dashboard, serveDashboard } from "@mpipe/mpipe/dashboard";
 * import { OrderedStage, Pipeline } from "@mpipe/mpipe";
 * import assert from "node:assert/strict";
 *
 * const pipe = new Pipeline(new OrderedStage((x: number) => x), { name: "echo" });
 * const dashboard: Dashboard = serveDashboard(pipe);
 * await pipe.feed([1, 2]);
 * await Array.fromAsync(pipe);
 * const text = await (await fetch(new URL("metrics", dashboard.url))).text();
 * assert.match(text, /mpipe_pipeline_tasks_put_total\{pipeline="echo"\} 2/);
 * await dashboard.close();
 * ```
 */
export interface Dashboard extends AsyncDisposable {
  /** The page's address, ending with `/` (e.g. `http://127.0.0.1:8080/`). */
  readonly url: string;
  /** Settles once the server has closed (by `close()`, the signal, or disposal). */
  readonly finished: Promise<void>;
  /**
   * Closes the server: ends the open event streams and stops listening.
   *
   * @returns A Promise that settles as `finished` does.
   */
  close(): Promise<void>;
}

/** Checks `options` and returns them with their defaults. */
function checkOptions(
  options: unknown,
): Required<Omit<DashboardOptions, "signal" | "token">> & DashboardOptions {
  checkOptionNames(
    "serveDashboard",
    checkObject("serveDashboard", "options", options),
    ["hostname", "port", "signal", "token"],
  );
  const { hostname = "127.0.0.1", port = 0, signal, token } =
    options as DashboardOptions;
  checkName("serveDashboard", "options.hostname", hostname);
  if (
    typeof port !== "number" || !Number.isInteger(port) || port < 0 ||
    port > 65535
  ) {
    throw new RangeError(
      `serveDashboard: 'options.port' must be an integer from 0 to 65535, got ${
        describe(port)
      }`,
    );
  }
  checkSignal("serveDashboard", "options.signal", signal);
  checkName("serveDashboard", "options.token", token);
  if (token === undefined && !isLoopback(hostname)) {
    throw new TypeError(
      `serveDashboard: serving on '${hostname}', which is not loopback, needs 'options.token': the page and the metrics show your tasks' errors and figures to whoever reaches them`,
    );
  }
  return { hostname, port, signal, token };
}

/** Whether `hostname` only reaches this machine. */
export function isLoopback(hostname: string): boolean {
  const host = hostname.toLowerCase();
  return host === "localhost" || host === "::1" || host === "[::1]" ||
    /^127(\.\d{1,3}){3}$/.test(host);
}

/** Serves the dashboard of `source` (see `serveDashboard`). */
export function serve(source: PipelineSource, options: unknown): Dashboard {
  const { hostname, port, signal, token } = checkOptions(options);
  signal?.throwIfAborted();
  const streams = new Set<() => void>();
  const authorized = (request: Request) => {
    if (token === undefined) return true;
    const header = request.headers.get("authorization");
    const given = header?.startsWith("Bearer ")
      ? header.slice(7)
      : new URL(request.url).searchParams.get("token");
    return given !== null && sameText(given, token);
  };
  const server = Deno.serve({
    hostname,
    port,
    onListen: () => {},
    handler: (request) => {
      if (request.method !== "GET" && request.method !== "HEAD") {
        return new Response("method not allowed\n", {
          status: 405,
          headers: { allow: "GET, HEAD" },
        });
      }
      if (!authorized(request)) {
        return new Response(
          "unauthorized: send 'Authorization: Bearer <token>' or '?token=<token>'\n",
          { status: 401, headers: { "www-authenticate": "Bearer" } },
        );
      }
      const path = new URL(request.url).pathname;
      try {
        if (path === "/") {
          return new Response(PAGE, {
            headers: {
              "content-type": "text/html; charset=utf-8",
              "cache-control": "no-store",
            },
          });
        }
        if (path === "/metrics") {
          return new Response(metricsOf(viewsOf(pipelinesOf(source))), {
            headers: { "content-type": METRICS_CONTENT_TYPE },
          });
        }
        if (path === "/events") return eventStream(source, streams);
      } catch (error) {
        return new Response(
          `${error instanceof Error ? error.message : String(error)}\n`,
          { status: 500 },
        );
      }
      return new Response("not found\n", { status: 404 });
    },
  });
  const address = server.addr;
  const host = address.hostname.includes(":")
    ? `[${address.hostname}]`
    : address.hostname;
  let closing: Promise<void> | null = null;
  const close = () => {
    if (closing === null) {
      for (const end of streams) end();
      closing = server.shutdown();
    }
    return closing;
  };
  signal?.addEventListener("abort", () => close(), { once: true });
  return {
    url: `http://${host}:${address.port}/`,
    finished: server.finished,
    close: () => close().then(() => server.finished),
    [Symbol.asyncDispose]: () => close().then(() => server.finished),
  };
}

/** A stream of the figures, one message now and one every `EVENT_INTERVAL_MS`. */
function eventStream(
  source: PipelineSource,
  streams: Set<() => void>,
): Response {
  const encoder = new TextEncoder();
  let end = () => {};
  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      const send = () => {
        // A page that stops reading gets no more until it reads again.
        if ((controller.desiredSize ?? 1) <= 0) return;
        let data: string;
        try {
          data = JSON.stringify(viewsOf(pipelinesOf(source)));
        } catch (error) {
          data = JSON.stringify(String(error));
        }
        controller.enqueue(encoder.encode(`data: ${data}\n\n`));
      };
      send();
      const timer = setInterval(send, EVENT_INTERVAL_MS);
      end = () => {
        clearInterval(timer);
        streams.delete(end);
        try {
          controller.close();
        } catch {
          // Already closed or cancelled.
        }
      };
      streams.add(end);
    },
    cancel() {
      end();
    },
  });
  return new Response(body, {
    headers: {
      "content-type": "text/event-stream",
      "cache-control": "no-store",
    },
  });
}

/** Whether `a` equals `b`, in a time that does not tell how much of it matched. */
function sameText(a: string, b: string): boolean {
  const x = new TextEncoder().encode(a);
  const y = new TextEncoder().encode(b);
  let differ = x.length ^ y.length;
  for (let i = 0; i < Math.max(x.length, y.length); i++) {
    differ |= (x[i] ?? 0) ^ (y[i] ?? 0);
  }
  return differ === 0;
}
