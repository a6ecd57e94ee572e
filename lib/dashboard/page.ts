/**
 * The dashboard's page: one self-contained HTML document (no external
 * script, style, font or image, so it works offline). Its script listens to
 * `events` (Server-Sent Events, a `PipelineView[]` each message, see
 * `model.ts`) and redraws each pipeline: the stage graph as SVG, the rate
 * chart (rates from the differences of successive figures, kept for the
 * last five minutes in the page), the workers' rows, the slowest tasks, the
 * state and the failure.
 *
 * @module
 */

/** The page's HTML. */
export const PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>MPipe dashboard</title>
<style>
  :root { --fg: #1d2330; --muted: #687083; --line: #c9ced8; --work: #2f9e62;
    --block: #e8943a; --wait: #c5cad3; --bad: #d64545; --bg: #f6f7f9; }
  body { font: 14px/1.4 system-ui, sans-serif; color: var(--fg); margin: 0;
    background: var(--bg); }
  header { padding: 10px 20px; background: #1d2330; color: #fff;
    display: flex; gap: 16px; align-items: baseline; }
  header h1 { font-size: 18px; margin: 0; }
  #conn { color: #aab2c2; font-size: 12px; }
  main { padding: 8px 20px 40px; }
  section.pipeline { background: #fff; border: 1px solid var(--line);
    border-radius: 8px; padding: 12px 16px; margin: 12px 0; }
  h2 { font-size: 17px; margin: 0 0 6px; display: flex; gap: 10px;
    align-items: center; }
  h3 { font-size: 14px; margin: 14px 0 4px; color: var(--muted); }
  .state { font-size: 12px; padding: 1px 8px; border-radius: 10px;
    background: #dfe3ea; }
  .state.running { background: #d4f0de; } .state.stopping { background: #fdf0c4; }
  .state.failed, .state.terminated { background: #f8d2d2; }
  .summary { color: var(--muted); font-size: 13px; }
  pre.error { background: #fff1f1; border: 1px solid var(--bad); color: #7a1010;
    padding: 8px; white-space: pre-wrap; font-size: 12px; }
  .bottleneck-text { border-left: 4px solid var(--bad); padding: 4px 8px;
    background: #fff6f6; font-size: 13px; }
  .bottleneck-since { font-size: 13px; font-weight: 600; color: var(--bad);
    margin: 8px 0 2px; }
  .bottleneck-text.none { border-color: var(--line); background: #f7f8fa; }
  svg text { font: 12px system-ui, sans-serif; fill: var(--fg); }
  svg .name { font-weight: 600; font-size: 13px; }
  svg .small { font-size: 11px; fill: var(--muted); }
  .stage rect.box { fill: #fff; stroke: #8a93a6; stroke-width: 1.2; }
  .stage.bottleneck rect.box { stroke: var(--bad); stroke-width: 3; fill: #fff8f8; }
  .stage.within rect.box { stroke-dasharray: 4 3; }
  table { border-collapse: collapse; font-size: 12px; margin-top: 4px; }
  th, td { padding: 2px 8px; text-align: right; border-bottom: 1px solid #eceef2; }
  th:first-child, td:first-child, table.slowest td, table.slowest th { text-align: left; }
  .legend span { display: inline-block; margin-right: 12px; font-size: 12px; }
  .swatch { display: inline-block; width: 10px; height: 10px; margin-right: 4px;
    vertical-align: -1px; }
  .columns { display: flex; gap: 28px; flex-wrap: wrap; }
</style>
</head>
<body>
<header><h1>MPipe dashboard</h1><span id="conn">connecting…</span></header>
<main id="root"><p class="summary">Waiting for the first figures…</p></main>
<script>
"use strict";
const W = 214, H = 112, DX = 262, DY = 140, COLORS = ["#3367d6", "#d64545",
  "#2f9e62", "#e8943a", "#8e44ad", "#16a2b8", "#b5651d", "#5d6d7e"];
const WINDOW_MS = 5 * 60 * 1000;
/** Per pipeline and stage: [time ms, tasks] samples of the last minutes. */
const history = new Map();
const esc = (s) => String(s).replace(/[&<>"']/g, (c) =>
  ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const num = (n) => n === null || n === undefined || Number.isNaN(n) ? "–"
  : Math.round(n).toLocaleString("en-US");
const pct = (n) => n === null || Number.isNaN(n) ? "–" : Math.round(n * 100) + "%";
const rateText = (r) => r === null ? "–" : r >= 100 ? Math.round(r).toLocaleString("en-US")
  : r.toFixed(r >= 10 ? 1 : 2);
const ms = (n) => n >= 1000 ? (n / 1000).toFixed(2) + " s" : n.toFixed(n >= 10 ? 0 : 2) + " ms";

function record(view, now) {
  const key = view.name;
  let perStage = history.get(key);
  if (!perStage) history.set(key, perStage = new Map());
  for (const stage of view.stages) {
    let samples = perStage.get(stage.label);
    if (!samples) perStage.set(stage.label, samples = []);
    samples.push([now, stage.stats.tasks]);
    while (samples.length > 2 && samples[0][0] < now - WINDOW_MS) samples.shift();
  }
}

/** Rates (tasks/s) over about a second, at each sample. */
function rates(samples) {
  const out = [];
  let from = 0;
  for (let i = 1; i < samples.length; i++) {
    while (from < i - 1 && samples[i][0] - samples[from + 1][0] >= 1000) from++;
    const dt = samples[i][0] - samples[from][0];
    if (dt > 0) out.push([samples[i][0], (samples[i][1] - samples[from][1]) * 1000 / dt]);
  }
  return out;
}

function currentRate(view, stage) {
  const samples = history.get(view.name)?.get(stage.label) ?? [];
  const r = rates(samples);
  return r.length > 0 ? r[r.length - 1][1] : null;
}

function shareBar(x, y, w, shares) {
  if (Number.isNaN(shares.working ?? NaN) || shares.working === null) {
    return '<rect x="' + x + '" y="' + y + '" width="' + w + '" height="8" fill="#eceef2"/>';
  }
  let out = "", at = x;
  for (const [key, color] of [["working", "var(--work)"], ["blocked", "var(--block)"], ["waiting", "var(--wait)"]]) {
    const width = Math.max(0, shares[key] * w);
    out += '<rect x="' + at + '" y="' + y + '" width="' + width + '" height="8" fill="' + color + '"/>';
    at += width;
  }
  return out;
}

/** A remote stage's hosts that answered so far, in about \`room\` characters. */
function hostsText(hosts, room) {
  if (hosts.length === 0) return "its cluster";
  const all = hosts.join(", ");
  return all.length <= room || hosts.length === 1 ? all
    : hosts.length + " hosts: " + hosts[0] + ", …";
}

function graph(view) {
  const cols = Math.max(...view.stages.map((s) => s.column)) + 1;
  const rows = Math.max(...view.stages.map((s) => s.row)) + 1;
  const width = (cols - 1) * DX + W + 20, height = (rows - 1) * DY + H + 20;
  let edges = "", boxes = "";
  const pos = (s) => [10 + s.column * DX, 10 + s.row * DY];
  view.stages.forEach((stage, i) => {
    const [x, y] = pos(stage);
    for (const n of stage.stats.next) {
      const [nx, ny] = pos(view.stages[n]);
      const x1 = x + W, y1 = y + H / 2, x2 = nx - 2, y2 = ny + H / 2;
      const mid = (x1 + x2) / 2;
      edges += '<path d="M' + x1 + ' ' + y1 + ' C' + mid + ' ' + y1 + ' ' + mid + ' ' + y2 + ' ' + x2 + ' ' + y2 +
        '" fill="none" stroke="#8a93a6" stroke-width="1.5" marker-end="url(#arrow)"/>';
    }
    const within = stage.stats.within;
    const isSubRoot = within !== null && !view.stages.some((s) => s.stats.next.includes(i));
    if (isSubRoot) {
      const [fx, fy] = pos(view.stages[within]);
      edges += '<path d="M' + (fx + W / 2) + ' ' + (fy + H) + ' L' + (fx + W / 2) + ' ' + (y + H / 2) +
        ' L' + (x - 2) + ' ' + (y + H / 2) + '" fill="none" stroke="#8a93a6" stroke-dasharray="5 4" stroke-width="1.5" marker-end="url(#arrow)"/>';
    }
    const s = stage.stats;
    const workers = s.remote ? "remote: " + s.size + " at once on " + hostsText(s.hosts, 30)
      : s.size + (s.size === 1 ? " worker" : " workers") + (s.ordered ? ", ordered" : "");
    const mark = view.bottleneck === i;
    boxes += '<g class="stage' + (mark ? " bottleneck" : "") + (within !== null ? " within" : "") +
      '" data-stage="' + esc(stage.label) + '" transform="translate(' + x + ',' + y + ')">' +
      '<title>' + esc(stage.label) + ": working " + pct(stage.shares.working) + ", blocked " +
      pct(stage.shares.blocked) + ", waiting " + pct(stage.shares.waiting) +
      (s.remote ? "; hosts: " + esc(hostsText(s.hosts, Infinity)) : "") + '</title>' +
      '<rect class="box" width="' + W + '" height="' + H + '" rx="6"/>' +
      '<text class="name" x="10" y="19">' + esc(stage.label) + (mark ? "  ⚠ bottleneck" : "") + '</text>' +
      '<text class="small" x="10" y="35">' + esc(workers) + '</text>' +
      '<text x="10" y="53">tasks <tspan class="tasks" font-weight="600">' + num(s.tasks) + '</tspan> · ' +
      rateText(currentRate(view, stage)) + '/s</text>' +
      '<text x="10" y="70">backlog ' + num(s.backlog) + ' · in flight ' + num(s.inFlight) +
      (s.skipped > 0 ? ' · skipped ' + num(s.skipped) : '') + '</text>' +
      shareBar(10, 80, W - 20, stage.shares) +
      '<text class="small" x="10" y="104">busy ' + pct(stage.shares.working) + ' · blocked ' +
      pct(stage.shares.blocked) + ' · waiting ' + pct(stage.shares.waiting) + '</text></g>';
  });
  return '<svg class="graph" width="' + width + '" height="' + height + '" viewBox="0 0 ' + width + ' ' + height + '">' +
    '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto">' +
    '<path d="M0 0 L10 5 L0 10 z" fill="#8a93a6"/></marker></defs>' + edges + boxes + '</svg>';
}

function chart(view, now) {
  const width = 640, height = 170, left = 50, bottom = 20, top = 8;
  const series = view.stages.map((stage) => rates(history.get(view.name)?.get(stage.label) ?? []));
  const max = Math.max(1, ...series.flatMap((r) => r.map((p) => p[1])));
  const span = Math.min(WINDOW_MS, Math.max(10000, now - Math.min(now, ...series.flatMap((r) => r.map((p) => p[0])))));
  const x = (t) => left + (width - left - 8) * (1 - (now - t) / span);
  const y = (v) => top + (height - top - bottom) * (1 - v / max);
  let lines = "";
  series.forEach((points, i) => {
    if (points.length < 2) return;
    lines += '<polyline fill="none" stroke-width="1.6" stroke="' + COLORS[i % COLORS.length] + '" points="' +
      points.map((p) => x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1)).join(" ") + '"/>';
  });
  const axis = '<line x1="' + left + '" y1="' + (height - bottom) + '" x2="' + width + '" y2="' + (height - bottom) + '" stroke="#c9ced8"/>' +
    '<text class="small" x="4" y="' + (top + 10) + '">' + rateText(max) + '/s</text>' +
    '<text class="small" x="4" y="' + (height - bottom) + '">0</text>' +
    '<text class="small" x="' + left + '" y="' + (height - 4) + '">' + Math.round(span / 1000) + ' s ago</text>' +
    '<text class="small" x="' + (width - 30) + '" y="' + (height - 4) + '">now</text>';
  const legend = view.stages.map((stage, i) => '<span><i class="swatch" style="background:' +
    COLORS[i % COLORS.length] + '"></i>' + esc(stage.label) + '</span>').join("");
  return '<svg class="chart" width="' + width + '" height="' + height + '">' + axis + lines + '</svg><div class="legend">' + legend + '</div>';
}

function workersTable(view) {
  let rows = "";
  for (const stage of view.stages) {
    stage.stats.workers.forEach((w, i) => {
      const sh = stage.workerShares[i];
      const place = stage.stats.remote ? " (stand-in for " + hostsText(stage.stats.hosts, Infinity) + ")" : "";
      rows += '<tr><td>' + esc(stage.label + ' #' + i + place) + '</td><td>' + num(w.tasks) + '</td><td>' +
        pct(sh.working) + '</td><td>' + pct(sh.blocked) + '</td><td>' + pct(sh.waiting) + '</td><td>' +
        num(w.inFlight) + '</td><td>' + num(w.skipped) + '</td><td>' + num(w.restarts) + '</td></tr>';
    });
  }
  return '<table class="workers"><tr><th>worker</th><th>tasks</th><th>busy</th><th>blocked</th><th>waiting</th>' +
    '<th>in flight</th><th>skipped</th><th>restarts</th></tr>' + rows + '</table>';
}

function slowestTable(view) {
  let rows = "";
  for (const stage of view.stages) {
    rows += '<tr><td>' + esc(stage.label) + '</td><td>' + (stage.stats.slowest.length === 0 ? "–" :
      stage.stats.slowest.map((t) => "task " + t.task + " " + ms(t.ms) + (stage.stats.workers.length > 1 ? " (#" + t.worker + ")" : "")).join(", ")) +
      '</td></tr>';
  }
  return '<table class="slowest"><tr><th>stage</th><th>slowest tasks</th></tr>' + rows + '</table>';
}

const secs = (n) => (n / 1000).toFixed(1) + " s";

/** Since when the marked stage has been marked: the dashboard knows from its first look on. */
function sinceText(view) {
  const name = view.stages[view.bottleneck].label;
  const held = view.elapsedMs - view.bottleneckSinceMs;
  return view.firstLook
    ? "'" + name + "' has been marked since before " + secs(view.bottleneckSinceMs) +
      " into the run (the dashboard's first look): at least " + secs(held) + "."
    : "'" + name + "' has been marked since " + secs(view.bottleneckSinceMs) +
      " into the run: for " + secs(held) + ".";
}

function render(views, now) {
  const root = document.getElementById("root");
  if (views.length === 0) {
    root.innerHTML = '<p class="summary">No pipeline to show.</p>';
    return;
  }
  root.innerHTML = views.map((view) =>
    '<section class="pipeline" data-pipeline="' + esc(view.name) + '">' +
    '<h2>' + esc(view.name) + ' <span class="state ' + view.state + '">' + view.state + '</span></h2>' +
    '<div class="summary">' + num(view.put) + ' tasks put · ' + num(view.read) + ' results read · ' +
    (view.elapsedMs / 1000).toFixed(1) + ' s</div>' +
    (view.error === null ? "" : '<h3>Failure</h3><pre class="error">' + esc(view.error) + '</pre>') +
    '<h3>Stages</h3>' + graph(view) +
    '<div class="legend"><span><i class="swatch" style="background:var(--work)"></i>busy</span>' +
    '<span><i class="swatch" style="background:var(--block)"></i>blocked</span>' +
    '<span><i class="swatch" style="background:var(--wait)"></i>waiting</span></div>' +
    (view.bottleneckSinceMs === null ? "" : '<p class="bottleneck-since">' + esc(sinceText(view)) + '</p>') +
    '<p class="bottleneck-text' + (view.bottleneck === null ? " none" : "") + '">' + esc(view.bottleneckText) + '</p>' +
    '<div class="columns"><div><h3>Tasks done a second, last minutes</h3>' + chart(view, now) + '</div>' +
    '<div><h3>Workers</h3>' + workersTable(view) + '<h3>Slowest tasks</h3>' + slowestTable(view) + '</div></div>' +
    '</section>').join("");
}

const conn = document.getElementById("conn");
const events = new EventSource("events" + location.search);
events.onopen = () => { conn.textContent = "live"; };
events.onerror = () => { conn.textContent = "disconnected: retrying…"; };
events.onmessage = (message) => {
  const views = JSON.parse(message.data);
  if (!Array.isArray(views)) { conn.textContent = "error: " + views; return; }
  const now = Date.now();
  for (const view of views) record(view, now);
  render(views, now);
  conn.textContent = "live · updated " + new Date(now).toLocaleTimeString();
};
</script>
</body>
</html>
`;
