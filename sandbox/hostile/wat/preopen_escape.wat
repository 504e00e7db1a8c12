;; Tries to leave the scratch preopen (fd 3) with '..' and to open absolute-looking paths through
;; every descriptor 3..9. Prints the WASI errno of each attempt as a JSON array: all must be
;; non-zero (76 = ENOTCAPABLE, 8 = EBADF, 44 = ENOENT), none 0 (success).
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 256) "../../../../../../etc/passwd")   ;; 28 bytes
  (data (i32.const 320) "etc/passwd")                      ;; 10 bytes
  ;; out buffer at 1024, its length in global $len
  (global $len (mut i32) (i32.const 0))
  (func $put (param $c i32)
    (i32.store8 (i32.add (i32.const 1024) (global.get $len)) (local.get $c))
    (global.set $len (i32.add (global.get $len) (i32.const 1))))
  (func $num (param $n i32)   ;; errno values are < 100
    (if (i32.ge_u (local.get $n) (i32.const 10))
      (then (call $put (i32.add (i32.const 48) (i32.div_u (local.get $n) (i32.const 10))))))
    (call $put (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10)))))
  (func $try (param $fd i32) (param $path i32) (param $plen i32)
    (if (i32.gt_u (global.get $len) (i32.const 1)) (then (call $put (i32.const 44))))
    ;; rights: fd_read (bit 1)
    (call $num (call $path_open (local.get $fd) (i32.const 0) (local.get $path) (local.get $plen)
                                (i32.const 0) (i64.const 2) (i64.const 2) (i32.const 0) (i32.const 16))))
  (func (export "_start")
    (local $fd i32)
    (call $put (i32.const 91))
    (local.set $fd (i32.const 3))
    (loop $each
      (call $try (local.get $fd) (i32.const 256) (i32.const 28))
      (call $try (local.get $fd) (i32.const 320) (i32.const 10))
      (local.set $fd (i32.add (local.get $fd) (i32.const 1)))
      (br_if $each (i32.lt_u (local.get $fd) (i32.const 10))))
    (call $put (i32.const 93))
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (global.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
