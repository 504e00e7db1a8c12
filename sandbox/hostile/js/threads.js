// Tries to start threads that would outlive the slice (Worker, node:worker_threads) and to block
// the engine's thread on shared memory. Expected: all refused; returns the refusals' error names.
async function () {
  const refused = [];
  const attempts = [
    () => new Worker('data:text/javascript,for(;;){}', { type: 'module' }),
    async () => new (await import('node:worker_threads')).Worker('for(;;){}', { eval: true }),
    () => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0),
  ];
  for (const attempt of attempts) {
    try { await attempt(); } catch (e) { refused.push(e.name); }
  }
  return refused;
}
