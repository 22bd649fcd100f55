// A child_process.fork peer task: says it is ready, then echoes every
// message, until the parent disconnects.
process.on('message', (m) => process.send(m));
process.send('ready');
