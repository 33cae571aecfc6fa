//! Allocation bounds, measured with a counting global allocator: scalar frames and token
//! walks allocate nothing, an aggregate allocates once, the encoder writes into a buffer
//! with room without allocating, and a length the peer declared but has not sent costs no
//! memory in proportion to it.
//!
//! Counts are per thread, so the test harness running other tests in parallel does not
//! disturb them.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::{Bytes, BytesMut};
use ringq_resp::{encode_command, CommandWriter, Decoder, Frame, Reader, Token};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
    static BYTES: Cell<usize> = const { Cell::new(0) };
}

fn count(bytes: usize) {
    // `try_with`: the allocator also runs while thread-locals are being torn down.
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
    let _ = BYTES.try_with(|c| c.set(c.get() + bytes));
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract the caller upholds is the one `System` needs; counting touches
// only const-initialised thread-locals without destructors, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: as for the impl: the caller's layout, forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator, with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: `ptr` came from `System` through this allocator, with this layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f`, returning its result, the allocations it made and the bytes they asked for.
fn measure<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
    let (a0, b0) = (ALLOCATIONS.with(Cell::get), BYTES.with(Cell::get));
    let out = f();
    let (a1, b1) = (ALLOCATIONS.with(Cell::get), BYTES.with(Cell::get));
    (out, a1 - a0, b1 - b0)
}

/// A `Bytes` whose storage is already shared, so slicing it is a reference-count bump and
/// not the one-off promotion `bytes` does on a fresh `Vec`-backed buffer.
fn shared(wire: &[u8]) -> Bytes {
    let b = Bytes::copy_from_slice(wire);
    let keep = b.clone();
    drop(keep);
    b
}

#[test]
fn scalar_frames_allocate_nothing() {
    let mut dec = Decoder::new();
    for wire in [
        &b"+OK\r\n"[..],
        b"-ERR no\r\n",
        b":42\r\n",
        b"$5\r\nhello\r\n",
        b"$-1\r\n",
        b"_\r\n",
        b"#t\r\n",
        b",1.5\r\n",
        b"(12345678901234567890\r\n",
        b"!3\r\nERR\r\n",
        b"=7\r\ntxt:abc\r\n",
    ] {
        let input = shared(wire);
        let (frame, allocations, _) = measure(|| dec.decode_bytes(&input));
        assert!(matches!(frame, Ok(Some(_))), "{wire:?}");
        assert_eq!(allocations, 0, "{wire:?}");
        drop(frame);
    }
}

#[test]
fn each_aggregate_allocates_once() {
    let mut dec = Decoder::new();
    for (wire, aggregates) in [
        (&b"*3\r\n$1\r\na\r\n:2\r\n+c\r\n"[..], 1),
        (
            b"*2\r\n$1\r\nk\r\n*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n",
            2,
        ),
        (b"%2\r\n+a\r\n:1\r\n+b\r\n:2\r\n", 1),
        (b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n", 1),
        (b"*0\r\n", 0),
    ] {
        let input = shared(wire);
        let (frame, allocations, _) = measure(|| dec.decode_bytes(&input));
        assert!(matches!(frame, Ok(Some(_))), "{wire:?}");
        assert_eq!(allocations, aggregates, "{wire:?}");
        drop(frame);
    }
}

fn lmpop_reply(n: usize) -> Bytes {
    let items = (0..n)
        .map(|i| Frame::BulkString(Bytes::from(format!("payload-{i:04}"))))
        .collect();
    let wire = Frame::Array(vec![
        Frame::BulkString(Bytes::from_static(b"queue")),
        Frame::Array(items),
    ])
    .to_bytes();
    shared(&wire)
}

#[test]
fn scanning_and_walking_an_lmpop_reply_allocates_nothing() {
    let input = lmpop_reply(1000);
    let mut dec = Decoder::new();
    // The first scan grows the decoder's stack of open aggregates; it is kept.
    assert_eq!(dec.scan(&input), Ok(Some(input.len())));
    let (total, allocations, _) = measure(|| {
        let n = dec.scan(&input).expect("valid").expect("complete");
        let mut r = Reader::new(input.slice(..n));
        assert_eq!(r.next_token(), Ok(Token::Array(2)));
        let mut total = r.next_bytes().expect("valid").expect("a key").len();
        let Ok(Token::Array(count)) = r.next_token() else {
            panic!("not an LMPOP reply");
        };
        for _ in 0..count {
            total += r.next_bytes().expect("valid").expect("a payload").len();
        }
        total
    });
    assert!(total > 1000);
    assert_eq!(allocations, 0);
}

#[test]
fn a_declared_but_unsent_length_costs_no_memory_in_proportion_to_it() {
    let cases: [&[u8]; 6] = [
        b"*2147483647\r\n:1\r\n:2\r\n:3\r\n",
        b"%2147483647\r\n+a\r\n:1\r\n",
        b"~2147483647\r\n:1\r\n",
        b"|2147483647\r\n+a\r\n:1\r\n",
        b"$536870912\r\nonly a few bytes of the body",
        b"*2147483647\r\n*2147483647\r\n*2147483647\r\n$536870912\r\nxyz",
    ];
    for wire in cases {
        // Through the resumable scan (decode) and through the build-first path that
        // decode_bytes tries on a fresh frame.
        let mut dec = Decoder::new();
        let mut buf = BytesMut::from(wire);
        let (got, _, bytes) = measure(|| dec.decode(&mut buf));
        assert_eq!(got, Ok(None), "{wire:?}");
        assert!(bytes < 1024, "{wire:?}: decode asked for {bytes} bytes");
        let input = shared(wire);
        let (got, _, bytes) = measure(|| Decoder::new().decode_bytes(&input));
        assert_eq!(got, Ok(None), "{wire:?}");
        assert!(
            bytes < 1024,
            "{wire:?}: decode_bytes asked for {bytes} bytes"
        );
    }
}

#[test]
fn a_build_tried_on_an_incomplete_frame_allocates_no_more_than_the_bytes_in_hand_allow() {
    // Every level declares as many elements as the bytes could hold if they were all its
    // own: a build must not reserve that much at every level.
    let wire = "*60\r\n".repeat(60).into_bytes();
    let input = shared(&wire);
    let (got, _, bytes) = measure(|| Decoder::new().decode_bytes(&input));
    assert_eq!(got, Ok(None));
    // The build's reservations, plus the scan's stack of open aggregates (at most
    // max_depth = 64 entries of two words, grown by doubling).
    let bound = wire.len() / 3 * std::mem::size_of::<Frame>() + 2 * 64 * 16;
    assert!(bytes <= bound, "asked for {bytes} bytes, bound {bound}");
}

#[test]
fn encoding_into_a_buffer_with_room_allocates_nothing() {
    let keys: Vec<String> = (0..300).map(|i| format!("queue:{i}")).collect();
    let mut out = Vec::with_capacity(16 * 1024);
    let ((), allocations, _) = measure(|| {
        encode_command(&mut out, ["LPUSH", "jobs", "a", "b"]);
        CommandWriter::new(&mut out, keys.len() + 5)
            .arg("BLMPOP")
            .arg_int(5)
            .arg_int(keys.len() as i64)
            .args(&keys)
            .arg("RIGHT")
            .arg_int(-9_223_372_036_854_775_808)
            .finish();
    });
    assert_eq!(allocations, 0);
    assert!(out.ends_with(b"$20\r\n-9223372036854775808\r\n"));
}
