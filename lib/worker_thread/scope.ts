/**
 * A stage worker's global scope: its few messages to the main thread, and
 * the ways a worker can end without a word (`close()`, `Deno.exit()`, an
 * error outside a task), which it reports first.
 *
 * Shipped to workers by source, like `ring.ts`.
 *
 * @module
 */

import { Dismissal } from "../shared_memory/dismissal.ts";

/** What a worker tells the main thread (never per task). */
export type WorkerMessage =
  | { type: "ready" }
  /** It passed the stop on, and stopped `stopped` parked places of its elastic stage. */
  | { type: "exit"; stopped: number }
  /** It left its elastic stage, idle `idleMs`, or `asked` to by the main thread. */
  | { type: "left"; idleMs: number; asked: boolean }
  | {
    type: "error";
    phase: "load" | "init" | "task";
    task: number | undefined;
    error: unknown;
    /** The error's name, which a structured clone keeps only for standard errors. */
    errorName?: string;
    /** Each attempt's error, for a task tried more than once. */
    attempts?: unknown[];
  }
  /** A task failed and was dropped (onError "skip"). */
  | {
    type: "skipped";
    task: number;
    error: unknown;
    errorName?: string;
    attempts?: unknown[];
  }
  /** A stash buffer of the worker's held place `place` (see `Retries`). */
  | { type: "stash"; place: number; buffer: SharedArrayBuffer }
  /** The worker is about to end: close(), Deno.exit(), or an error outside doTask(). */
  | { type: "lost"; reason: string; error?: unknown }
  /** A remote stage's stand-in had its first answer from a worker host: every host so far. */
  | { type: "hosts"; hosts: string[] };

/** The worker's messages and exits. */
export class WorkerScope {
  /** The worker scope's own close(), kept before user code can replace it. */
  static close: () => void = () => {};

  /** Reports close() and Deno.exit() before they end the worker without a word. */
  static watchExits(): void {
    const scope = globalThis as unknown as {
      close(): void;
      addEventListener(
        type: string,
        listener: (
          event: Event & { error?: unknown; reason?: unknown },
        ) => void,
      ): void;
    };
    const close = scope.close.bind(scope);
    WorkerScope.close = close;
    // Each way out gives up the worker's place first (it resigns): a
    // replacement may take it as soon as the main thread hears of it. A
    // worker dismissed already says nothing: its loss would be mistaken for
    // the pipeline's failure, whose own message may still be on its way.
    scope.close = () => {
      const say = !Dismissal.dismissed();
      Dismissal.resign();
      if (say) WorkerScope.post({ type: "lost", reason: "it called close()" });
      close();
    };
    // An error outside doTask() (a timer, an event): report it with its
    // cause, then end, rather than let it surface as a bare error event.
    const lost = (what: string, error: unknown) => {
      if (Dismissal.dismissed()) return close();
      Dismissal.resign();
      const text = error instanceof Error ? error.message : String(error);
      try {
        WorkerScope.post({ type: "lost", reason: `${what}: ${text}`, error });
      } catch {
        WorkerScope.post({ type: "lost", reason: `${what}: ${text}` });
      }
      close();
    };
    scope.addEventListener("error", (event) => {
      event.preventDefault();
      lost("it threw outside doTask()", event.error);
    });
    scope.addEventListener("unhandledrejection", (event) => {
      event.preventDefault();
      lost("a Promise outside doTask() rejected", event.reason);
    });
    const exit = Deno.exit;
    Object.defineProperty(Deno, "exit", {
      configurable: true,
      writable: true,
      value: (code?: number) => {
        const say = !Dismissal.dismissed();
        Dismissal.resign();
        if (say) {
          WorkerScope.post({
            type: "lost",
            reason: `it called Deno.exit(${code ?? ""})`,
          });
        }
        return exit(code);
      },
    });
  }

  /** Whether `value` is a Promise or another thenable. */
  static isThenable(value: unknown): value is PromiseLike<unknown> {
    return value !== null && typeof value === "object" &&
      typeof (value as { then?: unknown }).then === "function";
  }

  /**
   * Sends a message carrying an error; if the error cannot be cloned, sends
   * what it says (it never throws: the message must go). An error that fails
   * the pipeline stops its other workers first (`Dismissal.fail`); a worker
   * dismissed first says nothing.
   */
  static postError(
    message: Extract<WorkerMessage, { type: "error" | "skipped" }>,
  ): void {
    if (message.type === "error" && !Dismissal.fail()) return;
    const { error } = message;
    if (error instanceof Error) message.errorName = error.name;
    try {
      WorkerScope.post(message);
    } catch {
      WorkerScope.post({
        ...message,
        error: WorkerScope.#text(message.error),
        attempts: message.attempts?.map(WorkerScope.#text),
      });
    }
  }

  /** What `value` says, even if it cannot be printed (no `toString`, or one that throws). */
  static #text(value: unknown): string {
    try {
      return String(value);
    } catch {
      return Object.prototype.toString.call(value);
    }
  }

  /** Sends a message to the main thread. */
  static post(message: WorkerMessage): void {
    (globalThis as unknown as { postMessage(message: unknown): void })
      .postMessage(message);
  }
}
