// Workload 4, CPU: the sha256 guest's job in Node: fill MIB MiB with the
// same bytes as the guest, `(i * 31 + 7) & 0xff`, and hash them with
// `crypto` (OpenSSL, which uses SHA-NI where the CPU has it). Timed inside
// the script, so Node's own start-up is not counted.
// Usage: sha256.mjs --mib 64 --n N --warmup W
import { createHash } from 'node:crypto';
import { args, int, micros, emit } from './common.mjs';

const a = args();
const mib = int(a, 'mib', 64);
const n = int(a, 'n', 1);
const warmup = int(a, 'warmup', 1);

function job() {
  const len = mib * 1024 * 1024;
  const buf = new Uint8Array(len);
  for (let i = 0; i < len; i++) buf[i] = (Math.imul(i, 31) + 7) & 0xff;
  return createHash('sha256').update(buf).digest('hex');
}

const samples = [];
let digest = '';
for (let i = 0; i < warmup + n; i++) {
  const t0 = micros();
  digest = job();
  const dt = micros() - t0;
  if (i >= warmup) samples.push(dt);
}
emit({ unit: 'us', samples, digest });
