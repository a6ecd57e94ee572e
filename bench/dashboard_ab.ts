// The dashboard's cost: W1 and W5 (steady state) with the dashboard's page open in the
// headless Chromium (`measure.ts --dashboard`) against the same pipeline without it, each
// measurement in a fresh process, the pairs alternating their order (off on, on off, …).
//
//   deno run -A bench/dashboard_ab.ts [--pairs 5] [--only W1,W5] [--quick] [--stream]
//
// `--stream`: curl reads the page's event stream instead of a browser drawing it (the
// server's own cost, as with a browser on another machine).
//
// It prints, per case, the median (min–max) of each side, on ÷ off of the medians, and in
// how many pairs the side with the dashboard did at least as well.

import { parseArgs } from "node:util";
import { median } from "./stats.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    pairs: { type: "string", default: "5" },
    only: { type: "string", default: "W1,W5" },
    quick: { type: "boolean", default: false },
    stream: { type: "boolean", default: false },
  },
});
const pairs = Number(values.pairs);
const cases = values.only!.split(",");
const measure = new URL("./measure.ts", import.meta.url).pathname;

async function steady(what: string, dashboard: boolean): Promise<number> {
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      measure,
      what,
      "mpipe",
      ...(values.quick ? ["--quick"] : []),
      ...(dashboard
        ? [values.stream ? "--dashboard-stream" : "--dashboard"]
        : []),
      // Both sides pause alike after the warm-up: the browser takes a
      // second or two to open the page, and a pause alone changes the
      // steady state several times over on a loaded 2-core box.
      "--settle",
      "4000",
    ],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
    signal: AbortSignal.timeout(600_000),
  }).output();
  const text = new TextDecoder().decode(stdout).trim().split("\n").at(-1)!;
  if (code !== 0) {
    throw new Error(
      `${what}: exit ${code}\n${new TextDecoder().decode(stderr)}`,
    );
  }
  return (JSON.parse(text) as { steady: number }).steady;
}

const figures = new Map(
  cases.map((c) => [c, { off: [] as number[], on: [] as number[] }]),
);
for (let pair = 0; pair < pairs; pair++) {
  const order = pair % 2 === 0 ? [false, true] : [true, false];
  for (const what of cases) {
    for (const dashboard of order) {
      const value = await steady(what, dashboard);
      figures.get(what)![dashboard ? "on" : "off"].push(value);
      console.error(
        `pair ${pair + 1} ${what} ${dashboard ? "on " : "off"} ${
          value.toFixed(0)
        }`,
      );
    }
  }
}
const f = (xs: number[]) =>
  `${median(xs)!.toFixed(0)} (${Math.min(...xs).toFixed(0)}–${
    Math.max(...xs).toFixed(0)
  })`;
console.log(
  `case | without the dashboard | with ${
    values.stream
      ? "its event stream read by curl"
      : "its page open in Chromium"
  } | on ÷ off | pairs on ≥ off`,
);
for (const [what, { off, on }] of figures) {
  const wins = on.filter((x, i) => x >= off[i]!).length;
  console.log(
    `${what} | ${f(off)} | ${f(on)} | ${
      (median(on)! / median(off)!).toFixed(3)
    } | ${wins}/${on.length}`,
  );
}
