// map-basic on V8: the program `deno run` executes for one job. Its Python half is v8.py.
//
// Deno runs it with no permissions at all (no --allow-* flag, --no-prompt, no remote or npm
// imports, every node: built-in mapped to a module that throws), inside the evaluator's process
// layers. Two threads:
//
// * the SANDBOX WORKER (function sandbox below, started from a blob: URL) strips its realm down to
//   ECMAScript plus what QuickJS-ng also has (atob, btoa, performance, queueMicrotask,
//   DOMException), evaluates the map-basic prelude sent by the host, then serves requests:
//   it reads them from stdin and writes replies and events to stdout, synchronously;
// * the MAIN THREAD supervises. On SIGUSR2 (v8.py sends it when a slice is over a limit) it stops
//   the worker with V8's TerminateExecution (Worker.terminate), starts a fresh one and writes a
//   'K' frame; if the worker was idle between requests it terminates nothing and writes 'I'.
//
// Frames, both ways: a u32 little-endian length of the rest, one kind byte, the body.
// Requests (host -> worker): 'd' = a prelude operation, 's' = run slices (the output cap, then one
// datum per slice); the body is a list of strings, each a u32 byte length and UTF-8. Replies and events (worker -> host), UTF-8 body:
// 'R' reply, 'M' replies held back ('\n' after each), 'H' the same written by the main thread at
// a stop, 'P' progress, 'C' console (level "\n" JSON text), 'E' emit (name JSON "\n" value).
//
// Replies held back: a slice that is not the last of its request, and wrote no frame of its own,
// does not write its reply (a write and a wake of the host per slice cost more than the slice).
// The worker keeps the replies in the shared buffer, after the state words, and writes them as one
// 'M' frame before anything else it writes (an event of a later slice, a reply), or at a slice's
// end once HELD_MS passed since it last wrote replies (the first slice's reply of a request is
// always written). A slice runs with replies held only if it started within HELD_MS of that write,
// so the host's clock for the slice it waits on started at most HELD_MS before the running
// slice's (v8.py adds that to its deadlines). An 'M' written by an event ends with a line of the
// milliseconds the running slice has run: the host counts that slice from its start.
// When the main thread stops the worker it writes the replies the worker held ('H') before 'K':
// those slices finished, and the host charges the stop to the slice after them.
//
// Only one thread may write to stdout at a time, and a frame must never be cut: a shared state
// word says what the worker is doing. IDLE: reading stdin (the main thread may write);
// BUSY: running JS (it may be terminated); WRITING: inside one frame's write (wait);
// KILLING: the main thread won, the worker may never write again. Each side takes the word by
// compare-and-swap: the worker IDLE->BUSY as a request arrives and BUSY->WRITING for a frame, the
// main thread IDLE->WRITING for its 'I' (a frame the worker's next one must not cut into). The
// second state word is the byte count of the replies held; the worker changes it only while
// WRITING. The third is 1 once the evaluator closed the pipe: the worker's loop then ends, and
// the main thread exits 0 (a word job code cannot reach, where an error's text could be forged).
const IDLE = 0, BUSY = 1, WRITING = 2, KILLING = 3;
// The shared buffer: three state words (what the worker does, the bytes of replies held, 1 once
// the evaluator closed the pipe), then the replies held.
const HELD_AT = 12, HELD_BYTES = 1 << 16, HELD_MS = 1;  // v8.py: HELD_SLACK
const CLOSED = 'map-basic V8 sandbox: the evaluator closed the pipe';

