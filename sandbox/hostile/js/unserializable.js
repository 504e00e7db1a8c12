// Returns a Map holding a function: neither has a lossless Python value. Expected: EUNSERIALIZABLE.
function (datum) {
  return new Map([['f', function () {}]]);
}
