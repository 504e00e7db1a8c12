;; Spins forever and never calls the host: only the epoch interrupt stops it (ESLICETOOSLOW).
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $spin (br $spin))))
