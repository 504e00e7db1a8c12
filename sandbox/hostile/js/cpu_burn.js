// Burns CPU for 10 s. Expected: ECPULIMIT at the 1 s CPU-time limit.
function (datum) {
  const end = Date.now() + 10000;
  let n = 0;
  while (Date.now() < end) n++;
  return n;
}
