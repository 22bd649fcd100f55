// A worker_threads peer task: says it is ready, then echoes every message
// (with `workerData.transfer`, hands the buffer back instead of copying it).
const { parentPort, workerData } = require('node:worker_threads');
const transfer = Boolean(workerData && workerData.transfer);
parentPort.on('message', (m) => {
  if (transfer) parentPort.postMessage(m, [m.buffer]);
  else parentPort.postMessage(m);
});
parentPort.postMessage('ready');
