// Workload 5, memory of live idle tasks. `worker`: N workers waiting for a
// message; the sample is this process's RSS growth per worker. `fork`: N
// children waiting for a message; the samples are each child's RSS and PSS.
// Usage: memory.mjs --mode worker|fork --n N
import { Worker } from 'node:worker_threads';
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { args, int, emit, once, rssPss } from './common.mjs';

const a = args();
const mode = a.mode;
const n = int(a, 'n', 10);

if (mode === 'worker') {
  const file = fileURLToPath(new URL('./echo-worker.cjs', import.meta.url));
  // One worker first, so the per-worker figure leaves out one-time costs.
  const first = new Worker(file);
  await once(first, 'message');
  await sleep(200);
  const before = rssPss(process.pid);
  const workers = [];
  for (let i = 0; i < n; i++) {
    const w = new Worker(file);
    workers.push(w);
    await once(w, 'message');
  }
  await sleep(500);
  const after = rssPss(process.pid);
  await Promise.all([first, ...workers].map((w) => w.terminate()));
  emit({ unit: 'bytes', rss: [(after.rss - before.rss) / n], pss: [(after.pss - before.pss) / n] });
} else {
  const file = fileURLToPath(new URL('./echo-child.cjs', import.meta.url));
  const children = [];
  for (let i = 0; i < n; i++) {
    const c = fork(file, [], { serialization: 'advanced' });
    children.push(c);
    await once(c, 'message');
  }
  await sleep(500);
  const sizes = children.map((c) => rssPss(c.pid));
  await Promise.all(children.map((c) => {
    const exited = once(c, 'exit');
    c.disconnect();
    return exited;
  }));
  emit({ unit: 'bytes', rss: sizes.map((s) => s.rss), pss: sizes.map((s) => s.pss) });
}
