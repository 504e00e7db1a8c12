;; Busy for a very long time (2^40 iterations) without ever importing dcp.progress (ENOPROGRESS).
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (local $i i64)
    (loop $work
      (local.set $i (i64.add (local.get $i) (i64.const 1)))
      (br_if $work (i64.lt_u (local.get $i) (i64.const 1099511627776))))))
