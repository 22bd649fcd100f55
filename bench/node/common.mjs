// Shared helpers of the Node peers of `make bench`. Each peer script is run
// by the Rust harness (bench/harness) once per round, reads `--key value`
// arguments, and prints one JSON object on its last stdout line, so the
// harness can interleave Node and Isola rounds inside one run.

import { readFileSync } from 'node:fs';

/** `--key value` arguments as an object of strings. */
export function args() {
  const out = {};
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) out[argv[i].replace(/^--/, '')] = argv[i + 1];
  return out;
}

/** Integer argument `name`, or `fallback`. */
export function int(a, name, fallback) {
  return a[name] === undefined ? fallback : Number.parseInt(a[name], 10);
}

/** Monotonic time in microseconds (float). */
export function micros() {
  return Number(process.hrtime.bigint()) / 1000;
}

/** Resident and proportional set size of a process, in bytes, from the kernel. */
export function rssPss(pid) {
  const text = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
  const kb = (key) => Number((text.match(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm')) || [0, 0])[1]) * 1024;
  return { rss: kb('Rss'), pss: kb('Pss') };
}

/** Prints the result for the harness: one JSON line. */
export function emit(result) {
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

/** Waits for the next `event` on `emitter`. */
export function once(emitter, event) {
  return new Promise((resolve) => emitter.once(event, resolve));
}
