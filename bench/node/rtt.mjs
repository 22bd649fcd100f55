// Workload 3, message round trip: the parent sends a message, the task
// echoes it, the parent receives it. Payloads are bytes (a Uint8Array), or a
// string of the same length with the JSON serialization.
// Usage: rtt.mjs --mode worker-clone|worker-transfer|fork-json|fork-advanced --size BYTES --n N --warmup W
import { Worker } from 'node:worker_threads';
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { args, int, micros, emit, once } from './common.mjs';

const a = args();
const mode = a.mode;
const size = int(a, 'size', 16);
const n = int(a, 'n', 100);
const warmup = int(a, 'warmup', 10);

let task;
let send;
let close;
if (mode.startsWith('worker')) {
  const transfer = mode === 'worker-transfer';
  task = new Worker(fileURLToPath(new URL('./echo-worker.cjs', import.meta.url)), {
    workerData: { transfer },
  });
  send = transfer ? (m) => task.postMessage(m, [m.buffer]) : (m) => task.postMessage(m);
  close = () => task.terminate();
} else {
  const serialization = mode === 'fork-advanced' ? 'advanced' : 'json';
  task = fork(fileURLToPath(new URL('./echo-child.cjs', import.meta.url)), [], { serialization });
  send = (m) => task.send(m);
  close = async () => {
    const exited = once(task, 'exit');
    task.disconnect();
    await exited;
  };
}
await once(task, 'message'); // "ready"

// JSON cannot carry bytes as bytes: it gets a string of the same length.
let message = mode === 'fork-json' ? 'x'.repeat(size) : new Uint8Array(size).fill(0xab);
const samples = [];
for (let i = 0; i < warmup + n; i++) {
  const t0 = micros();
  const reply = once(task, 'message');
  send(message);
  message = await reply;
  const dt = micros() - t0;
  if (message.length !== size) throw new Error(`echo returned ${message.length} bytes, sent ${size}`);
  if (i >= warmup) samples.push(dt);
}
await close();
emit({ unit: 'us', samples });
