// Recurses without bound. Expected: a clean failure (RangeError "Maximum call stack size
// exceeded" -> EUNCAUGHT), never a crash of the evaluator.
function (datum) {
  function down(n) {
    return down(n + 1) + 1;
  }
  return down(0);
}
