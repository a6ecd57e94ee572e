// `measure.ts --dashboard`: serves the dashboard of a measured pipeline and opens its page
// in the real headless Chromium (Debian's /usr/bin/chromium, a plain child process), so
// that the timed passes run while a browser watches, as a user would; `--dashboard-stream`
// has curl read the page's event stream instead, without drawing it. Resolves once the
// page's event stream has asked for the figures three times; `close()` stops the browser
// and the server.

import { serveDashboard } from "../dashboard.ts";
import type { Pipeline } from "../mod.ts";

/**
 * The dashboard and a watcher of `pipe`, open: the headless Chromium
 * ("browser"), or curl reading the page's event stream without drawing it
 * ("stream": the server's own cost, as with a browser on another machine).
 */
export async function watch(
  pipe: Pipeline<unknown, unknown>,
  how: "browser" | "stream",
): Promise<{ close(): Promise<void> }> {
  let reads = 0;
  const dashboard = serveDashboard(() => {
    reads++;
    return pipe as unknown as Pipeline<never, unknown>;
  });
  const profile = await Deno.makeTempDir({ prefix: "mpipe-bench-chromium-" });
  const browser = new Deno.Command(
    how === "browser" ? "/usr/bin/chromium" : "curl",
    {
      args: how === "browser"
        ? [
          "--headless",
          "--no-sandbox",
          "--disable-gpu",
          "--disable-dev-shm-usage",
          `--user-data-dir=${profile}`,
          dashboard.url,
        ]
        : ["-sN", "-o", "/dev/null", `${dashboard.url}events`],
      stdout: "null",
      stderr: "null",
    },
  ).spawn();
  const close = async () => {
    try {
      browser.kill("SIGTERM");
    } catch { /* already ended */ }
    await browser.status;
    await dashboard.close();
    await Deno.remove(profile, { recursive: true }).catch(() => {});
  };
  const end = Date.now() + 30_000;
  while (reads < 3) {
    if (Date.now() > end) {
      await close();
      throw new Error(
        "the dashboard's page did not open in Chromium within 30 s",
      );
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return { close };
}
