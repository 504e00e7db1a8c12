;; WASI preview 1 cannot create or connect sockets; the only socket calls act on descriptors the
;; host preopened, and the wasi worktime preopens none. This probes sock_accept on descriptors
;; 0..63 and prints how many succeeded (must be 0): no connection can reach the host.
(module
  (import "wasi_snapshot_preview1" "sock_accept" (func $sock_accept (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (local $fd i32) (local $ok i32)
    (loop $each
      (if (i32.eqz (call $sock_accept (local.get $fd) (i32.const 0) (i32.const 16)))
        (then (local.set $ok (i32.add (local.get $ok) (i32.const 1)))))
      (local.set $fd (i32.add (local.get $fd) (i32.const 1)))
      (br_if $each (i32.lt_u (local.get $fd) (i32.const 64))))
    ;; print the count as one decimal digit (0..9 is all we need to see)
    (i32.store8 (i32.const 64) (i32.add (i32.const 48) (local.get $ok)))
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 1))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
