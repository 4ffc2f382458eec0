;; Misbehaves according to the first payload byte:
;; 't' traps, 'l' loops forever, 'm' grows memory until refused then traps
;; (as an allocator aborting would), 'e' returns an error, 'o' points its
;; output outside memory, 'k' hands the host an out-of-bounds range,
;; 'h' loops over host calls (4 KiB log lines, so past the per-call line cap),
;; anything else returns no messages.
(module
  (import "verge" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 2048) "\01\09\00\00\00bad input")
  (data (i32.const 2100) "\00\00\00\00\00")
  (func (export "verge_abi_version") (result i32) i32.const 1)
  (func (export "verge_alloc") (param $len i32) (result i32) i32.const 1024)
  (func (export "verge_handle") (param $ptr i32) (param $len i32) (result i64)
    (local $c i32)
    ;; payload starts after the topic: 4 + topic_len, then 4 bytes of length
    (local.set $c
      (i32.load8_u (i32.add (local.get $ptr)
                            (i32.add (i32.const 8) (i32.load (local.get $ptr))))))
    (if (i32.eq (local.get $c) (i32.const 116)) (then unreachable))
    (if (i32.eq (local.get $c) (i32.const 108)) (then (loop $l (br $l))))
    (if (i32.eq (local.get $c) (i32.const 109))
      (then
        (loop $g
          (br_if $g (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
        unreachable))
    (if (i32.eq (local.get $c) (i32.const 101))
      (then (return (i64.or (i64.shl (i64.const 2048) (i64.const 32)) (i64.const 14)))))
    (if (i32.eq (local.get $c) (i32.const 111))
      (then (return (i64.or (i64.shl (i64.const 0x7fff0000) (i64.const 32)) (i64.const 100)))))
    (if (i32.eq (local.get $c) (i32.const 104))
      (then (loop $h (call $log (i32.const 4) (i32.const 0) (i32.const 4096)) (br $h))))
    (if (i32.eq (local.get $c) (i32.const 107))
      (then (call $log (i32.const 2) (i32.const 0x7ffffff0) (i32.const 100))))
    (i64.or (i64.shl (i64.const 2100) (i64.const 32)) (i64.const 5))))
