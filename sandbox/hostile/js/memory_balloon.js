// Allocates without bound (the exact case). Expected: EMEMORYLIMIT under a 64 MiB limit.
function (datum) {
  let a = [];
  for (;;) a.push(new Array(1e6));
}
