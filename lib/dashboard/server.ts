/**
 * The dashboard's HTTP server (`Deno.serve`): `GET /` the page, `GET /events`
 * the figures as Server-Sent Events (2.5 times a second), `GET /metrics`
 * the Prometheus text. Each request reads the pipelines' figures anew (what
 * `stats()` reads); nothing runs between requests but one timer while any
 * event stream is open, and `close()` ends those streams, so a closed server
 * keeps nothing alive. Without a token it answers only requests that name a
 * loopback host (no DNS rebinding); the page may run only its own script.
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
import {
  BottleneckHistory,
  pipelinesOf,
  type PipelineSource,
  viewsOf,
} from "./model.ts";
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
  const history = new BottleneckHistory();
  const views = () => viewsOf(pipelinesOf(source), history);
  const streams = new EventStreams(() => {
    try {
      return JSON.stringify(views());
    } catch (error) {
      return JSON.stringify(String(error));
    }
  });
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
      const refusal = token === undefined
        ? foreignHost(request)
        : unauthorized(request, token);
      if (refusal !== null) return refusal;
      const path = new URL(request.url).pathname;
      try {
        if (path === "/") return page();
        if (path === "/metrics") {
          return new Response(metricsOf(views()), {
            headers: { "content-type": METRICS_CONTENT_TYPE },
          });
        }
        if (path === "/events") return streams.open();
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
  const onAbort = () => close();
  const close = () => {
    if (closing === null) {
      signal?.removeEventListener("abort", onAbort);
      streams.end();
      closing = server.shutdown().then(() => server.finished);
    }
    return closing;
  };
  signal?.addEventListener("abort", onAbort, { once: true });
  return {
    url: `http://${host}:${address.port}/`,
    finished: server.finished,
    close,
    [Symbol.asyncDispose]: close,
  };
}

/** The page, with a fresh nonce that its policy lets run its one script and nothing else. */
function page(): Response {
  const nonce = btoa(
    String.fromCharCode(...crypto.getRandomValues(new Uint8Array(16))),
  );
  return new Response(PAGE.replace("<script>", `<script nonce="${nonce}">`), {
    headers: {
      "content-type": "text/html; charset=utf-8",
      "cache-control": "no-store",
      // Nothing from elsewhere, no framing, no script but the page's own:
      // a name that slipped through the page's escaping still runs nothing.
      "content-security-policy":
        `default-src 'none'; script-src 'nonce-${nonce}'; style-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'`,
      "x-content-type-options": "nosniff",
      // The page's address may hold the token (?token=).
      "referrer-policy": "no-referrer",
    },
  });
}

/**
 * Without a token, a 403 for a request that names another host than a
 * loopback one: a page of another site whose name it pointed at 127.0.0.1
 * (DNS rebinding) would otherwise read the figures and errors, as the same
 * origin. Null for a loopback `Host`.
 */
function foreignHost(request: Request): Response | null {
  const host = request.headers.get("host") ?? "";
  const name = host.startsWith("[")
    ? host.slice(0, host.indexOf("]") + 1)
    : host.replace(/:\d*$/, "");
  if (isLoopback(name)) return null;
  return new Response(
    `forbidden: the request names the host '${host}', not a loopback address: open the dashboard at its url (http://127.0.0.1:<port>/), or serve it with a token\n`,
    { status: 403 },
  );
}

/** A 401 for a request without `token` (`Authorization: Bearer`, any case, or `?token=`); null if it has it. */
function unauthorized(request: Request, token: string): Response | null {
  const header = request.headers.get("authorization");
  const given = header !== null && /^bearer /i.test(header)
    ? header.slice(7).trim()
    : new URL(request.url).searchParams.get("token");
  if (given !== null && sameText(given, token)) return null;
  return new Response(
    "unauthorized: send 'Authorization: Bearer <token>' or '?token=<token>'\n",
    { status: 401, headers: { "www-authenticate": "Bearer" } },
  );
}

/**
 * The pages' event streams. One timer serves them all while any is open,
 * and reads the figures once a tick however many pages watch; a stream
 * whose reader lags gets nothing until it reads again.
 */
class EventStreams {
  readonly #streams = new Set<ReadableStreamDefaultController<Uint8Array>>();
  readonly #figures: () => string;
  readonly #encoder = new TextEncoder();
  #timer: ReturnType<typeof setInterval> | undefined;

  constructor(figures: () => string) {
    this.#figures = figures;
  }

  /** A new stream: the figures now, then every `EVENT_INTERVAL_MS`. */
  open(): Response {
    let controller!: ReadableStreamDefaultController<Uint8Array>;
    const body = new ReadableStream<Uint8Array>({
      start: (c) => {
        controller = c;
        c.enqueue(this.#message());
        this.#streams.add(c);
        this.#timer ??= setInterval(() => this.#tick(), EVENT_INTERVAL_MS);
      },
      cancel: () => this.#drop(controller),
    });
    return new Response(body, {
      headers: {
        "content-type": "text/event-stream",
        "cache-control": "no-store",
      },
    });
  }

  /** Ends every stream (the server closes). */
  end(): void {
    for (const controller of this.#streams) {
      this.#drop(controller);
      try {
        controller.close();
      } catch {
        // Already closed or cancelled.
      }
    }
  }

  #message(): Uint8Array {
    return this.#encoder.encode(`data: ${this.#figures()}\n\n`);
  }

  #tick(): void {
    let message: Uint8Array | null = null;
    for (const controller of this.#streams) {
      if ((controller.desiredSize ?? 1) <= 0) continue;
      message ??= this.#message();
      controller.enqueue(message);
    }
  }

  #drop(controller: ReadableStreamDefaultController<Uint8Array>): void {
    this.#streams.delete(controller);
    if (this.#streams.size === 0) {
      clearInterval(this.#timer);
      this.#timer = undefined;
    }
  }
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
