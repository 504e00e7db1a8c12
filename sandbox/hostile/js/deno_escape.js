// Looks for the engine host from inside the work: the Deno runtime (V8), or anything of the host
// reachable through the global object, its prototype chain, its symbols, import(), stack-trace
// call sites and Atomics. Returns what it found; the test expects an empty list on both engines.
async function () {
  const found = [];
  const g = globalThis;
  const hostNames = ['Deno', 'fetch', 'Request', 'Response', 'Headers', 'WebSocket', 'EventSource', 'Worker',
    'SharedWorker', 'MessageChannel', 'BroadcastChannel', 'postMessage', 'close', 'self', 'navigator', 'location',
    'caches', 'localStorage', 'sessionStorage', 'importScripts', 'addEventListener', 'dispatchEvent', 'onmessage',
    'process', 'Buffer', 'global', 'setImmediate', 'WebAssembly', 'URL', 'Blob', 'FileReader', 'reportError',
    '__bootstrap', 'Bun', 'std', 'os', 'print'];
  for (const name of hostNames) if (typeof g[name] !== 'undefined') found.push(name);
  // Everything inherited by the global object must be plain Object.prototype.
  for (let p = Object.getPrototypeOf(g); p && p !== Object.prototype; p = Object.getPrototypeOf(p)) {
    found.push('global prototype ' + Object.getOwnPropertyNames(p).join(','));
  }
  // Symbol-keyed properties of the global object: nothing in them may be replaced.
  for (const sym of Object.getOwnPropertySymbols(g)) {
    try { g[sym] = 1; if (g[sym] === 1) found.push('writable ' + String(sym)); } catch (e) { /* frozen: fine */ }
  }
  // import() of anything of the host: node: built-ins, files, the network, packages, runtime internals.
  const specifiers = ['node:fs', 'fs', 'node:process', 'node:child_process', 'node:worker_threads', 'node:vm',
    'node:net', 'node:os', 'node:module', 'node:sqlite', 'file:///etc/passwd', 'https://example.com/x.js',
    'npm:left-pad', 'jsr:@std/fs', 'ext:core/mod.js', 'data:text/javascript,import "node:fs"; export default 1'];
  for (const spec of specifiers) {
    try { await import(spec); found.push(`import(${spec})`); } catch (e) { /* refused: fine */ }
  }
  // A module from a data: URL runs in the same stripped realm.
  try {
    const m = await import('data:text/javascript,export default typeof Deno + typeof fetch');
    if (m.default !== 'undefinedundefined') found.push('data: module sees ' + m.default);
  } catch (e) { /* no import() at all: fine */ }
  // Call sites of a stack trace: the frames below the work are the prelude's and the host's.
  try {
    Error.prepareStackTrace = (e, sites) => sites.map((s) => [s.getFunction && s.getFunction(), s.getThis && s.getThis()]);
    const sites = new Error('x').stack;
    for (const [fn, self] of Array.isArray(sites) ? sites.slice(1) : []) {  // [0] is this very function
      if (typeof fn === 'function' && /^__dcp|^host$/.test(fn.name)) found.push('call site ' + fn.name);
      if (typeof fn === 'function' && /Deno|writeSync|readSync/.test(Function.prototype.toString.call(fn))) found.push('call site ' + fn.name);
      if (self && typeof self === 'object' && self !== g) found.push('call site this ' + Object.keys(self).slice(0, 5));
    }
  } catch (e) { /* no structured call sites: fine */ } finally {
    try { delete Error.prepareStackTrace; } catch (e) { /* locked: fine */ }
  }
  // Blocking on shared memory would hold the engine thread outside the engine's control.
  try { Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10); found.push('Atomics.wait blocks'); } catch (e) { /* refused */ }
  return found;
}
