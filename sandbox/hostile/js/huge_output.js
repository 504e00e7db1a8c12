// Returns 8 MiB of text, far more than the 1 MiB output quota. Expected: EOUTPUTLIMIT.
function (datum) {
  return 'x'.repeat(8 << 20);
}
