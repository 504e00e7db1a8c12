// map-basic prelude: evaluated once in every fresh QuickJS context, before any job code.
//
// It builds DCP's sandbox globals (progress, console, work.emit/reject, require, timers,
// TextEncoder/TextDecoder, structuredClone, crypto.getRandomValues) on top of the bare
// engine, and returns ONE dispatcher function that the Python side (engine.py) calls with an
// operation name. Nothing else of the prelude is reachable from job code: the Python callback
// is captured here and deleted from the global object.
//
// Values cross the boundary as text only ("0"/"1" flag + JSON, see marshal.py), never through
// the binding's implicit conversion (it corrupts integers beyond 32 bits and truncates strings
// at NUL). Every function that may appear in a stack trace is named __dcp* so that
// cleanStack() can drop prelude frames from the traces users see.
(function __dcpPrelude(host, nextSlice) {
  'use strict';
  const G = globalThis;
  delete G.__dcpHost;  // job code must not call the host directly
  delete G.__dcpNext;
  // Captured now so job code that replaces globals cannot break the marshalling.
  const stringify = JSON.stringify, parse = JSON.parse;
  const isArray = Array.isArray, getProto = Object.getPrototypeOf, hasOwn = Object.hasOwn;
  const defineProperty = Object.defineProperty, keysOf = Object.keys, freeze = Object.freeze;
  const ObjectProto = Object.prototype, U8 = Uint8Array, AB = ArrayBuffer;
  const toBase64 = Uint8Array.prototype.toBase64, fromBase64 = Uint8Array.fromBase64;
  const TypedArray = getProto(Uint8Array);
  const fromCharCode = String.fromCharCode, indirectEval = eval, now = Date.now;
  // Job code may replace these methods: what block mode uses is captured now.
  const apply = Reflect.apply, splitString = String.prototype.split, regexExec = RegExp.prototype.exec;
  // What turns datums and results into values and back, and runs the timers: job code that
  // replaces String, Number, BigInt, String.prototype.slice or the array iterator (which
  // destructuring and spreading call) must not change the values the next slices get.
  const StringOf = String, NumberOf = Number, BigIntOf = BigInt, sliceString = String.prototype.slice;
  const bigintToString = BigInt.prototype.toString, popArray = Array.prototype.pop, max = Math.max;
  const BooleanOf = Boolean, MapOf = Map, SetOf = Set, ErrorOf = Error, PromiseOf = Promise;
  const resolvePromise = Promise.resolve, thenPromise = Promise.prototype.then;
  const { get: mapGet, set: mapSet, delete: mapDelete } = Map.prototype;
  const mapSize = Reflect.getOwnPropertyDescriptor(Map.prototype, 'size').get;
  // `instanceof` looks up the constructor's Symbol.hasInstance, which job code may define: the
  // built-in check, called directly (a built-in constructor's prototype cannot be replaced).
  const hasInstance = Function.prototype[Symbol.hasInstance];
  const isA = (C, v) => apply(hasInstance, C, [v]);
  const TAG = '\u0000dcp';
  const MAX_SAFE = Number.MAX_SAFE_INTEGER;

  // --- values ------------------------------------------------------------------------------
  function __dcpCtorName(v) {
    try {
      const c = v.constructor;
      return (c && typeof c.name === 'string' && c.name) || 'Object';
    } catch (_) { return 'Object'; }
  }

  function __dcpUnserializable(key, what, hint) {
    const where = key === '' ? 'the value' : `the value at key ${stringify(String(key))}`;
    const e = new TypeError(`${where} is ${what}, which cannot cross the sandbox boundary; ${hint}`);
    e.name = 'DataCloneError';
    return e;
  }

  const PLAIN_HINT = 'return plain data (objects, arrays, numbers, strings, booleans, null, BigInt, ' +
    'Uint8Array/ArrayBuffer)';
  let tagged = false;
  // Output budget of one encoding (the slice's output limit): every value the replacer sees adds
  // at least a byte, a string its length. A small value that expands hugely when written out
  // ([a, a] nested 40 deep) stops here at the limit, not after minutes of CPU or out of memory.
  let outputCap = Infinity, encodeBudget = Infinity;  // the budget is finite only while a result encodes
  const OUTPUT_OVER = new RangeError('over the output limit');
  function __dcpReplacer(key, v) {
    if (--encodeBudget < 0) throw OUTPUT_OVER;
    if (key !== '' && !isArray(this) && (encodeBudget -= key.length) < 0) throw OUTPUT_OVER;
    switch (typeof v) {
      case 'string':
        if ((encodeBudget -= v.length) < 0) throw OUTPUT_OVER;
        return v;
      case 'number':
        if (v !== v || v === Infinity || v === -Infinity || v > MAX_SAFE || v < -MAX_SAFE) {
          tagged = true;
          return { [TAG]: ['f', StringOf(v)] };
        }
        return v;
      case 'bigint':
        tagged = true;
        return { [TAG]: ['n', apply(bigintToString, v, [16])] };  // hex: the host reads any size exactly
      case 'undefined':
        return null;
      case 'function':
        throw __dcpUnserializable(key, `a function (${v.name || 'anonymous'})`, PLAIN_HINT);
      case 'symbol':
        throw __dcpUnserializable(key, 'a Symbol', PLAIN_HINT);
      case 'object': {
        if (v === null || isArray(v)) return v;
        const proto = getProto(v);
        if (proto === ObjectProto || proto === null) {
          if (hasOwn(v, TAG)) throw __dcpUnserializable(key, 'an object with the reserved key "\\u0000dcp"', 'rename the key');
          return v;
        }
        if (isA(U8, v) || isA(AB, v)) {
          tagged = true;
          const b64 = apply(toBase64, isA(U8, v) ? v : new U8(v), []);
          encodeBudget += b64.length - (v.byteLength + 8);  // bytes cross as bytes: charge those, not base64
          return { [TAG]: ['b', b64] };
        }
        if (isA(NumberOf, v) || isA(StringOf, v) || isA(BooleanOf, v)) return v;
        if (isA(MapOf, v)) throw __dcpUnserializable(key, 'a Map', 'convert it with Object.fromEntries(map) or [...map]');
        if (isA(SetOf, v)) throw __dcpUnserializable(key, 'a Set', 'convert it with [...set]');
        if (isA(TypedArray, v)) {
          throw __dcpUnserializable(key, `a ${__dcpCtorName(v)}`,
            'convert it with Array.from(x), or to bytes with new Uint8Array(x.buffer, x.byteOffset, x.byteLength)');
        }
        if (isA(ErrorOf, v)) throw __dcpUnserializable(key, `an ${__dcpCtorName(v)}`, 'throw it instead, or return {name, message}');
        throw __dcpUnserializable(key, `a ${__dcpCtorName(v)} instance`, `${PLAIN_HINT}: copy it with {...obj} or give the class a toJSON() method`);
      }
      default:
        return v;
    }
  }

  function __dcpEncode(v) {
    const t = typeof v;
    if ((t === 'number' && v <= MAX_SAFE && v >= -MAX_SAFE) || t === 'string' || t === 'boolean' || v === null) {
      return '0' + stringify(v);  // fast path: scalars need no replacer (NaN fails the range test)
    }
    tagged = false;
    const text = stringify(v, __dcpReplacer);
    return (tagged ? '1' : '0') + text;
  }

  function __dcpReviver(k, v) {
    if (v !== null && typeof v === 'object' && !isArray(v) && hasOwn(v, TAG)) {
      const tag = v[TAG], kind = tag[0], data = tag[1];  // indexed, not destructured (see above)
      if (kind === 'b') return fromBase64(data);
      if (kind === 'n') return data[0] === '-' ? -BigIntOf('0x' + apply(sliceString, data, [1])) : BigIntOf('0x' + data);
      if (kind === 'f') return NumberOf(data);
    }
    return v;
  }

  function __dcpDecode(text) {
    const body = apply(sliceString, text, [1]);
    return text[0] === '1' ? parse(body, __dcpReviver) : parse(body);
  }

  // --- console formatting (node-like, small) -----------------------------------------------
  function __dcpInspect(v, depth, seen) {
    switch (typeof v) {
      case 'string': return depth === 0 ? v : stringify(v);
      case 'number': return Object.is(v, -0) ? '-0' : String(v);
      case 'bigint': return `${v}n`;
      case 'undefined': return 'undefined';
      case 'boolean': return String(v);
      case 'symbol': return v.toString();
      case 'function': return `[Function: ${v.name || '(anonymous)'}]`;
    }
    if (v === null) return 'null';
    if (seen.includes(v)) return '[Circular]';
    try {
      if (v instanceof Error) {  // its frames as a slice error's: the work's only, in one format on both engines
        const frames = __dcpCleanStack(v.stack);
        return frames ? `${v.name}: ${v.message}\n${frames}` : `${v.name}: ${v.message}`;
      }
      if (v instanceof Date) return isNaN(v) ? 'Invalid Date' : v.toISOString();
      if (v instanceof RegExp) return String(v);
      if (depth > 2) return isArray(v) ? '[Array]' : `[${__dcpCtorName(v)}]`;
      const inner = seen.concat([v]);
      const show = (x) => __dcpInspect(x, depth + 1, inner);
      if (isArray(v)) {
        const items = v.slice(0, 100).map(show);
        if (v.length > 100) items.push(`... ${v.length - 100} more items`);
        return items.length ? `[ ${items.join(', ')} ]` : '[]';
      }
      if (v instanceof TypedArray) {
        const items = Array.from(v.subarray(0, 100), show);
        if (v.length > 100) items.push(`... ${v.length - 100} more items`);
        return `${__dcpCtorName(v)}(${v.length}) [ ${items.join(', ')} ]`;
      }
      if (v instanceof AB) return `ArrayBuffer { byteLength: ${v.byteLength} }`;
      if (v instanceof Map) return `Map(${v.size}) { ${Array.from(v, ([k, x]) => `${show(k)} => ${show(x)}`).join(', ')} }`;
      if (v instanceof Set) return `Set(${v.size}) { ${Array.from(v, show).join(', ')} }`;
      if (v instanceof Promise) return 'Promise { <pending> }';
      const body = keysOf(v).map((k) => `${/^[A-Za-z_$][\w$]*$/.test(k) ? k : stringify(k)}: ${show(v[k])}`);
      const proto = getProto(v);
      const prefix = proto === ObjectProto || proto === null ? '' : `${__dcpCtorName(v)} `;
      return body.length ? `${prefix}{ ${body.join(', ')} }` : `${prefix}{}`;
    } catch (_) {
      return '[object]';
    }
  }

  function __dcpFormat(args) {
    let rest = args;
    let out = [];
    if (typeof args[0] === 'string' && args[0].includes('%')) {
      let i = 1;
      const first = args[0].replace(/%([sdifjoOc%])/g, (m, c) => {
        if (c === '%') return '%';
        if (i >= args.length) return m;
        const a = args[i++];
        switch (c) {
          case 's': return typeof a === 'string' ? a : __dcpInspect(a, 1, []);
          // As Node: a value that is no number (a Symbol) prints NaN; console never fails a slice.
          case 'd': case 'i': if (typeof a === 'bigint') return `${a}n`;
            try { return StringOf(c === 'i' ? parseInt(a) : NumberOf(a)); } catch (_) { return 'NaN'; }
          case 'f': try { return StringOf(parseFloat(a)); } catch (_) { return 'NaN'; }
          case 'j': try { return stringify(a); } catch (_) { return '[Circular]'; }
          case 'c': return '';
          default: return __dcpInspect(a, 1, []);
        }
      });
      out.push(first);
      rest = args.slice(i);
    } else if (args.length) {
      out.push(__dcpInspect(args[0], 0, []));
      rest = args.slice(1);
    }
    for (const a of rest) out.push(__dcpInspect(a, 0, []));
    return out.join(' ');
  }

  // --- host calls --------------------------------------------------------------------------
  // host(op, a, b) returns null on success, a result string, or "!message" on failure.
  // The binding cannot convert "rope" strings (long strings built by concatenation: it raises
  // "Unknown quickjs tag: -6"), so every string handed to Python is flattened first.
  const join = Array.prototype.join;
  // (Through the captured apply: job code may replace Function.prototype.call, and a reply is
  // flattened after a limit tripped, when no deadline is left to stop what it runs.)
  function __dcpFlat(s) { return typeof s === 'string' ? apply(join, [s], ['']) : s; }

  function __dcpHostCall(op, a, b) {
    const r = host(op, __dcpFlat(a), __dcpFlat(b));
    if (typeof r === 'string' && r[0] === '!') throw new ErrorOf(apply(sliceString, r, [1]));
    return r;
  }
  // The slice settled: a host sleeping until the next timer looks again now (V8's loop may have
  // polled just before a promise the runtime settled, a WebAssembly compilation's, ran on).
  function __dcpWake() { host('wake'); }

  let rejected;  // the reason text once work.reject() was called in the current slice
  const REJECT = freeze({ toString() { return 'work.reject() was called'; } });

  // Block mode ('block', QuickJS): the host hears of a slice's progress only when it matters, at
  // most every PROGRESS_QUIET_MS of the slice's time (its watchdog deadline moves by that much at
  // most) and for any value the host must judge (out of range, backwards: it gets the last value
  // it did not hear of as the third argument, so its verdict is the same as one call per slice).
  const PROGRESS_QUIET_MS = 20;
  const PERCENT = /^\s*(\d+(?:\.\d+)?)\s*%\s*$/;  // worktime.py _PERCENT
  let blockMode = false, lastHeard = 0, lastValue = -1;

  function progress(value) {
    if (blockMode && typeof value === 'string') {
      // A 'NN%' the host accepts moves the highest value too (later numbers are judged against it).
      const m = apply(regexExec, PERCENT, [value]);
      if (m !== null && m[1] / 100 <= 1 && m[1] / 100 > lastValue) lastValue = m[1] / 100;
    }
    if (blockMode && (value === undefined || (typeof value === 'number' && value >= 0 && value >= lastValue && value <= 1))) {
      if (value !== undefined) lastValue = value;
      const t = now();
      if (t - lastHeard < PROGRESS_QUIET_MS) return true;
      lastHeard = t;
    }
    let text;
    try { text = value === undefined ? '0null' : __dcpEncode(value); } catch (_) { text = __dcpEncode(StringOf(value)); }
    const r = __dcpHostCall('progress', text, blockMode && lastValue >= 0 ? StringOf(lastValue) : undefined);
    if (r === 'h' && blockMode) __dcpHandOver();  // a long slice: the results of those before it go on now
    return true;
  }

  const consoleObject = {};
  for (const level of ['log', 'debug', 'info', 'warn', 'error']) {
    consoleObject[level] = function (...args) { __dcpHostCall('console', level, stringify(__dcpFormat(args))); };
  }
  consoleObject.trace = function (...args) {
    const stack = new Error().stack.split('\n').slice(1).join('\n');
    __dcpHostCall('console', 'debug', stringify(`Trace: ${__dcpFormat(args)}\n${stack}`));
  };
  consoleObject.dir = consoleObject.log;
  consoleObject.assert = function (cond, ...args) {
    if (!cond) __dcpHostCall('console', 'error', stringify(`Assertion failed${args.length ? ': ' + __dcpFormat(args) : ''}`));
  };

  const workObject = {
    emit(name, value) {
      if (typeof name !== 'string' || !name) throw new TypeError('work.emit(name, value): name must be a non-empty string');
      __dcpHostCall('emit', stringify(name), __dcpEncode(value === undefined ? null : value));
    },
    reject(reason) {
      let text;
      try { text = reason instanceof Error ? reason.message : typeof reason === 'string' ? reason : __dcpInspect(reason, 1, []); } catch (_) { text = 'rejected'; }
      rejected = text;
      __dcpWake();
      throw REJECT;
    },
  };

  // --- timers (driven by the host loop: it sleeps until the next one is due) ----------------
  // `timers` holds the live timers; `dueHeap` is a binary min-heap of [due, id] so that finding
  // the next one costs O(log n), not a scan (10 000 timers took minutes). Cleared or rescheduled
  // timers leave stale heap entries, skipped when they surface.
  let timers = new MapOf();
  let dueHeap = [];
  let nextTimerId = 1;
  let uncaught;  // first error thrown by a timer callback in this slice
  function __dcpResetTimers() { timers = new MapOf(); dueHeap = []; }
  function __dcpBefore(a, b) { return a[0] < b[0] || (a[0] === b[0] && a[1] < b[1]); }
  // Defined, not pushed or assigned: Array.prototype's push, or a setter at that index, may be job code's.
  function __dcpAppend(list, item) {
    defineProperty(list, list.length, { value: item, writable: true, enumerable: true, configurable: true });
  }
  function __dcpHeapPush(entry) {
    const h = dueHeap;
    let i = h.length;
    __dcpAppend(h, entry);
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!__dcpBefore(h[i], h[parent])) break;
      const swap = h[i]; h[i] = h[parent]; h[parent] = swap;
      i = parent;
    }
  }
  function __dcpHeapPop() {
    const h = dueHeap, last = apply(popArray, h, []);
    if (h.length === 0) return;
    h[0] = last;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1, r = l + 1;
      let m = i;
      if (l < h.length && __dcpBefore(h[l], h[m])) m = l;
      if (r < h.length && __dcpBefore(h[r], h[m])) m = r;
      if (m === i) break;
      const swap = h[i]; h[i] = h[m]; h[m] = swap;
      i = m;
    }
  }
  function __dcpAddTimer(fn, delay, args, repeat) {
    if (typeof fn !== 'function') throw new TypeError('timer callback must be a function (code strings are not supported)');
    const ms = max(0, NumberOf(delay) || 0);
    const id = nextTimerId++;
    const t = { fn, args, due: now() + ms, every: repeat ? max(1, ms) : 0 };
    apply(mapSet, timers, [id, t]);
    __dcpHeapPush([t.due, id]);
    return id;
  }
  function setTimeout(fn, delay, ...args) { return __dcpAddTimer(fn, delay, args, false); }
  function setInterval(fn, delay, ...args) { return __dcpAddTimer(fn, delay, args, true); }
  function clearTimeout(id) {
    // Stale entries wait in the heap until they surface: a debounce loop (set, clear, set, ...)
    // must not grow it without bound, so rebuild it from the live timers now and then.
    if (apply(mapDelete, timers, [id]) && dueHeap.length > 2 * apply(mapSize, timers, []) + 64) {
      const old = dueHeap;
      dueHeap = [];
      for (let k = 0; k < old.length; k++) {
        const t = apply(mapGet, timers, [old[k][1]]);
        if (t !== undefined && t.due === old[k][0]) __dcpHeapPush(old[k]);
      }
    }
  }

  function __dcpNextTimer() {
    while (dueHeap.length) {
      const due = dueHeap[0][0], id = dueHeap[0][1];
      const t = apply(mapGet, timers, [id]);
      if (t !== undefined && t.due === due) return [id, t];
      __dcpHeapPop();  // cleared, or rescheduled under a later entry
    }
    return undefined;
  }
  function __dcpFireTimer() {
    const best = __dcpNextTimer();
    if (!best || best[1].due > now()) return false;
    const id = best[0], t = best[1];
    __dcpHeapPop();
    if (t.every) { t.due = now() + t.every; __dcpHeapPush([t.due, id]); } else apply(mapDelete, timers, [id]);
    try { apply(t.fn, undefined, t.args); } catch (e) { if (uncaught === undefined) uncaught = e; }
    return true;
  }

  // --- crypto / text / clone ---------------------------------------------------------------
  function getRandomValues(ta) {
    if (!(ta instanceof TypedArray) || ta instanceof Float32Array || ta instanceof Float64Array ||
        (typeof Float16Array === 'function' && ta instanceof Float16Array)) {
      throw new TypeError('crypto.getRandomValues: argument must be an integer TypedArray');
    }
    if (ta.byteLength > 65536) {
      throw new DOMException(`crypto.getRandomValues: ${ta.byteLength} bytes requested, at most 65536 allowed`, 'QuotaExceededError');
    }
    if (ta.byteLength) new U8(ta.buffer, ta.byteOffset, ta.byteLength).set(fromBase64(__dcpHostCall('random', ta.byteLength)));
    return ta;
  }
  function randomUUID() {
    const b = getRandomValues(new U8(16));
    b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  function __dcpBytesOf(input) {
    if (input === undefined) return new U8(0);
    if (input instanceof U8) return input;
    if (input instanceof AB || (typeof SharedArrayBuffer === 'function' && input instanceof SharedArrayBuffer)) return new U8(input);
    if (ArrayBuffer.isView(input)) return new U8(input.buffer, input.byteOffset, input.byteLength);
    throw new TypeError('TextDecoder.decode: expected an ArrayBuffer, a TypedArray or a DataView');
  }

  function __dcpUtf8Encode(s) {
    s = String(s).toWellFormed();
    const out = new U8(s.length * 3);
    let n = 0;
    for (let i = 0; i < s.length; i++) {
      let c = s.charCodeAt(i);
      if (c < 0x80) { out[n++] = c; continue; }
      if (c < 0x800) { out[n++] = 0xc0 | (c >> 6); out[n++] = 0x80 | (c & 63); continue; }
      if (c >= 0xd800 && c <= 0xdbff) {
        c = 0x10000 + ((c - 0xd800) << 10) + (s.charCodeAt(++i) - 0xdc00);
        out[n++] = 0xf0 | (c >> 18); out[n++] = 0x80 | ((c >> 12) & 63);
        out[n++] = 0x80 | ((c >> 6) & 63); out[n++] = 0x80 | (c & 63);
        continue;
      }
      out[n++] = 0xe0 | (c >> 12); out[n++] = 0x80 | ((c >> 6) & 63); out[n++] = 0x80 | (c & 63);
    }
    return out.slice(0, n);
  }

  function __dcpUtf8Decode(bytes, fatal) {
    let out = '', units = [];
    const n = bytes.length;
    let i = 0;
    while (i < n) {
      const b = bytes[i];
      if (b < 0x80) { units.push(b); i++; } else {
        let need, cp, lower = 0x80, upper = 0xbf;
        if (b >= 0xc2 && b <= 0xdf) { need = 1; cp = b & 0x1f; }
        else if (b >= 0xe0 && b <= 0xef) { need = 2; cp = b & 0x0f; if (b === 0xe0) lower = 0xa0; if (b === 0xed) upper = 0x9f; }
        else if (b >= 0xf0 && b <= 0xf4) { need = 3; cp = b & 0x07; if (b === 0xf0) lower = 0x90; if (b === 0xf4) upper = 0x8f; }
        else need = -1;
        let j = i + 1, ok = need > 0;
        for (let k = 0; ok && k < need; k++, j++) {
          const c = bytes[j];
          if (j >= n || c < lower || c > upper) { ok = false; break; }
          cp = (cp << 6) | (c & 0x3f); lower = 0x80; upper = 0xbf;
        }
        if (!ok) {
          if (fatal) throw new TypeError('TextDecoder: the encoded data was not valid utf-8');
          units.push(0xfffd);
          i = need > 0 ? j : i + 1;  // WHATWG: replace the maximal invalid subpart, then resync
        } else {
          i = j;
          if (cp > 0xffff) { cp -= 0x10000; units.push(0xd800 + (cp >> 10), 0xdc00 + (cp & 0x3ff)); } else units.push(cp);
        }
      }
      if (units.length >= 8192) { out += fromCharCode.apply(null, units); units = []; }
    }
    return out + fromCharCode.apply(null, units);
  }

  class TextEncoder {
    get encoding() { return 'utf-8'; }
    encode(input = '') { return __dcpUtf8Encode(input); }
    encodeInto(source, destination) {
      const bytes = __dcpUtf8Encode(source);
      // Never split a character: back off to the last complete UTF-8 sequence that fits.
      let n = Math.min(bytes.length, destination.length);
      while (n > 0 && n < bytes.length && (bytes[n] & 0xc0) === 0x80) n--;
      destination.set(bytes.subarray(0, n));
      return { read: __dcpUtf8Decode(bytes.subarray(0, n), false).length, written: n };
    }
  }

  const UTF8_LABELS = ['utf-8', 'utf8', 'unicode-1-1-utf-8', 'unicode11utf8', 'unicode20utf8', 'x-unicode20utf8'];
  // Bytes at the end of `bytes` that begin a valid but unfinished sequence: with {stream: true}
  // they wait for the next chunk instead of decoding as U+FFFD.
  function __dcpUnfinishedTail(bytes) {
    const n = bytes.length;
    for (let p = n - 1; p >= 0 && p >= n - 3; p--) {
      const b = bytes[p];
      if (b >= 0x80 && b <= 0xbf) continue;  // a continuation byte: look further back for the lead
      const need = b >= 0xc2 && b <= 0xdf ? 1 : b >= 0xe0 && b <= 0xef ? 2 : b >= 0xf0 && b <= 0xf4 ? 3 : 0;
      if (need === 0 || n - p - 1 >= need) return 0;
      if (n - p > 1) {  // the first continuation has a narrower range after some leads
        const c = bytes[p + 1];
        const lower = b === 0xe0 ? 0xa0 : b === 0xf0 ? 0x90 : 0x80;
        const upper = b === 0xed ? 0x9f : b === 0xf4 ? 0x8f : 0xbf;
        if (c < lower || c > upper) return 0;
      }
      return n - p;
    }
    return 0;
  }

  class TextDecoder {
    #fatal; #ignoreBOM; #pending = null; #started = false;
    constructor(label = 'utf-8', options = {}) {
      if (!UTF8_LABELS.includes(String(label).trim().toLowerCase())) {
        throw new RangeError(`TextDecoder: encoding ${stringify(String(label))} is not supported; only utf-8 is available in map-basic`);
      }
      this.#fatal = Boolean(options && options.fatal);
      this.#ignoreBOM = Boolean(options && options.ignoreBOM);
    }
    get encoding() { return 'utf-8'; }
    get fatal() { return this.#fatal; }
    get ignoreBOM() { return this.#ignoreBOM; }
    decode(input, options) {
      const stream = Boolean(options && options.stream);
      let bytes = __dcpBytesOf(input);
      if (this.#pending) {
        const joined = new U8(this.#pending.length + bytes.length);
        joined.set(this.#pending);
        joined.set(bytes, this.#pending.length);
        bytes = joined;
        this.#pending = null;
      }
      if (stream) {
        const keep = __dcpUnfinishedTail(bytes);
        if (keep) {
          this.#pending = bytes.slice(bytes.length - keep);
          bytes = bytes.subarray(0, bytes.length - keep);
        }
      }
      let out = __dcpUtf8Decode(bytes, this.#fatal);
      // The BOM is dropped once, at the start of the stream (it may arrive split across chunks).
      if (!this.#started && out.length) {
        this.#started = true;
        if (!this.#ignoreBOM && out.charCodeAt(0) === 0xfeff) out = out.slice(1);
      }
      if (!stream) this.#started = false;  // a call without {stream: true} ends the stream
      return out;
    }
  }

  function structuredClone(value, options) {
    if (options && options.transfer && options.transfer.length) {
      throw new DOMException('structuredClone: transfer lists are not supported in map-basic', 'DataCloneError');
    }
    const memo = new Map();
    function __dcpClone(v) {
      if (typeof v === 'function') throw new DOMException(`${v.name || 'function'} could not be cloned.`, 'DataCloneError');
      if (typeof v === 'symbol') throw new DOMException('Symbol could not be cloned.', 'DataCloneError');
      if (v === null || typeof v !== 'object') return v;
      if (memo.has(v)) return memo.get(v);
      let out;
      if (isArray(v)) {
        out = new Array(v.length); memo.set(v, out);
        for (const k of keysOf(v)) out[k] = __dcpClone(v[k]);
        return out;
      }
      if (v instanceof Date) out = new Date(v.getTime());
      else if (v instanceof RegExp) out = new RegExp(v.source, v.flags);
      else if (v instanceof Boolean || v instanceof Number || v instanceof String || v instanceof BigInt) out = Object(v.valueOf());
      else if (v instanceof AB) out = v.slice(0);
      else if (ArrayBuffer.isView(v)) {
        const buf = __dcpClone(v.buffer);
        out = v instanceof DataView ? new DataView(buf, v.byteOffset, v.byteLength) : new v.constructor(buf, v.byteOffset, v.length);
      } else if (v instanceof Map) {
        out = new Map(); memo.set(v, out);
        for (const [k, x] of v) out.set(__dcpClone(k), __dcpClone(x));
        return out;
      } else if (v instanceof Set) {
        out = new Set(); memo.set(v, out);
        for (const x of v) out.add(__dcpClone(x));
        return out;
      } else if (v instanceof Error) {
        const Ctor = { EvalError, RangeError, ReferenceError, SyntaxError, TypeError, URIError }[v.name] || Error;
        out = new Ctor(v.message);
        memo.set(v, out);
        if (v.stack !== undefined) out.stack = String(v.stack);
        if ('cause' in v) out.cause = __dcpClone(v.cause);
        return out;
      } else if (v instanceof Promise || v instanceof WeakMap || v instanceof WeakSet || v instanceof WeakRef) {
        throw new DOMException(`${__dcpCtorName(v)} object could not be cloned.`, 'DataCloneError');
      } else {
        out = {}; memo.set(v, out);
        for (const k of keysOf(v)) out[k] = __dcpClone(v[k]);
        return out;
      }
      memo.set(v, out);
      return out;
    }
    return __dcpClone(value);
  }

  // --- require (CommonJS over the job's modules; no file system) ----------------------------
  let moduleSources = {};
  let moduleCache = new Map();
  function __dcpNormalize(path) {
    const out = [];
    for (const part of String(path).split('/')) {
      if (part === '' || part === '.') continue;
      if (part === '..') out.pop(); else out.push(part);
    }
    return out.join('/');
  }
  function __dcpResolve(name, fromDir) {
    if (typeof name !== 'string' || !name) throw new TypeError('require(name): name must be a non-empty string');
    const relative = name.startsWith('./') || name.startsWith('../');
    const base = __dcpNormalize(relative ? `${fromDir}/${name}` : name);
    for (const candidate of [base, `${base}.js`, `${base}.json`, `${base}/index.js`]) {
      if (hasOwn(moduleSources, candidate)) return candidate;
    }
    const shipped = keysOf(moduleSources);
    const e = new Error(`Cannot find module '${name}': this job ships ${shipped.length ? shipped.map((s) => `'${s}'`).join(', ') : 'no modules'}. ` +
      'require() only loads modules deployed with the job (there is no file system or npm in the sandbox); add it to the job\'s modules');
    e.code = 'MODULE_NOT_FOUND';
    return e;
  }
  function __dcpMakeRequire(fromDir) {
    const require = function __dcpRequire(name) {
      const key = __dcpResolve(name, fromDir);
      if (typeof key !== 'string') throw key;
      const cached = moduleCache.get(key);
      if (cached) return cached.exports;
      const module = { id: key, filename: key, loaded: false, exports: {} };
      moduleCache.set(key, module);
      try {
        const source = moduleSources[key];
        if (key.endsWith('.json')) {
          module.exports = parse(source);
        } else {
          const dir = key.includes('/') ? key.slice(0, key.lastIndexOf('/')) : '';
          // Wrapper on the module's first line, so stack line numbers are the module's own.
          const fn = indirectEval(`(function (exports, require, module, __filename, __dirname) {${source}\n})${SOURCE_URL}`);
          fn.call(module.exports, module.exports, __dcpMakeRequire(dir), module, key, dir);
        }
        module.loaded = true;
        return module.exports;
      } catch (e) {
        moduleCache.delete(key);
        throw e;
      }
    };
    return require;
  }

  // --- install the globals -----------------------------------------------------------------
  const globals = {
    progress, console: consoleObject, work: workObject, require: __dcpMakeRequire(''),
    setTimeout, setInterval, clearTimeout, clearInterval: clearTimeout,
    TextEncoder, TextDecoder, structuredClone,
    crypto: { getRandomValues, randomUUID },
  };
  for (const name of keysOf(globals)) {
    defineProperty(G, name, { value: globals[name], writable: true, configurable: true, enumerable: false });
  }

  // QuickJS-ng hands Error.prepareStackTrace call sites whose getFunction() returns strict
  // functions too (V8 gives undefined for those), which would let job code reach the prelude's
  // own functions. Where that happens the hook is switched off for good.
  function __dcpCallSitesLeak() {
    const saved = Error.prepareStackTrace;
    let leak = false;
    try {
      Error.prepareStackTrace = (_, sites) => sites;
      const sites = new Error('probe').stack;
      leak = isArray(sites) && sites.some((s) => typeof s.getFunction === 'function' && s.getFunction() === __dcpCallSitesLeak);
    } catch (_) {
      leak = true;
    } finally {
      Error.prepareStackTrace = saved;
    }
    return leak;
  }
  if (__dcpCallSitesLeak()) defineProperty(Error, 'prepareStackTrace', { value: undefined, writable: false, configurable: false });

  // --- errors ------------------------------------------------------------------------------
  const STACK_FRAMES = 30;
  // Frames only (V8 starts a stack with the "Name: message" lines, QuickJS does not), without the
  // prelude's and the engine host's own frames.
  // V8 writes frames of eval'd code as "at f (<input>, <anonymous>:3:15)", and an anonymous
  // function there as "at eval (...)": both become QuickJS's "at f (<input>:3:15)".
  // ... and V8's host (v8_host.js runs from a blob: URL) and Deno's own code (ext: URLs).
  const PRELUDE_FRAME = /\bat (?:async )?(?:\w+\.)?__dcp\w* |\bat eval \((?!<input>)|^\s*at <eval> \(<input>:1:|\((?:blob|ext):[^()]*\)$|\bat (?:blob|ext):/;
  // What runs here reaches the deployer as the slice's error: through captured functions only
  // (job code may have replaced the string, array and RegExp methods by then).
  const V8_FRAME = /\(<input>, <anonymous>:/, V8_EVAL = /\bat (async )?eval \(<input>:/, FRAME_LINE = /^\s+at /;
  const matches = (re, text) => apply(regexExec, re, [text]) !== null;
  function __dcpFrame(line) {
    let m = apply(regexExec, V8_FRAME, [line]);
    if (m !== null) line = apply(sliceString, line, [0, m.index]) + '(<input>:' + apply(sliceString, line, [m.index + m[0].length]);
    m = apply(regexExec, V8_EVAL, [line]);
    if (m !== null) {
      line = apply(sliceString, line, [0, m.index]) + 'at ' + (m[1] || '') + '<anonymous> (<input>:' +
        apply(sliceString, line, [m.index + m[0].length]);
    }
    return line;
  }
  function __dcpCleanStack(stack) {
    const lines = apply(splitString, StringOf(stack || ''), ['\n']);
    let first = 0;
    while (first < lines.length && !matches(FRAME_LINE, lines[first])) first++;
    let out = '', kept = 0;
    for (let k = first; k < lines.length && kept < STACK_FRAMES; k++) {
      const line = lines[k];
      if (!line || matches(PRELUDE_FRAME, line)) continue;
      out += (kept++ ? '\n' : '') + __dcpFrame(line);
    }
    return out;
  }
  function __dcpErrorEnvelope(e) {
    if (rejected !== undefined) return 'r' + stringify(rejected);
    let name = null, message, stack = '';
    try {
      if (isA(ErrorOf, e)) {
        name = StringOf(e.name); message = StringOf(e.message); stack = __dcpCleanStack(e.stack);
      } else {
        message = `uncaught ${typeof e === 'object' && e !== null ? __dcpCtorName(e) : typeof e} thrown: ${__dcpInspect(e, 1, [])}`;
      }
    } catch (_) {
      message = 'an unprintable value was thrown';
    }
    return 'e' + stringify({ name, message, stack });
  }
  function __dcpValueEnvelope(v) {
    if (rejected !== undefined) return 'r' + stringify(rejected);
    if (typeof v === 'number' && v <= MAX_SAFE && v >= -MAX_SAFE) return 'v0' + stringify(v);
    try {
      encodeBudget = outputCap;  // the result only: console and emit traffic is metered by the host
      const text = __dcpEncode(v);
      // A getter or toJSON that called work.reject() rejects the slice, caught there or not.
      return rejected !== undefined ? 'r' + stringify(rejected) : 'v' + text;
    } catch (e) {
      if (rejected !== undefined) return 'r' + stringify(rejected);
      if (e === OUTPUT_OVER) return 'o';
      let why;
      try {  // what a toJSON or getter threw may itself throw when printed (a throwing toString)
        why = StringOf(isA(ErrorOf, e) ? e.message : e);
      } catch (_) {
        why = 'encoding the result threw a value that cannot be printed';
      }
      return 'u' + stringify(why);
    } finally {
      encodeBudget = Infinity;
    }
  }

  // --- the job and the slice ---------------------------------------------------------------
  let workFn = null;
  let jobArguments = [];
  let spreadDatum = false;  // multi-dimensional jobs: work(...datum, ...jobArguments)
  let outcome;  // [settled?, value-or-error] of the current async slice

  // V8 names eval'd code after this comment; QuickJS calls all of it <input> anyway.
  const SOURCE_URL = '\n//# sourceURL=<input>';
  const EXPRESSION_START = /^\s*(\(|async\b|function\b|[A-Za-z_$][\w$]*\s*=>)/;
  // V8 tells JavaScript nothing about where a syntax error is (QuickJS puts it in the stack):
  // find the shortest prefix of the text that fails with the same message, parsed inside an
  // unclosed block (so it never runs, and nothing of ours follows it). A heuristic (a cut through a token can fail differently), so bounded and
  // only used when the engine gave no position.
  function __dcpSyntaxWhere(directive, text, message) {
    const failsTheSame = (n) => {
      try {
        indirectEval(`${directive}if (false) {\n${text.slice(0, n)}`);  // unclosed: never runs
        return false;
      } catch (e) {
        return e instanceof SyntaxError && e.message === message;
      }
    };
    if (text.length > 1e6 || !failsTheSame(text.length)) return '';
    let good = 0, bad = text.length;
    while (good + 1 < bad) {
      const mid = (good + bad) >> 1;
      if (failsTheSame(mid)) bad = mid; else good = mid;
    }
    const before = text.slice(0, bad);
    return `<input>:${before.split('\n').length}:${bad - before.lastIndexOf('\n') - 1}`;
  }

  function __dcpCompile(source, strict) {
    const prefix = strict ? '"use strict";' : '';
    let fn;
    try {
      fn = indirectEval(`${prefix}(${source}\n)${SOURCE_URL}`);
    } catch (first) {
      if (!(first instanceof SyntaxError)) return __dcpErrorEnvelope(first);
      try {
        fn = indirectEval(prefix + source + SOURCE_URL);   // a whole file whose last expression is the function
      } catch (second) {
        const expression = EXPRESSION_START.test(source);
        const e = expression ? first : second;
        if (!/<input>:\d/.test(String(e.stack))) {
          const where = __dcpSyntaxWhere(prefix, expression ? `(${source}\n)` : source, e.message);
          if (where) e.stack = `${e.name}: ${e.message}\n    at ${where}`;
        }
        return __dcpErrorEnvelope(e);
      }
    }
    if (typeof fn !== 'function') {
      return 'n' + stringify(fn === null ? 'null' : typeof fn);
    }
    workFn = fn;
    return '';
  }

  // The work's arguments, without spreading (the array iterator may be job code's).
  function __dcpArguments(first, rest) {
    const out = [];
    for (let k = 0; k < first.length; k++) __dcpAppend(out, first[k]);
    for (let k = 0; k < rest.length; k++) __dcpAppend(out, rest[k]);
    return out;
  }

  function __dcpStart(datumText) {
    rejected = undefined; outcome = undefined; uncaught = undefined;
    if (apply(mapSize, timers, []) || dueHeap.length) __dcpResetTimers();  // timers left by the previous slice never fire
    let r;
    try {
      const datum = __dcpDecode(datumText);
      r = jobArguments.length === 0 && !spreadDatum ? workFn(datum)
        : apply(workFn, undefined, __dcpArguments(spreadDatum && isArray(datum) ? datum : [datum], jobArguments));
      if (r !== null && (typeof r === 'object' || typeof r === 'function') && typeof r.then === 'function') {
        apply(thenPromise, apply(resolvePromise, PromiseOf, [r]),
          [(v) => { outcome = [true, v]; __dcpWake(); }, (e) => { outcome = [false, e]; __dcpWake(); }]);
        return 'p';
      }
    } catch (e) {
      return __dcpErrorEnvelope(e);
    }
    return __dcpValueEnvelope(r);
  }

  // Many synchronous slices in one call: the datums' texts, one per line (encoded text never holds
  // a raw newline). Before each slice the prelude calls nextSlice() (no arguments: the crossing
  // is the cost of a trivial slice): the host starts that slice's clocks, and for every slice but
  // the first it answers non-null to stop there when the slice that ended left jobs queued (they
  // run first, outside this call). A progress() call answered 'h' (the call has run for a while)
  // hands the envelopes held so far to the host ('held'), which sends their results on. The loop also stops after budgetMs, and at a slice whose result
  // is a promise (the host settles it as for 'start'), and once the envelopes held reach
  // maxHeld characters (they live in the engine's heap, under the job's memory limit, which each
  // result alone fits). The envelopes of the slices that ended go back together in the reply,
  // one per line (each is a kind letter and JSON: no raw newline):
  // 'd' (all ran) or 's' (stopped) + the envelopes of slices 0..k, the last one's jobs maybe still
  // queued; 'p' + those of slices 0..k-1 (slice k is pending). An interrupt (a limit) unwinds the
  // call: the host fetches the envelopes so far with 'ended' and fails the slice it was on.
  let ended = '';
  // The call runs long (the host answered 'h' to a progress() call): it takes the envelopes held
  // so far, and sends their results on.
  function __dcpHandOver() {
    host('held', __dcpFlat(ended));
    ended = '';
  }
  function __dcpBlock(text, budgetMs, maxHeld) {
    const items = apply(splitString, text, ['\n']);
    const t0 = now();
    ended = '';
    blockMode = true;
    try {
      for (let k = 0; k < items.length; k++) {
        if (k > 0 && (now() - t0 > budgetMs || ended.length >= maxHeld)) return 's' + ended;
        const r = nextSlice();
        if (r != null) {
          if (r[0] === '!') throw new ErrorOf(apply(sliceString, r, [1]));
          return 's' + ended;
        }
        lastHeard = now(); lastValue = -1;
        const envelope = __dcpStart(items[k]);
        if (envelope === 'p') return 'p' + ended;
        ended = ended !== '' ? ended + '\n' + envelope : envelope;  // '' after a hand-over
      }
      return 'd' + ended;
    } finally {
      blockMode = false;
    }
  }

  function __dcpPoll() {
    if (uncaught !== undefined) return __dcpErrorEnvelope(uncaught);
    if (outcome === undefined) return rejected !== undefined ? 'r' + stringify(rejected) : '';
    return outcome[0] ? __dcpValueEnvelope(outcome[1]) : __dcpErrorEnvelope(outcome[1]);
  }

  return function __dcpDispatch(op, a, b) {
    return __dcpFlat(__dcpOperation(op, a, b));
  };
  function __dcpOperation(op, a, b) {
    switch (op) {
      case 'compile': return __dcpCompile(a, b);
      case 'job':
        jobArguments = __dcpDecode(a);
        moduleSources = Object.create(null);
        for (const [k, v] of Object.entries(parse(b))) moduleSources[__dcpNormalize(k)] = v;
        moduleCache = new Map();
        return '';
      case 'spread': spreadDatum = !!a; return '';
      case 'start': outputCap = b >= 0 ? b : Infinity; return __dcpStart(a);
      case 'block': {
        // Indexed, not destructured: destructuring runs Array.prototype[Symbol.iterator], which job
        // code may replace, before any slice's deadlines are set.
        const p = parse(b);
        outputCap = p[0] >= 0 ? p[0] : Infinity;
        return __dcpBlock(a, p[1], p[2]);
      }
      case 'ended': { const e = ended; ended = ''; return e; }
      case 'poll': return __dcpPoll();
      case 'next': { const t = __dcpNextTimer(); return t ? max(0, t[1].due - now()) : -1; }
      case 'fire': return __dcpFireTimer();
      case 'uncaught': return __dcpErrorEnvelope(a);  // an error the engine reported outside any call of ours
      case 'end': __dcpResetTimers(); outcome = undefined; uncaught = undefined; rejected = undefined; return '';
      case 'eval': return __dcpValueEnvelope(indirectEval(a));   // tests and diagnostics only
    }
    throw new ErrorOf(`unknown prelude operation ${op}`);
  }
})(globalThis.__dcpHost, globalThis.__dcpNext);
