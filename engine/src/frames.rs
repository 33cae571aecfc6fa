//! Reading the few structured server replies the engine probes with — `CONFIG GET`,
//! `COMMAND INFO`, `COMMAND DOCS` — by their structure (RESP2 flat arrays of pairs, or
//! RESP3 maps), never by searching their text.

use ringq_resp::Frame;

/// The text of a bulk or simple string.
pub(crate) fn text(f: &Frame) -> Option<&[u8]> {
    f.as_bytes().map(|b| b.as_ref())
}

/// The (name, value) pairs of a map: a RESP3 map, or a RESP2 array of alternating names
/// and values.
pub(crate) fn pairs(f: &Frame) -> Vec<(&Frame, &Frame)> {
    match f {
        Frame::Map(m) => m.iter().map(|(k, v)| (k, v)).collect(),
        Frame::Array(v) => v.chunks_exact(2).map(|c| (&c[0], &c[1])).collect(),
        _ => Vec::new(),
    }
}

/// The value named `name` (ASCII case-insensitive) in a map-shaped reply.
pub(crate) fn field<'f>(f: &'f Frame, name: &str) -> Option<&'f Frame> {
    pairs(f).into_iter().find_map(|(k, v)| {
        text(k)
            .is_some_and(|k| k.eq_ignore_ascii_case(name.as_bytes()))
            .then_some(v)
    })
}

/// The value of configuration parameter `name` in a `CONFIG GET name` reply.
pub(crate) fn config_value<'f>(f: &'f Frame, name: &str) -> Option<&'f [u8]> {
    field(f, name).and_then(text)
}

/// Whether a `COMMAND INFO name` reply describes a command (the server has it): an
/// array whose element is not null.
pub(crate) fn command_exists(f: &Frame) -> bool {
    matches!(f, Frame::Array(v) if v.iter().any(|x| !matches!(x, Frame::Null)))
}

/// Whether a `COMMAND DOCS name` reply lists an argument introduced by `token` (such as
/// `CLAIM` for XREADGROUP): the reply maps the command's name to its docs, whose
/// `arguments` are maps with an optional `token` and nested `arguments` of their own.
pub(crate) fn docs_have_token(f: &Frame, token: &str) -> bool {
    pairs(f)
        .into_iter()
        .any(|(_, docs)| field(docs, "arguments").is_some_and(|a| arguments_have(a, token)))
}

fn arguments_have(args: &Frame, token: &str) -> bool {
    let Frame::Array(args) = args else {
        return false;
    };
    args.iter().any(|arg| {
        field(arg, "token")
            .and_then(text)
            .is_some_and(|t| t.eq_ignore_ascii_case(token.as_bytes()))
            || field(arg, "arguments").is_some_and(|a| arguments_have(a, token))
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use ringq_resp::Decoder;

    use super::*;

    fn frame(s: &str) -> Frame {
        Decoder::new()
            .build(&Bytes::from(s.to_owned()))
            .expect("a valid frame")
    }

    #[test]
    fn config_get_in_both_protocols() {
        let resp2 = frame("*2\r\n$16\r\nmaxmemory-policy\r\n$11\r\nallkeys-lru\r\n");
        assert_eq!(
            config_value(&resp2, "maxmemory-policy"),
            Some(&b"allkeys-lru"[..])
        );
        let resp3 = frame("%1\r\n$16\r\nmaxmemory-policy\r\n$10\r\nnoeviction\r\n");
        assert_eq!(
            config_value(&resp3, "maxmemory-policy"),
            Some(&b"noeviction"[..])
        );
        assert_eq!(config_value(&frame("*0\r\n"), "maxmemory-policy"), None);
    }

    #[test]
    fn command_info_says_whether_the_command_exists() {
        assert!(command_exists(&frame("*1\r\n*1\r\n$7\r\nxackdel\r\n")));
        assert!(!command_exists(&frame("*1\r\n_\r\n")));
        assert!(!command_exists(&frame("*1\r\n*-1\r\n")));
    }

    #[test]
    fn docs_are_read_by_structure_not_text() {
        // XREADGROUP's docs with a CLAIM argument nested in a block.
        let with = frame(
            "%1\r\n$10\r\nxreadgroup\r\n%2\r\n$7\r\nsummary\r\n$5\r\nclaim\r\n\
             $9\r\narguments\r\n*1\r\n%2\r\n$4\r\nname\r\n$5\r\nblock\r\n\
             $9\r\narguments\r\n*1\r\n%2\r\n$4\r\nname\r\n$13\r\nmin-idle-time\r\n\
             $5\r\ntoken\r\n$5\r\nCLAIM\r\n",
        );
        assert!(docs_have_token(&with, "CLAIM"));
        // The word "claim" elsewhere (here the summary) is not an argument.
        let without = frame(
            "*2\r\n$10\r\nxreadgroup\r\n*4\r\n$7\r\nsummary\r\n$5\r\nclaim\r\n\
             $9\r\narguments\r\n*1\r\n*4\r\n$4\r\nname\r\n$5\r\ncount\r\n\
             $5\r\ntoken\r\n$5\r\nCOUNT\r\n",
        );
        assert!(!docs_have_token(&without, "CLAIM"));
        assert!(docs_have_token(&without, "count"));
    }
}
