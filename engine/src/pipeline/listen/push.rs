//! Push frames of a subscribed connection, RESP3 (`>`) or RESP2 (`*`) alike: messages
//! (`message`, `pmessage`, `smessage`) and (un)subscribe confirmations, walked with the
//! codec's zero-allocation [`Reader`].

use std::ops::Range;

use bytes::Bytes;
use ringq_resp::{Reader, Token};

use crate::conn::Failure;
use crate::error::{Error, ErrorKind};
use crate::handler::SourceKind;

/// Where a published message's parts lie in its push frame.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Parts {
    /// The kind of subscription it came through.
    pub kind: SourceKind,
    /// The subscription's name (the channel, or the pattern that matched).
    pub name: Range<usize>,
    pub channel: Range<usize>,
    pub payload: Range<usize>,
}

/// What a push frame says.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Push {
    /// A published message.
    Message(Parts),
    /// `subscribe` (`on`) or `unsubscribe` of the subscription `name`.
    Confirm {
        kind: SourceKind,
        name: Range<usize>,
        on: bool,
    },
    /// Anything else (a RESP3 push of another kind, such as client-side caching's
    /// `invalidate`): not for this pipeline.
    Other,
}

fn malformed(frame: &[u8], what: &str) -> Failure {
    let shown = String::from_utf8_lossy(&frame[..frame.len().min(80)]).into_owned();
    Failure::Fatal(Error::new(
        ErrorKind::Protocol,
        format!("malformed pub/sub push ({what}): {shown:?}"),
    ))
}

/// Reads one push frame.
pub(super) fn parse(frame: &Bytes) -> Result<Push, Failure> {
    let mut r = Reader::new(frame.clone());
    let proto = |_| malformed(frame, "not RESP");
    let n = match r.next_value_token().map_err(proto)? {
        Token::Push(n) | Token::Array(n) => n,
        _ => return Err(malformed(frame, "not an array")),
    };
    let range = |r: &mut Reader| match r.next_range() {
        Ok(Ok(at)) => Ok(at),
        _ => Err(malformed(frame, "expected a string")),
    };
    if n < 2 {
        return Ok(Push::Other);
    }
    let kind_at = range(&mut r)?;
    let kind = &frame[kind_at];
    let (source, message, on) = match kind {
        b"message" => (SourceKind::Channel, true, true),
        b"smessage" => (SourceKind::ShardChannel, true, true),
        b"pmessage" => (SourceKind::Pattern, true, true),
        b"subscribe" => (SourceKind::Channel, false, true),
        b"psubscribe" => (SourceKind::Pattern, false, true),
        b"ssubscribe" => (SourceKind::ShardChannel, false, true),
        b"unsubscribe" => (SourceKind::Channel, false, false),
        b"punsubscribe" => (SourceKind::Pattern, false, false),
        b"sunsubscribe" => (SourceKind::ShardChannel, false, false),
        _ => return Ok(Push::Other),
    };
    if !message {
        let name = range(&mut r)?;
        return Ok(Push::Confirm {
            kind: source,
            name,
            on,
        });
    }
    let want = if source == SourceKind::Pattern { 4 } else { 3 };
    if n != want {
        return Err(malformed(frame, "wrong number of elements"));
    }
    let name = range(&mut r)?;
    let channel = if source == SourceKind::Pattern {
        range(&mut r)?
    } else {
        name.clone()
    };
    let payload = range(&mut r)?;
    Ok(Push::Message(Parts {
        kind: source,
        name,
        channel,
        payload,
    }))
}

/// Which of the name maps holds subscriptions of `kind`.
pub(super) fn kind_slot(kind: SourceKind) -> usize {
    match kind {
        SourceKind::Pattern => 1,
        SourceKind::ShardChannel => 2,
        SourceKind::Channel | SourceKind::Queue | SourceKind::Stream => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(frame: &Bytes, r: &Range<usize>) -> Vec<u8> {
        frame[r.clone()].to_vec()
    }

    #[test]
    fn reads_messages_and_confirmations_in_both_protocols() {
        let f = Bytes::from_static(b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n");
        let Push::Message(Parts {
            kind,
            name,
            channel,
            payload,
        }) = parse(&f).unwrap()
        else {
            panic!()
        };
        assert_eq!(kind, SourceKind::Channel);
        assert_eq!(
            (at(&f, &name), at(&f, &channel), at(&f, &payload)),
            (b"ch".to_vec(), b"ch".to_vec(), b"hi".to_vec())
        );
        let f =
            Bytes::from_static(b"*4\r\n$8\r\npmessage\r\n$3\r\nc.*\r\n$3\r\nc.1\r\n$1\r\nx\r\n");
        let Push::Message(Parts {
            kind,
            name,
            channel,
            payload,
        }) = parse(&f).unwrap()
        else {
            panic!()
        };
        assert_eq!(kind, SourceKind::Pattern);
        assert_eq!(
            (at(&f, &name), at(&f, &channel), at(&f, &payload)),
            (b"c.*".to_vec(), b"c.1".to_vec(), b"x".to_vec())
        );
        let f = Bytes::from_static(b">3\r\n$10\r\nssubscribe\r\n$1\r\ns\r\n:1\r\n");
        assert!(matches!(
            parse(&f).unwrap(),
            Push::Confirm {
                kind: SourceKind::ShardChannel,
                on: true,
                ..
            }
        ));
        let f = Bytes::from_static(b"*3\r\n$11\r\nunsubscribe\r\n$1\r\nc\r\n:0\r\n");
        assert!(matches!(
            parse(&f).unwrap(),
            Push::Confirm {
                kind: SourceKind::Channel,
                on: false,
                ..
            }
        ));
        let f = Bytes::from_static(b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n");
        assert_eq!(parse(&f).unwrap(), Push::Other);
        let f = Bytes::from_static(b">2\r\n$7\r\nmessage\r\n$2\r\nch\r\n");
        assert!(
            parse(&f).is_err(),
            "a message without a payload is malformed"
        );
    }
}
