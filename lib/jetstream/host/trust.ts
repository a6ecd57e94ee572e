/**
 * What a worker host trusts: which announcements it takes (signed by a
 * coordinator it trusts, recent, well formed), and which stages it runs
 * (`allowSource`, `allowTargets`); the others it ignores or refuses.
 *
 * @module
 */

import { ANNOUNCE_TTL_MS, PROTOCOL, type StageSpec } from "../announcements.ts";
import { stageNames } from "../streams.ts";
import type { HostSettings } from "./host_options.ts";

/**
 * Why a host ignores an announcement read from `subject` (`read` as
 * `readAnnouncement` gives it), or null if it takes it. A host that trusts
 * coordinators' keys ignores an announcement that none of them signed, or
 * signed longer than `ANNOUNCE_TTL_MS` ago (a replay), or made for another
 * subject.
 */
export function ignoredBecause(
  read: { spec: unknown; signed: boolean } | null,
  subject: string,
  trust: readonly CryptoKey[],
): string | null {
  const spec = read?.spec;
  return read === null || !isSpec(spec)
    ? "it is not a stage announcement"
    : stageNames(spec.run, spec.index).announcement !== subject
    ? `it names another stage than its subject ${subject}`
    : trust.length > 0 && !read.signed
    ? "no coordinator this host trusts (--trust) signed it"
    : read.signed && Math.abs(Date.now() - spec.issued) > ANNOUNCE_TTL_MS
    ? `it was issued ${
      Math.round((Date.now() - spec.issued) / 1000)
    } s ago (a replay, or clocks more than ${ANNOUNCE_TTL_MS / 1000} s apart)`
    : null;
}

/** Why a host with `settings` may not run `spec`'s stage, or null if it may; `signed` if a trusted coordinator announced it. */
export function refusal(
  spec: StageSpec,
  signed: boolean,
  settings: HostSettings,
): string | null {
  if (spec.protocol !== PROTOCOL) {
    return `the stage speaks protocol ${spec.protocol}, the host ${PROTOCOL}: run the same version of @mpipe/mpipe on the coordinator and the hosts`;
  }
  const target = spec.target;
  if (target.kind === "source") {
    if (!signed) {
      return "it is a function or class target, sent as source text, and this host runs those only from coordinators it trusts: give the coordinator a signingKey, and start the host with --trust PUBLIC_KEY --allow-source";
    }
    return settings.allowSource ? null : (
      "it is a function or class target, sent as source text, and this host runs those only when started with --allow-source (allowSource: true)"
    );
  }
  const allowed = settings.allowTargets;
  if (allowed.some((prefix) => isUnder(target.specifier, prefix))) {
    return null;
  }
  return `its module target ${target.specifier} is not under any URL prefix this host may import (${
    allowed.length === 0
      ? "none: start it with --allow-target PREFIX"
      : allowed.join(", ")
  })`;
}

/**
 * Whether the module `specifier` is under the URL prefix `prefix`: both
 * normalized (`..` and `.` resolved, as the import will), with the same
 * scheme, host and port, and the target's path starting with the prefix's
 * path on a segment boundary (a prefix `file:///srv/a` admits
 * `file:///srv/a/x.ts`, not `file:///srv/ab.ts`).
 */
export function isUnder(specifier: string, prefix: string): boolean {
  let target: URL;
  let base: URL;
  try {
    target = new URL(specifier);
    base = new URL(prefix);
  } catch {
    return false;
  }
  if (
    target.protocol !== base.protocol || target.host !== base.host ||
    target.username !== base.username || target.password !== base.password
  ) {
    return false;
  }
  // An encoded slash or backslash is a separator to some loaders.
  if (/%2f|%5c/i.test(target.pathname)) return false;
  const path = base.pathname.endsWith("/")
    ? base.pathname
    : `${base.pathname}/`;
  return target.pathname.startsWith(path);
}

/** Whether `spec` has the shape of a stage's spec (an unsigned one may be anything). */
function isSpec(spec: unknown): spec is StageSpec {
  const s = spec as StageSpec;
  return typeof s === "object" && s !== null &&
    typeof s.run === "string" && /^[A-Za-z0-9]+$/.test(s.run) &&
    Number.isInteger(s.index) && s.index >= 0 &&
    typeof s.name === "string" && typeof s.issued === "number" &&
    typeof s.target === "object" && s.target !== null &&
    (s.target.kind === "source"
      ? typeof s.target.source === "string"
      : s.target.kind === "module" && typeof s.target.specifier === "string") &&
    Array.isArray(s.args) &&
    Number.isInteger(s.concurrency) && s.concurrency >= 1 &&
    typeof s.ackWait === "number" && s.ackWait >= 100 &&
    typeof s.taskTimeout === "number" && s.taskTimeout >= 0 &&
    Number.isInteger(s.maxAttempts) && s.maxAttempts >= 1 &&
    Number.isInteger(s.maxDeliver) && s.maxDeliver >= 1;
}
