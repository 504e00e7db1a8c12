// Busy for 20 s without calling progress(). Expected: ENOPROGRESS at the 1 s progress timeout.
function (datum) {
  const end = Date.now() + 20000;
  let n = 0;
  while (Date.now() < end) n++;
  return n;
}