function sandbox() {
  'use strict';
  // Everything the loop needs is captured now, before any job code runs: job code may replace
  // globals and prototype methods later. Privileged functions are bound here and only ever called
  // directly (never through .call/.apply, which job code could replace to receive them).
  const D = globalThis.Deno;
  const readSync = D.stdin.readSync.bind(D.stdin), writeSync = D.stdout.writeSync.bind(D.stdout);
  const core = D.internal !== undefined && D[D.internal] ? D[D.internal].core : undefined;
  const writeErr = D.stderr.writeSync.bind(D.stderr), apply = Reflect.apply;
  const randomValues = globalThis.crypto.getRandomValues.bind(globalThis.crypto);
  const hrNow = globalThis.performance.now.bind(globalThis.performance);
  const timeOrigin = globalThis.performance.timeOrigin;
  const { compareExchange, store, wait, waitAsync, notify: atomicNotify } = Atomics;
  const notify = (a, i) => { try { atomicNotify(a, i); } catch (_) { /* the main thread polls too */ } };
  const utf8 = new TextEncoder(), fromUtf8 = new TextDecoder();
  const encode = (s) => utf8.encode(s), decode = (b) => fromUtf8.decode(b);
  const encodeInto = utf8.encodeInto.bind(utf8);
  const U8 = Uint8Array, P = Promise, toString = String, toNumber = Number, jsonParse = JSON.parse;
  const { subarray, set: setBytes, copyWithin, toBase64 } = Uint8Array.prototype;
  const defineProperty = Reflect.defineProperty;
  const { getUint32, setUint32 } = DataView.prototype, DV = DataView;
  // A typed array's length and buffer are getters of %TypedArray%.prototype, which job code may
  // redefine: the frames are measured with the originals.
  const typedProto = Object.getPrototypeOf(Uint8Array.prototype);
  const lengthGetter = Reflect.getOwnPropertyDescriptor(typedProto, 'length').get;
  const bufferGetter = Reflect.getOwnPropertyDescriptor(typedProto, 'buffer').get;
  const lengthOf = (a) => apply(lengthGetter, a, []), bufferOf = (a) => apply(bufferGetter, a, []);
  const sliceString = String.prototype.slice, regexExec = RegExp.prototype.exec;
  const PERCENT = /^\s*(\d+(?:\.\d+)?)\s*%\s*$/;  // worktime.py _PERCENT

  let state;  // Int32Array over the SharedArrayBuffer of the main thread: [what the worker does, bytes held]
  let held;  // Uint8Array over the rest of it: the replies held back
  let heldAt = 0, lastWrite = 0;  // bytes held; when replies last reached the host (or a request came)
  let sliceStart = 0, writes = 0;  // the running slice's start; frames written so far
  let uncaught;  // first error reported by the runtime (e.g. thrown in a queueMicrotask callback)
  // The runtime reports an error thrown in a callback it runs (a queueMicrotask callback) and a
  // rejection nobody handled by dispatching an event on the global object, whose dispatchEvent
  // goes with the prototype chain __dcpStrip takes away (a TypeError in Deno's own code that ends
  // the process; no listener could help): Deno's core takes our handlers instead. A Deno without
  // them ends such slices ECRASH (tests/test_map_basic.py says so).
  let fatal = false;  // a fault of this program (__dcpServe failed): its rejection ends the worker
  if (core && typeof core.setReportExceptionCallback === 'function'
      && typeof core.setUnhandledPromiseRejectionHandler === 'function') {
    core.setReportExceptionCallback(__dcpReport);
    core.setUnhandledPromiseRejectionHandler(() => !fatal);  // as in QuickJS: not an error
  }

  // --- frames out ------------------------------------------------------------------------------
  // kind -1: only the replies held (if any). An event writes those with the running slice's time
  // after them (in the frame only: the held buffer holds replies and nothing else).
  function __dcpWrite(kind, body) {
    const since = heldAt && kind !== K_REPLY && kind >= 0 ? encode(toString(hrNow() - sliceStart) + '\n') : null;
    const bytes = kind < 0 ? null : encode(body);
    const extra = since === null ? 0 : lengthOf(since);
    const size = bytes === null ? 0 : 5 + lengthOf(bytes), before = heldAt ? 5 + heldAt + extra : 0;
    if (size + before === 0) return;
    const frame = new U8(before + size);
    if (before) {
      apply(setUint32, new DV(bufferOf(frame)), [0, heldAt + extra + 1, true]);
      frame[4] = K_HELD;
      apply(setBytes, frame, [apply(subarray, held, [0, heldAt]), 5]);
      if (since !== null) apply(setBytes, frame, [since, 5 + heldAt]);
    }
    if (bytes !== null) {
      apply(setUint32, new DV(bufferOf(frame)), [before, lengthOf(bytes) + 1, true]);
      frame[before + 4] = kind;
      apply(setBytes, frame, [bytes, before + 5]);
    }
    if (compareExchange(state, 0, BUSY, WRITING) !== BUSY) {
      for (;;) wait(state, 0, KILLING);  // the main thread is terminating us: never write again
    }
    let released = false;
    try {
      // Every writeSync call is made at this same stack depth: if the first did not overflow the
      // stack (work that logs at its recursion limit), the next ones cannot either, so a frame is
      // written whole or not at all.
      let off = 0;
      const total = lengthOf(frame);
      while (off < total) off += writeSync(off ? apply(subarray, frame, [off]) : frame);
      // Written: the main thread must not write them again. Atomic stores, in this order, so that
      // no CPU shows it BUSY before the count is 0 (calls, but at writeSync's depth: they fit).
      if (before) { heldAt = 0; store(state, 1, 0); }
      store(state, 0, BUSY);
      released = true;
    } finally {
      // Only if the above did not get there (BUSY once: after it the main thread may own the word).
      if (!released) state[0] = BUSY;  // a plain store, not a call: it cannot overflow the stack
    }
    writes++;
    notify(state, 0);
    if (before || kind === K_REPLY) lastWrite = hrNow();
  }
  const K_REPLY = 0x52, K_HELD = 0x4D, K_PROGRESS = 0x50, K_CONSOLE = 0x43, K_EMIT = 0x45;

  // A finished slice's reply, held back (see the header); written now if it does not fit, if the
  // slice wrote frames of its own (its events reached the host: were its reply lost with a later
  // slice's death, it could not run again without sending them twice), or if no replies reached
  // the host for HELD_MS.
  function __dcpHold(reply, wrote) {
    if (wrote || !__dcpHoldText(reply)) return __dcpWrite(K_REPLY, reply);  // after those held
    if (hrNow() - lastWrite >= HELD_MS) __dcpWrite(-1, '');
  }
  function __dcpHoldText(text) {  // false: no room left for it
    const room = lengthOf(held) - heldAt - 1;
    if (room <= 0) return false;
    const done = encodeInto(text, apply(subarray, held, [heldAt, heldAt + room]));
    if (done.read !== text.length) return false;
    held[heldAt + done.written] = 10;
    if (compareExchange(state, 0, BUSY, WRITING) !== BUSY) {
      for (;;) wait(state, 0, KILLING);
    }
    heldAt += done.written + 1;
    let released = false;
    try {
      store(state, 1, heldAt);  // atomic stores, in this order, BUSY once (see __dcpWrite)
      store(state, 0, BUSY);
      released = true;
    } finally {
      if (!released) state[0] = BUSY;
    }
    notify(state, 0);
    return true;
  }

  // --- frames in -------------------------------------------------------------------------------
  let inbuf = new U8(1 << 16), have = 0;
  function __dcpFill(need) {
    while (have < need) {
      const length = lengthOf(inbuf);
      if (length < need) {
        const bigger = new U8(need > 2 * length ? need : 2 * length);
        apply(setBytes, bigger, [apply(subarray, inbuf, [0, have])]);
        inbuf = bigger;
      }
      // Deno's readSync reads the view's length through %TypedArray%.prototype, where job code
      // may have put a getter (0: it reads nothing, and this loop would spin running job code):
      // the view carries its true length as an own property.
      const into = apply(subarray, inbuf, [have]);
      defineProperty(into, 'length', { __proto__: null, value: lengthOf(into) });
      const n = readSync(into);
      if (n === null) {  // the evaluator closed the pipe: its job is over (a word out of job code's reach says so)
        store(state, 2, 1);
        throw new Error(CLOSED);
      }
      have += n;
    }
  }
  function __dcpRead() {
    __dcpFill(4);
    const size = apply(getUint32, new DV(bufferOf(inbuf), 0, 4), [0, true]);
    __dcpFill(4 + size);
    const view = new DV(bufferOf(inbuf), 0, 4 + size);
    const kind = inbuf[4], args = [];
    for (let at = 5; at < 4 + size;) {
      const len = apply(getUint32, view, [at, true]);
      // Defined, not assigned: an assignment would run a setter job code put on Array.prototype.
      const value = decode(apply(subarray, inbuf, [at + 4, at + 4 + len]));
      defineProperty(args, args.length, { __proto__: null, value, writable: true, enumerable: true, configurable: true });
      at += 4 + len;
    }
    apply(copyWithin, inbuf, [0, 4 + size, have]);
    have -= 4 + size;
    return [kind, args];
  }

  // --- the host function the prelude calls -----------------------------------------------------
  // Progress is forwarded at most every FORWARD ms (v8.py adds that to its no-progress deadline),
  // except values the host must judge at once: not a number in [0, 1], or going backwards.
  const FORWARD = 50;
  let lastForward = -Infinity, highest = -Infinity;
  function __dcpHost(op, a, b) {
    switch (op) {
      case 'random': {
        const bytes = new U8(a);
        randomValues(bytes);
        return apply(toBase64, bytes, []);
      }
      case 'progress': {
        const now = hrNow();
        let odd = a[0] !== '0';
        if (!odd && a !== '0null') {
          const v = jsonParse(apply(sliceString, a, [1]));
          if (typeof v === 'string') {
            // A 'NN%' the host accepts moves the highest value too (later numbers are judged against it).
            const m = apply(regexExec, PERCENT, [v]);
            if (m !== null && m[1] / 100 <= 1 && m[1] / 100 >= highest) highest = m[1] / 100;
            odd = true;
          } else if (typeof v !== 'number' || v < 0 || v > 1 || v < highest) odd = true; else highest = v;
        }
        // The host judges backwards values against the highest it heard of: tell it the highest so
        // far when earlier values of this slice were not forwarded.
        if (odd || now - lastForward >= FORWARD) {
          lastForward = now;
          __dcpWrite(K_PROGRESS, highest > -Infinity ? a + '\n' + toString(highest) : a);
        }
        return null;
      }
      case 'console': __dcpWrite(K_CONSOLE, a + '\n' + b); return null;
      case 'wake': __dcpWakeLoop(); return null;  // the slice settled: end the loop's sleep
      case 'emit': __dcpWrite(K_EMIT, a + '\n' + b); return null;
    }
    return '!unknown host operation ' + op;
  }

  // --- the realm the work sees -----------------------------------------------------------------
  function __dcpStrip(webassembly) {
    // QuickJS-ng's globals, minus InternalError (QuickJS only), plus ECMA-402 Intl and Temporal.
    const keep = new Set(['AggregateError', 'Array', 'ArrayBuffer', 'AsyncDisposableStack', 'Atomics', 'BigInt',
      'BigInt64Array', 'BigUint64Array', 'Boolean', 'DOMException', 'DataView', 'Date', 'DisposableStack', 'Error',
      'EvalError', 'FinalizationRegistry', 'Float16Array', 'Float32Array', 'Float64Array', 'Function', 'Infinity',
      'Int16Array', 'Int32Array', 'Int8Array', 'Intl', 'Iterator', 'JSON', 'Map', 'Math', 'NaN', 'Number', 'Object',
      'Promise', 'Proxy', 'RangeError', 'ReferenceError', 'Reflect', 'RegExp', 'Set', 'SharedArrayBuffer', 'String',
      'SuppressedError', 'Symbol', 'SyntaxError', 'Temporal', 'TypeError', 'URIError', 'Uint16Array', 'Uint32Array',
      'Uint8Array', 'Uint8ClampedArray', 'WeakMap', 'WeakRef', 'WeakSet', 'atob', 'btoa', 'decodeURI',
      'decodeURIComponent', 'encodeURI', 'encodeURIComponent', 'escape', 'eval', 'globalThis', 'isFinite', 'isNaN',
      'parseFloat', 'parseInt', 'queueMicrotask', 'undefined', 'unescape']);
    if (webassembly) {
      keep.add('WebAssembly');
      // Count asynchronous compilations, so that a slice awaiting one is not "never settled".
      const W = globalThis.WebAssembly, promiseFinally = Promise.prototype.finally;
      // A slice waiting for a compilation sleeps until its next timer: wake it (__dcpSleep).
      const done = () => { wasmPending--; wasmSettled = true; __dcpWakeLoop(); };
      for (const name of ['compile', 'instantiate']) {
        const original = W[name];
        const counted = { [name](...args) { wasmPending++; return apply(promiseFinally, apply(original, W, args), [done]); } }[name];
        Object.defineProperty(W, name, { value: counted, writable: true, configurable: true, enumerable: false });
      }
      for (const name of ['compileStreaming', 'instantiateStreaming']) delete W[name];  // no Response here
    }
    // A cleanup callback that throws stops the worker's event loop: the error reaches none of the
    // handlers above, the loop's waits never wake, and the slice sat idle until its wall limit.
    // Each callback runs guarded instead, its error the running slice's (as in QuickJS, where the
    // slice whose turn runs the cleanup job fails). The original stays out of reach: the global
    // and the prototype's constructor are the wrapper, which is not a class to extend around it.
    const Registry = FinalizationRegistry, construct = Reflect.construct;
    const guardedRegistry = function FinalizationRegistry(cleanup) {
      if (new.target === undefined) throw new TypeError("Constructor FinalizationRegistry requires 'new'");
      if (typeof cleanup !== 'function') throw new TypeError('FinalizationRegistry: cleanup must be callable');
      const guarded = (held) => {
        try { apply(cleanup, undefined, [held]); } catch (e) { __dcpReport(e); }
      };
      return construct(Registry, [guarded], new.target);
    };
    defineProperty(guardedRegistry, 'prototype', { value: Registry.prototype, writable: false });
    defineProperty(Registry.prototype, 'constructor', { value: guardedRegistry, writable: true, configurable: true });
    defineProperty(globalThis, 'FinalizationRegistry', { value: guardedRegistry, writable: true, configurable: true });
    for (const name of Object.getOwnPropertyNames(globalThis)) {
      if (!keep.has(name)) delete globalThis[name];
    }
    // EventTarget and the worker scope go with the prototype chain (postMessage, close, ...).
    Object.setPrototypeOf(globalThis, Object.prototype);
    // The runtime keeps its event listeners under a symbol of the global object: leave it, frozen,
    // so that job code cannot add listeners to what the runtime dispatches.
    for (const sym of Object.getOwnPropertySymbols(globalThis)) {
      const value = globalThis[sym];
      if (value !== null && typeof value === 'object') {
        for (const key of Object.keys(value.listeners || {})) Object.freeze(value.listeners[key]);
        if (value.listeners) Object.freeze(value.listeners);
        Object.freeze(value);
      }
      Object.defineProperty(globalThis, sym, { writable: false, configurable: false });
    }
    // A worker thread may block in Atomics.wait; QuickJS's context may not, and neither may the
    // work here (a blocked thread only wakes when terminated). The host keeps its own copy.
    const blocked = { wait() { throw new TypeError('Atomics.wait cannot be called in this context'); } }.wait;
    Object.defineProperty(Atomics, 'wait', { value: blocked, writable: true, configurable: true, enumerable: false });
    const performance = { now: () => hrNow(), timeOrigin };
    Object.defineProperty(globalThis, 'performance', { value: performance, writable: true, configurable: true, enumerable: false });
    Error.stackTraceLimit = 40;  // the prelude keeps 30 frames of the work's own
  }

  // --- the slice loop ----------------------------------------------------------------------------
  let dispatch = null;
  // Milliseconds a pending slice waits for the runtime once the prelude has nothing left to run.
  const RUNTIME_GRACE = 1000;
  let wasmPending = 0;  // WebAssembly compilations under way (their promises settle from V8's threads)
  let wasmSettled = false;  // one settled since __dcpQuiet last looked
  // A macrotask boundary: by the time it runs, the microtask queue is empty (V8 drains it first).
  // V8 settles a notified Atomics.waitAsync in a task of its own: 1.5 µs a turn, where a
  // MessageChannel message (Deno's op, its serializer) took 2.1 µs of a trivial slice's ~5.
  const turnWord = new Int32Array(new SharedArrayBuffer(4));
  const __dcpMacrotask = () => {
    const turn = waitAsync(turnWord, 0, 0);
    atomicNotify(turnWord, 0);
    return turn.value;
  };
  // Sleeps wait on a word nobody changes: Deno's setTimeout costs ~8 ms of a sandbox's start (the
  // first read of globalThis.setTimeout loads its timers), and Atomics.waitAsync's timeout is as
  // precise. An endless delay (a job's setTimeout(f, Infinity)) waits until a limit stops the slice.
  const sleepWord = new Int32Array(new SharedArrayBuffer(4));
  const __dcpSleep = (ms) => waitAsync(sleepWord, 0, 0, ms).value;
  // Something a sleeping slice waits for happened (it settled, a compilation ended, an error):
  // the loop looks again now rather than at its next timer.
  function __dcpWakeLoop() { notify(sleepWord, 0); }

  // An error thrown in a callback the runtime ran is the running slice's first error.
  function __dcpReport(error) {
    if (uncaught === undefined) uncaught = [error];
    __dcpWakeLoop();  // a slice sleeping until its next timer fails now
  }

  function __dcpUncaught() {
    const e = uncaught[0];
    uncaught = undefined;
    return dispatch('uncaught', e);
  }

  // What a slice queued runs under its limits before its result counts: its jobs (one turn), and
  // the WebAssembly compilations it started, whose callbacks are its own (a sleep their end wakes),
  // even once it failed: left running, they would settle, and be blamed, in the next slice.
  async function __dcpQuiet() {
    await __dcpMacrotask();
    while (wasmPending > 0 || wasmSettled) {
      // A compilation that settled ran its callbacks in V8's own task, and an error one threw is
      // reported in a task after it: one more turn, or the slice would end before the report.
      if (wasmPending > 0) await __dcpSleep(50);
      wasmSettled = false;
      await __dcpMacrotask();
    }
  }

  async function __dcpSlice(datumText, cap) {
    let envelope = dispatch('start', datumText, toNumber(cap));
    if (envelope !== 'p') {
      await __dcpQuiet();
      return uncaught !== undefined ? __dcpUncaught() : envelope;
    }
    let idleSince = -1, nap = 1;
    for (;;) {
      await __dcpMacrotask();
      if (uncaught !== undefined) {
        await __dcpQuiet();
        return __dcpUncaught();
      }
      envelope = dispatch('poll');
      if (envelope) {
        // Its result was encoded just now, which may run job code (a getter, an error's message):
        // what that queued is this slice's too.
        await __dcpQuiet();
        return uncaught !== undefined ? __dcpUncaught() : envelope;
      }
      const delay = dispatch('next');
      if (delay < 0) {
        // No timer of the prelude's is left, but the runtime may still settle the promise (a
        // dynamic import answering, WebAssembly compiling): wait for those, then give up.
        if (wasmPending === 0) {
          const now = hrNow();
          if (idleSince < 0) idleSince = now;
          if (now - idleSince > RUNTIME_GRACE) return 'N';  // never settled: nothing left to run
        }
        await __dcpSleep(nap);
        nap = nap < 50 ? 2 * nap : 50;
        continue;
      }
      idleSince = -1; nap = 1;
      if (delay > 0) await __dcpSleep(delay);
      dispatch('fire');
    }
  }

  async function __dcpServe() {
    for (;;) {
      const request = __dcpRead(), kind = request[0], args = request[1];
      for (;;) {  // IDLE -> BUSY, after the main thread's 'I' if it is writing one
        const was = compareExchange(state, 0, IDLE, BUSY);
        if (was === IDLE) break;
        wait(state, 0, was);
      }
      // The host's clock for the first slice started before it prepared and sent the request: its
      // reply is written as it ends, never held, so the clocks of the next ones start after that.
      lastWrite = -Infinity;
      let reply;
      if (kind === 0x64 /* d */) {
        if (args[0] === 'init') {
          const options = jsonParse(args[2]);  // before any job code: destructuring is safe here
          __dcpStrip(options.webassembly);
          globalThis.__dcpHost = __dcpHost;
          dispatch = (0, eval)(args[1]);
          reply = '';
        } else {
          reply = toString(dispatch(args[0], args[1], args[2]));
        }
      } else {
        // 's': the output cap, then the datums of one or more slices, run in order, each answered
        // by its own reply (the evaluator sends the next slices of its batch ahead, see v8.py).
        for (let i = 1; i < args.length; i++) {
          // lastForward stays across slices: a heartbeat every FORWARD ms is all the watchdog needs
          // (v8.py's deadline has FORWARD of slack), not a frame per slice.
          highest = -Infinity; uncaught = undefined;
          const wrote = writes;
          sliceStart = hrNow();
          reply = await __dcpSlice(args[i], args[0]);
          if (i < args.length - 1) __dcpHold(reply, writes !== wrote);
        }
      }
      __dcpWrite(K_REPLY, reply);  // after the replies held, in the same write
      // Back to IDLE only from BUSY: if the main thread started terminating us, stay put.
      if (compareExchange(state, 0, BUSY, IDLE) !== BUSY) for (;;) wait(state, 0, KILLING);
    }
  }

  globalThis.onmessage = (event) => {
    state = new Int32Array(event.data, 0, 3);
    held = new U8(event.data, HELD_AT, HELD_BYTES);
    globalThis.onmessage = null;
    // A fault of this program, never of the work, or the pipe closed: the worker ends (Deno.exit
    // cannot run in the stripped realm: the rejection, unhandled, ends it) and the main thread
    // ends the process.
    __dcpServe().catch((e) => {
      if (state[2] !== 1) writeErr(encode(`map-basic V8 sandbox failed: ${e && e.stack || e}\n`));
      fatal = true;
      throw e;
    });
  };
}

