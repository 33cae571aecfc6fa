//! RESP2 and RESP3 for ringq: an incremental, zero-copy, bounded decoder and a command
//! encoder. No I/O and no `unsafe`.
//!
//! # Layout
//! - `frame`: [`Frame`], the owned reply tree, and its wire form.
//! - `head` (private): reading one frame header; the single place validation lives.
//! - `decode`: [`Decoder`] (resumable scan, then build), [`Reader`] (zero-allocation
//!   token walk over a complete frame), [`Limits`].
//! - `encode`: [`encode_command`] and [`CommandWriter`], writing into any `BufMut`.
//! - `server_error`: [`ServerError`] and [`ServerErrorKind`] (MOVED, LOADING, WRONGPASS…).
//! - `error`: [`DecodeError`], typed and carrying the byte offset.
//!
//! # Example
//! ```
//! use bytes::BytesMut;
//! use ringq_resp::{encode_command, Decoder, Frame};
//!
//! let mut out = BytesMut::new();
//! encode_command(&mut out, ["LPUSH", "jobs", "hello"]);
//! assert_eq!(&out[..], b"*3\r\n$5\r\nLPUSH\r\n$4\r\njobs\r\n$5\r\nhello\r\n");
//!
//! // A BRPOP reply arriving in two reads.
//! let mut dec = Decoder::new();
//! let mut input = BytesMut::from(&b"*2\r\n$4\r\njobs\r\n$5\r\nhel"[..]);
//! assert!(dec.decode(&mut input)?.is_none());
//! input.extend_from_slice(b"lo\r\n");
//! let reply = dec.decode(&mut input)?.expect("a whole frame");
//! assert_eq!(reply.as_elements().map(|e| e.len()), Some(2));
//! assert_eq!(reply.as_elements().unwrap()[1], Frame::BulkString("hello".into()));
//! # Ok::<(), ringq_resp::DecodeError>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod decode;
mod encode;
mod error;
mod frame;
mod head;
mod server_error;

pub use decode::{Decoder, Limits, Reader, Token};
pub use encode::{encode_command, write_len_line, CommandWriter};
pub use error::{DecodeError, DecodeErrorKind};
pub use frame::Frame;
pub use server_error::{ServerError, ServerErrorKind};
