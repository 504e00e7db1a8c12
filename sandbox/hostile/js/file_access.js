// Tries every way a JS host exposes files to read the canary whose path is the datum.
// Must never return the file's text.
async function (path) {
  const tried = [];
  const attempts = [
    () => require('fs').readFileSync(path, 'utf8'),
    () => std.loadFile(path),
    () => os.open(path),
    () => Deno.readTextFileSync(path),
    () => Bun.file(path).text(),
    () => read(path),
    () => readFile(path),
    async () => (await import('fs')).readFileSync(path, 'utf8'),
    async () => (await import('qjs:std')).loadFile(path),
    async () => (await import('std')).loadFile(path),
    async () => (await fetch('file://' + path)).text(),
    () => { const x = new XMLHttpRequest(); x.open('GET', 'file://' + path, false); x.send(); return x.responseText; },
    () => Function('return this')().process.binding('fs'),
    () => this.constructor.constructor('return process')().mainModule.require('fs').readFileSync(path, 'utf8'),
  ];
  for (const attempt of attempts) {
    try {
      const text = await attempt();
      if (typeof text === 'string') return text;
      tried.push(`${attempt}: ${typeof text}`);
    } catch (e) {
      tried.push(String(e && e.message));
    }
  }
  throw new Error('no file access: ' + tried.join(' | '));
}
