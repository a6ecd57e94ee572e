/**
 * How the progress display and the insights report write figures: counts
 * with thousands separators, durations, shares, bars and aligned columns.
 *
 * @module
 */

/** A count with thousands separators: `12,345`. */
export function count(n: number): string {
  return Math.round(n).toLocaleString("en-US");
}

/** Ms as a duration: `0.42 ms`, `12 ms`, `1,234 ms`. */
export function ms(value: number): string {
  if (value === 0) return "0 ms";
  if (value < 10) return `${value.toFixed(value < 1 ? 2 : 1)} ms`;
  return `${count(value)} ms`;
}

/** Ms as a longer duration: `850 ms`, `3.2 s`, `2 min 5 s`. */
export function duration(value: number): string {
  if (value < 1000) return `${Math.round(value)} ms`;
  if (value < 60_000) return `${(value / 1000).toFixed(1)} s`;
  const minutes = Math.floor(value / 60_000);
  return `${minutes} min ${Math.round((value - minutes * 60_000) / 1000)} s`;
}

/** A share in [0, 1] as a whole percentage: `42%` (`—` when there is nothing to share). */
export function percent(share: number): string {
  if (!Number.isFinite(share)) return "—";
  return `${Math.round(Math.min(1, Math.max(0, share)) * 100)}%`;
}

/** A rate per second: `1,234/s`, `3.5/s`. */
export function rate(perSecond: number): string {
  if (!Number.isFinite(perSecond)) return "—/s";
  return perSecond < 10 && perSecond > 0
    ? `${perSecond.toFixed(1)}/s`
    : `${count(perSecond)}/s`;
}

/** A bar of `width` cells, `fraction` of them full: `[█████░░░░░]`. */
export function bar(fraction: number, width: number): string {
  const full = Math.round(Math.min(1, Math.max(0, fraction)) * width);
  return `[${"█".repeat(full)}${"░".repeat(width - full)}]`;
}

/** `word` or its plural, after `n`: `1 task`, `2 tasks`. */
export function plural(n: number, word: string, words = `${word}s`): string {
  return `${count(n)} ${n === 1 ? word : words}`;
}

/**
 * Rows of cells as aligned columns: text columns padded to the right,
 * columns of `right` (by index) to the left, two spaces between; a column
 * empty in every row is left out.
 */
export function columns(rows: string[][], right: Set<number>): string[] {
  const widths: number[] = [];
  for (const row of rows) {
    row.forEach((cell, i) => {
      widths[i] = Math.max(widths[i] ?? 0, cell.length);
    });
  }
  return rows.map((row) =>
    row.flatMap((cell, i) =>
      widths[i] === 0
        ? []
        : [right.has(i) ? cell.padStart(widths[i]!) : cell.padEnd(widths[i]!)]
    ).join("  ").trimEnd()
  );
}
