// Workload 1, task start: from `new Worker` / `fork` to the task's first
// message. Usage: start.mjs --mode worker|fork-json|fork-advanced --n N --warmup W
import { Worker } from 'node:worker_threads';
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { args, int, micros, emit, once } from './common.mjs';

const a = args();
const mode = a.mode;
const n = int(a, 'n', 10);
const warmup = int(a, 'warmup', 1);
const workerFile = fileURLToPath(new URL('./echo-worker.cjs', import.meta.url));
const childFile = fileURLToPath(new URL('./echo-child.cjs', import.meta.url));

async function once_() {
  if (mode === 'worker') {
    const t0 = micros();
    const worker = new Worker(workerFile);
    await once(worker, 'message');
    const dt = micros() - t0;
    await worker.terminate();
    return dt;
  }
  const serialization = mode === 'fork-advanced' ? 'advanced' : 'json';
  const t0 = micros();
  const child = fork(childFile, [], { serialization });
  await once(child, 'message');
  const dt = micros() - t0;
  const exited = once(child, 'exit');
  child.disconnect();
  await exited;
  return dt;
}

const samples = [];
for (let i = 0; i < warmup + n; i++) {
  const dt = await once_();
  if (i >= warmup) samples.push(dt);
}
emit({ unit: 'us', samples });