// --- main thread -------------------------------------------------------------------------------
const states = `const IDLE = ${IDLE}, BUSY = ${BUSY}, WRITING = ${WRITING}, KILLING = ${KILLING};
const HELD_AT = ${HELD_AT}, HELD_BYTES = ${HELD_BYTES}, HELD_MS = ${HELD_MS}, CLOSED = ${JSON.stringify(CLOSED)};`;
const url = URL.createObjectURL(new Blob([`${states}\n(${sandbox})();`], { type: 'text/javascript' }));
const out = new TextEncoder();
let worker, state, shared;

function frame(kind, body = '') {
  const bytes = typeof body === 'string' ? out.encode(body) : body;
  const f = new Uint8Array(5 + bytes.length);
  new DataView(f.buffer).setUint32(0, bytes.length + 1, true);
  f[4] = kind.charCodeAt(0);
  f.set(bytes, 5);
  let off = 0;
  while (off < f.length) off += Deno.stdout.writeSync(f.subarray(off));
}

function start() {
  shared = new SharedArrayBuffer(HELD_AT + HELD_BYTES);
  state = new Int32Array(shared, 0, 3);
  worker = new Worker(url, { type: 'module' });
  worker.onerror = (event) => {
    // Only the end of the worker's loop gets here (the worker handles the work's errors itself):
    // the evaluator closed the pipe, or a fault of this program.
    event.preventDefault();
    if (Atomics.load(state, 2) === 1) Deno.exit(0);
    Deno.stderr.writeSync(out.encode(`map-basic V8 sandbox failed: ${event.message}\n`));
    Deno.exit(70);
  };
  worker.postMessage(shared);
}

async function stop() {
  for (;;) {
    const was = Atomics.compareExchange(state, 0, BUSY, KILLING);
    if (was === IDLE) {
      // Taken, so that the worker cannot start a request and write while 'I' is written.
      if (Atomics.compareExchange(state, 0, IDLE, WRITING) !== IDLE) continue;
      try {
        frame('I');
      } finally {
        Atomics.store(state, 0, IDLE);
        Atomics.notify(state, 0);
      }
      return;
    }
    if (was === BUSY) break;
    if (was === KILLING) return;
    await Atomics.waitAsync(state, 0, WRITING, 100).value;  // a frame is being written: let it end
  }
  worker.terminate();
  // The replies the worker held: those slices finished before it was stopped. It cannot change
  // them any more (it held them only while WRITING, which it can no longer enter).
  const heldBytes = Atomics.load(state, 1);
  if (heldBytes > 0) frame('H', new Uint8Array(shared, HELD_AT, heldBytes).slice());
  start();
  frame('K');
}

Deno.addSignalListener('SIGUSR2', () => { stop(); });
start();
