;; Grows linear memory 1 MiB at a time until memory.grow refuses, then aborts (EMEMORYLIMIT).
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $grow
      (if (i32.eq (memory.grow (i32.const 16)) (i32.const -1))
        (then unreachable))
      ;; touch the new megabyte so it is really resident
      (i32.store (i32.sub (i32.mul (memory.size) (i32.const 65536)) (i32.const 4)) (i32.const 1))
      (br $grow))))
