// Workload 7, shared memory: 2 workers invert a 64 MiB buffer in place, each
// its half (every byte inverted, a 32-bit word at a time: the job of Isola's
// `stripes` guest). `shared`: the buffer is a SharedArrayBuffer both workers
// write. `copied`: each half is copied to its worker in a message and copied
// back into the buffer.
// Usage: shm.mjs --mode shared|copied --n N --warmup W
import { Worker } from 'node:worker_threads';
import { args, int, micros, emit, once } from './common.mjs';

const a = args();
const mode = a.mode;
const n = int(a, 'n', 3);
const warmup = int(a, 'warmup', 1);
const BYTES = 64 * 1024 * 1024;

const worker = `
const { parentPort } = require('node:worker_threads');
parentPort.on('message', ({ buf, start, end }) => {
  const words = new Uint32Array(buf, start, (end - start) / 4);
  for (let i = 0; i < words.length; i++) words[i] = ~words[i];
  parentPort.postMessage(mode === 'copied' ? buf : null);
});
const mode = ${JSON.stringify(mode)};
`;
const workers = [new Worker(worker, { eval: true }), new Worker(worker, { eval: true })];
const half = BYTES / 2;
const data = new Uint8Array(mode === 'shared' ? new SharedArrayBuffer(BYTES) : new ArrayBuffer(BYTES));

async function pass() {
  const replies = workers.map((w) => once(w, 'message'));
  if (mode === 'shared') {
    workers.forEach((w, k) => w.postMessage({ buf: data.buffer, start: k * half, end: (k + 1) * half }));
    await Promise.all(replies);
  } else {
    workers.forEach((w, k) => {
      // Structured clone copies the half on the way in and on the way out.
      const copy = data.slice(k * half, (k + 1) * half);
      w.postMessage({ buf: copy.buffer, start: 0, end: half });
    });
    const back = await Promise.all(replies);
    back.forEach((buf, k) => data.set(new Uint8Array(buf), k * half));
  }
}

const samples = [];
for (let i = 0; i < warmup + n; i++) {
  const t0 = micros();
  await pass();
  const dt = micros() - t0;
  if (i >= warmup) samples.push(dt);
}
await Promise.all(workers.map((w) => w.terminate()));
emit({ unit: 'us', samples });
