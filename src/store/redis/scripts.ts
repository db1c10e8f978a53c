import { readFileSync } from 'node:fs';

/**
 * The Redis ledger's Lua scripts, each a file beside this one, read once when the adapter is
 * loaded. They are kept as .lua files so that each reads as what it is, function by function
 * beside its TypeScript twin (apply.lua names src/ledger/apply.ts, record.ts and usage.ts).
 *
 * `npm run build` copies them next to the compiled adapter (dist/src/store/redis/), the container
 * image does the same, and the function bundles inline their text (scripts/build-functions.ts,
 * `luaInline`), so every way the enforcer ships carries them.
 */
function lua(name: string): string {
  return readFileSync(new URL(`./${name}.lua`, import.meta.url), 'utf8');
}

export const LEDGER_SCRIPTS = {
  /** One batch of events applied atomically: src/ledger/apply.ts applyEventsTo. */
  apply: lua('apply'),
  /** The audit trail's append, one kept would-delete per image. */
  recordActions: lua('record-actions'),
  /** A project's records through one of its indexes, in one read. */
  indexedRecords: lua('indexed-records'),
  /** Reconcile's mark on the listed images. */
  markListed: lua('mark-listed'),
  /** One page of reconcile's sweep: live records the pass did not mark. */
  unmarkedLive: lua('unmarked-live'),
  /** One slice of the indexes' one-time build over a ledger written before them. */
  indexImages: lua('index-images'),
  /** One slice of forgetDeadImagesBefore. */
  forgetDead: lua('forget-dead'),
  /** Admission: a create reserved if the project is under its limits (src/quota/admission.ts). */
  reserveCreate: lua('reserve-create'),
  /** Admission: reservations ended once their creates are counted. */
  releaseReservations: lua('release-reservations'),
  /** A lease extended by its holder or taken over once expired (a free one is SET NX PX). */
  acquireLease: lua('acquire-lease'),
  /** A lease ended by its holder only. */
  releaseLease: lua('release-lease'),
};
