// Probes for anything host-facing on the global object and through the prelude's internals.
// Returns the list of findings; the test expects an empty list.
function () {
  const found = [];
  const forbidden = ['process', 'std', 'os', 'Deno', 'Bun', 'fetch', 'XMLHttpRequest', 'WebSocket', 'Worker',
    'importScripts', 'print', 'scriptArgs', 'load', 'readFile', '__dcpHost', 'globalThis.__dcpHost'];
  for (const name of forbidden) if (typeof globalThis[name] !== 'undefined') found.push(name);
  for (const name of Object.getOwnPropertyNames(globalThis)) if (/dcp/i.test(name)) found.push(name);
  try { const F = (() => {}).constructor; if (F('return typeof __dcpHost')() !== 'undefined') found.push('Function->__dcpHost'); } catch (e) {}
  try { if (typeof require('fs') !== 'undefined') found.push('require(fs)'); } catch (e) {}
  return found;
}
