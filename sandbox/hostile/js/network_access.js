// Tries every way a JS host exposes sockets to connect to [host, port] (the datum).
// No connection may arrive at the listening socket.
async function ([host, port]) {
  const url = `http://${host}:${port}/`;
  const tried = [];
  const attempts = [
    async () => fetch(url),
    () => { const x = new XMLHttpRequest(); x.open('GET', url, false); x.send(); },
    () => new WebSocket(`ws://${host}:${port}/`),
    () => require('net').connect(port, host),
    () => require('http').get(url),
    async () => (await import('net')).connect(port, host),
    () => os.socket,
    () => Deno.connect({ hostname: host, port }),
    () => navigator.sendBeacon(url, 'x'),
    () => { const img = new Image(); img.src = url; },
  ];
  for (const attempt of attempts) {
    try { await attempt(); tried.push('no error?'); } catch (e) { tried.push(String(e && e.message)); }
  }
  throw new Error('no network access: ' + tried.join(' | '));
}
