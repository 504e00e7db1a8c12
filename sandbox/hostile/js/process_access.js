// Tries to start a process that would create the marker file named by the datum.
// The marker must not exist afterwards.
async function (marker) {
  const cmd = `touch ${marker}`;
  const tried = [];
  const attempts = [
    () => require('child_process').execSync(cmd),
    () => os.exec(['sh', '-c', cmd]),
    () => std.popen(cmd, 'r'),
    () => std.system(cmd),
    () => process.binding('spawn_sync'),
    () => new Deno.Command('sh', { args: ['-c', cmd] }).outputSync(),
    async () => (await import('child_process')).execSync(cmd),
    async () => (await import('qjs:os')).exec(['sh', '-c', cmd]),
    () => new Worker('data:,1'),
  ];
  for (const attempt of attempts) {
    try { await attempt(); tried.push('no error?'); } catch (e) { tried.push(String(e && e.message)); }
  }
  throw new Error('no process access: ' + tried.join(' | '));
}
