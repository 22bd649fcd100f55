;; A shared memory group guest in plain WAT, written against the group ABI
;; in wit/core-abi.md with no SDK and no libc.
;;
;; The coordinator (`_start`) publishes the region `started` (a 4-byte
;; counter of the tasks started so far), tells the host it is ready, then
;; serves: for each task the host hands over it takes a free 4 KiB buffer
;; and starts the task with `wasi::thread-spawn`, passing the buffer's
;; address as `start_arg`.
;;
;; A task (`wasi_thread_start`) counts itself in `started`, reads its input
;; into its buffer and posts it back as one message, frees its buffer and
;; returns (exit code 0). A task started without an input exits with 66
;; (EX_NOINPUT); one whose input does not fit its buffer posts `too long`
;; and exits with 1; one that got no buffer (all 8 busy) posts `busy` and
;; exits with 75 (EX_TEMPFAIL).
;;
;; Memory layout (one 64 KiB page, shared):
;;   0 .. 32        8 buffer flags, one i32 each: 0 free, 1 taken
;;   128            `started`: i32 counter, published to the host
;;   256 ..         strings, copied from passive segments by `_start`
;;   4096 + i*4096  buffer i (4096 bytes), i = 0..7
;;
;; Build: wat2wasm --enable-threads -o group.wasm group.wat

(module
  ;; The group's memory: shared, with a maximum (the host creates it).
  (import "env" "memory" (memory 1 1 shared))

  ;; The coordinator's side of the group ABI.
  (import "isola:task" "group-ready" (func $group_ready))
  (import "isola:task" "group-next-task" (func $group_next_task (result i32)))
  (import "isola:task" "publish-region"
    (func $publish_region (param i32 i32 i32 i32)))
  (import "wasi" "thread-spawn" (func $thread_spawn (param i32) (result i32)))

  ;; A task's side: its input and its channel.
  (import "isola:task" "input-len" (func $input_len (result i64)))
  (import "isola:task" "input-read" (func $input_read (param i32)))
  (import "isola:task" "post" (func $post (param i32 i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))

  ;; `post` and `input-read` use the exported memory: re-export the import.
  (export "memory" (memory 0))

  ;; Passive segments: every task is a new instance of this module over the
  ;; same memory, and active segments would be written again each time.
  ;; `_start` copies them once.
  (data $region_name "started")
  (data $busy "busy")
  (data $too_long "too long")

  (global $buffers i32 (i32.const 4096))
  (global $buffer_size i32 (i32.const 4096))
  (global $buffer_count i32 (i32.const 8))
  (global $started i32 (i32.const 128))
  (global $region_name i32 (i32.const 256))
  (global $busy i32 (i32.const 272))
  (global $too_long i32 (i32.const 288))

  ;; The group's `main`.
  (func (export "_start")
    (local $buffer i32)
    (memory.init $region_name (global.get $region_name) (i32.const 0) (i32.const 7))
    (memory.init $busy (global.get $busy) (i32.const 0) (i32.const 4))
    (memory.init $too_long (global.get $too_long) (i32.const 0) (i32.const 8))
    (data.drop $region_name)
    (data.drop $busy)
    (data.drop $too_long)
    (call $publish_region
      (global.get $region_name) (i32.const 7) (global.get $started) (i32.const 4))
    (call $group_ready)
    ;; One `thread-spawn` per task handed over, until the group closes.
    (block $closed
      (loop $serve
        (br_if $closed (i32.eqz (call $group_next_task)))
        (local.set $buffer (call $take_buffer))
        (if (i32.lt_s (call $thread_spawn (local.get $buffer)) (i32.const 0))
          (then
            ;; The task could not start (it ends failed): free its buffer.
            (call $free_buffer (local.get $buffer))))
        (br $serve))))

  ;; The address of a buffer now taken, or 0 when all are taken.
  (func $take_buffer (result i32)
    (local $i i32)
    (block $full
      (loop $scan
        (br_if $full (i32.ge_u (local.get $i) (global.get $buffer_count)))
        (if (i32.eqz
              (i32.atomic.rmw.cmpxchg
                (i32.shl (local.get $i) (i32.const 2)) (i32.const 0) (i32.const 1)))
          (then
            (return
              (i32.add (global.get $buffers)
                (i32.mul (local.get $i) (global.get $buffer_size))))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $scan)))
    (i32.const 0))

  ;; Frees the buffer at `buffer` (0: none).
  (func $free_buffer (param $buffer i32)
    (if (local.get $buffer)
      (then
        (i32.atomic.store
          (i32.shl
            (i32.div_u
              (i32.sub (local.get $buffer) (global.get $buffers))
              (global.get $buffer_size))
            (i32.const 2))
          (i32.const 0)))))

  ;; A task: `start_arg` is its buffer (0 if it got none).
  (func (export "wasi_thread_start") (param $tid i32) (param $buffer i32)
    (local $len i64)
    (drop (i32.atomic.rmw.add (global.get $started) (i32.const 1)))
    (if (i32.eqz (local.get $buffer))
      (then
        (call $post (global.get $busy) (i32.const 4))
        (call $proc_exit (i32.const 75))))
    (local.set $len (call $input_len))
    (if (i64.lt_s (local.get $len) (i64.const 0))
      (then
        (call $free_buffer (local.get $buffer))
        (call $proc_exit (i32.const 66))))
    (if (i64.gt_s (local.get $len) (i64.extend_i32_u (global.get $buffer_size)))
      (then
        (call $free_buffer (local.get $buffer))
        (call $post (global.get $too_long) (i32.const 8))
        (call $proc_exit (i32.const 1))))
    (call $input_read (local.get $buffer))
    (call $post (local.get $buffer) (i32.wrap_i64 (local.get $len)))
    (call $free_buffer (local.get $buffer))))
