// Throws from a nested call. Expected: EUNCAUGHT with the message and a stack with line numbers.
function (datum) {
  function inner() {
    throw new TypeError('hostile throw');
  }
  return inner();
}
