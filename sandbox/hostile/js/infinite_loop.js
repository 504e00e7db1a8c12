// Spins forever, and swallows any catchable error on the way: only the engine interrupt
// (uncatchable) or the runner's wall-time kill may end it. Expected: ESLICETOOSLOW.
function (datum) {
  for (;;) {
    try { while (true) {} } catch (e) { /* keep spinning */ }
  }
}
