;; The `verge up` demo function, in WebAssembly text so that it needs no
;; toolchain: for a message on topic T with payload P it returns one
;; message on `processed/T` with payload {"tagged_by":"demo-tag","row":P}
;; (application/json, QoS 1).
;;
;; Memory: the input goes at 1024; the output right after it.
(module
  (memory (export "memory") 1)
  (data (i32.const 16) "processed/")                      ;; 10 bytes
  (data (i32.const 32) "{\22tagged_by\22:\22demo-tag\22,\22row\22:")  ;; 30 bytes
  (data (i32.const 64) "application/json")                ;; 16 bytes

  (func (export "verge_abi_version") (result i32) i32.const 1)

  ;; Room for the input and an output twice its size plus headers.
  (func (export "verge_alloc") (param $len i32) (result i32)
    (local $need i32)
    (local.set $need
      (i32.shr_u
        (i32.add (i32.add (i32.mul (local.get $len) (i32.const 2)) (i32.const 2048))
                 (i32.const 65535))
        (i32.const 16)))
    (if (i32.gt_u (local.get $need) (memory.size))
      (then
        (if (i32.eq (memory.grow (i32.sub (local.get $need) (memory.size))) (i32.const -1))
          (then (return (i32.const 0))))))
    i32.const 1024)

  (func $put_u32 (param $at i32) (param $v i32) (result i32)
    (i32.store (local.get $at) (local.get $v))
    (i32.add (local.get $at) (i32.const 4)))

  (func $put (param $at i32) (param $src i32) (param $n i32) (result i32)
    (memory.copy (local.get $at) (local.get $src) (local.get $n))
    (i32.add (local.get $at) (local.get $n)))

  (func (export "verge_handle") (param $ptr i32) (param $len i32) (result i64)
    (local $tlen i32) (local $topic i32) (local $plen i32) (local $payload i32)
    (local $out i32) (local $at i32)
    (local.set $tlen (i32.load (local.get $ptr)))
    (local.set $topic (i32.add (local.get $ptr) (i32.const 4)))
    (local.set $plen (i32.load (i32.add (local.get $topic) (local.get $tlen))))
    (local.set $payload (i32.add (i32.add (local.get $topic) (local.get $tlen)) (i32.const 4)))

    (local.set $out (i32.add (local.get $ptr) (local.get $len)))
    (local.set $at (local.get $out))
    (i32.store8 (local.get $at) (i32.const 0))
    (local.set $at (call $put_u32 (i32.add (local.get $at) (i32.const 1)) (i32.const 1)))
    ;; topic
    (local.set $at (call $put_u32 (local.get $at) (i32.add (local.get $tlen) (i32.const 10))))
    (local.set $at (call $put (local.get $at) (i32.const 16) (i32.const 10)))
    (local.set $at (call $put (local.get $at) (local.get $topic) (local.get $tlen)))
    ;; payload
    (local.set $at (call $put_u32 (local.get $at) (i32.add (local.get $plen) (i32.const 31))))
    (local.set $at (call $put (local.get $at) (i32.const 32) (i32.const 30)))
    (local.set $at (call $put (local.get $at) (local.get $payload) (local.get $plen)))
    (i32.store8 (local.get $at) (i32.const 125)) ;; }
    (local.set $at (i32.add (local.get $at) (i32.const 1)))
    ;; content type, no properties, qos 1, retain 0
    (local.set $at (call $put_u32 (local.get $at) (i32.const 16)))
    (local.set $at (call $put (local.get $at) (i32.const 64) (i32.const 16)))
    (local.set $at (call $put_u32 (local.get $at) (i32.const 0)))
    (i32.store8 (local.get $at) (i32.const 1))
    (i32.store8 (i32.add (local.get $at) (i32.const 1)) (i32.const 0))
    (local.set $at (i32.add (local.get $at) (i32.const 2)))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $out)) (i64.const 32))
            (i64.extend_i32_u (i32.sub (local.get $at) (local.get $out))))))
