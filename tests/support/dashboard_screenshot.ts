/**
 * Takes the README's screenshot of the dashboard (`docs/dashboard.png`) with
 * the real headless Chromium, from a real run: a pipeline with a fork, a
 * join and a slow stage, fed for a few seconds so the chart has a history.
 *
 * ```sh
 * deno run -A tests/support/dashboard_screenshot.ts
 * ```
 */

import puppeteer from "puppeteer-core";
import { serveDashboard } from "../../dashboard.ts";
import { OrderedStage, Pipeline, UnorderedStage } from "../../mod.ts";
import { keepFeeding } from "../fixtures/dashboard/pipelines.ts";

const parse = new OrderedStage((n: number) => n % 1000, 2, { name: "parse" });
// Slow on purpose: about 8 ms a task.
const square = new UnorderedStage(
  async (n: number) => {
    await new Promise((resolve) => setTimeout(resolve, 8));
    return n * n;
  },
  1,
  { name: "square" },
);
const cube = new UnorderedStage((n: number) => n * n * n, 1, { name: "cube" });
const format = new UnorderedStage((n: number) => n.toLocaleString("en"), 1, {
  name: "format",
});
parse.link(square.link(format));
parse.link(cube.link(format));
const pipe = new Pipeline<number, string>(parse, { name: "squares" });

const stop = new AbortController();
const run = keepFeeding(pipe, stop.signal, 60);
await using dashboard = serveDashboard(pipe, { port: 0 });
const browser = await puppeteer.launch({
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1180, height: 700, deviceScaleFactor: 1 });
  await page.goto(dashboard.url);
  await new Promise((resolve) => setTimeout(resolve, 12_000));
  await page.screenshot({
    path: new URL("../../docs/dashboard.png", import.meta.url).pathname,
    fullPage: true,
  });
} finally {
  await browser.close();
  stop.abort();
  pipe.terminate();
  await run;
}
console.log("wrote docs/dashboard.png");
