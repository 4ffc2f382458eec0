;; Returns the input message unchanged: the input encoding's topic, payload,
;; content type and properties are laid out exactly as an output message's,
;; so the output is a header, the input without its time, its qos, retain 0.
(module
  (memory (export "memory") 1)
  (func (export "verge_abi_version") (result i32) i32.const 1)
  (func (export "verge_alloc") (param $len i32) (result i32)
    (local $need i32)
    (local.set $need
      (i32.shr_u (i32.add (i32.add (local.get $len) (i32.const 1029)) (i32.const 65535))
                 (i32.const 16)))
    (if (i32.gt_u (local.get $need) (memory.size))
      (then
        (if (i32.eq (memory.grow (i32.sub (local.get $need) (memory.size))) (i32.const -1))
          (then (return (i32.const 0))))))
    i32.const 1029)
  (func (export "verge_handle") (param $ptr i32) (param $len i32) (result i64)
    (i32.store8 (i32.const 1024) (i32.const 0))
    (i32.store (i32.const 1025) (i32.const 1))
    (i32.store8 (i32.add (local.get $ptr) (i32.sub (local.get $len) (i32.const 9)))
                (i32.load8_u (i32.add (local.get $ptr) (i32.sub (local.get $len) (i32.const 1)))))
    (i32.store8 (i32.add (local.get $ptr) (i32.sub (local.get $len) (i32.const 8))) (i32.const 0))
    (i64.or (i64.shl (i64.const 1024) (i64.const 32))
            (i64.extend_i32_u (i32.sub (local.get $len) (i32.const 2))))))
