// Workload 2, trivial task throughput on Piscina: N tasks `run(x)` returning
// x + 1, all submitted at once to a pool of T threads (after a warm-up).
// Usage: throughput.mjs --n 20000 --threads 2 --warmup 2000
import { Piscina } from 'piscina';
import { fileURLToPath } from 'node:url';
import { args, int, micros, emit } from './common.mjs';

const a = args();
const n = int(a, 'n', 20000);
const threads = int(a, 'threads', 2);
const warmup = int(a, 'warmup', 2000);

const pool = new Piscina({
  filename: fileURLToPath(new URL('./piscina-task.mjs', import.meta.url)),
  minThreads: threads,
  maxThreads: threads,
  // Unbounded queue: all N are submitted at once, as on Isola.
  maxQueue: Infinity,
});

async function batch(count) {
  const runs = [];
  for (let i = 0; i < count; i++) runs.push(pool.run(i));
  const results = await Promise.all(runs);
  results.forEach((r, i) => {
    if (r !== i + 1) throw new Error(`task ${i} returned ${r}`);
  });
}

await batch(warmup);
const t0 = micros();
await batch(n);
const seconds = (micros() - t0) / 1e6;
await pool.destroy();
emit({ unit: 'per_s', samples: [n / seconds] });
