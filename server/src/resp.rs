//! RESP2, the Redis protocol: parsing requests (arrays of bulk strings, and
//! inline commands) incrementally, and writing replies.
//!
//! The parser never allocates more than the bytes a client has sent: a
//! declared length is checked against the limits first, and an array's
//! element vector grows as elements arrive.

use std::fmt;
use std::ops::Range;

/// The longest bulk string a request may carry (Redis's `proto-max-bulk-len`).
pub const MAX_BULK: usize = 512 << 20;
/// The most elements a request array may declare (Redis's limit).
pub const MAX_ARGS: usize = 1 << 20;
/// The longest header or inline command line.
pub const MAX_LINE: usize = 64 << 10;

/// A request the parser rejects; the connection is closed after the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub &'static str);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Protocol error: {}", self.0)
    }
}

/// Where each argument of a request is in the buffer it was parsed from.
pub type Args = Vec<Range<usize>>;

/// Parses one request at the start of `buf`: `Ok(None)` if it is not
/// complete yet, else the bytes it took, with where its arguments are in
/// `buf` in `args` (cleared first: one vector serves every request). An
/// empty argument list (`*0`, a blank inline line) is a request to skip.
pub fn parse(buf: &[u8], args: &mut Args) -> Result<Option<usize>, ProtocolError> {
    args.clear();
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != b'*' {
        return parse_inline(buf, args);
    }
    let Some((count, mut pos)) = line_number(buf, 1)? else {
        return Ok(None);
    };
    if count <= 0 {
        return Ok(Some(pos));
    }
    let count = usize::try_from(count).map_err(|_| ProtocolError("invalid multibulk length"))?;
    if count > MAX_ARGS {
        return Err(ProtocolError("invalid multibulk length"));
    }
    for _ in 0..count {
        match buf.get(pos) {
            None => return Ok(None),
            Some(b'$') => {}
            Some(_) => return Err(ProtocolError("expected '$'")),
        }
        let Some((len, start)) = line_number(buf, pos + 1)? else {
            return Ok(None);
        };
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= MAX_BULK)
            .ok_or(ProtocolError("invalid bulk length"))?;
        let end = start + len;
        if buf.len() < end + 2 {
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(ProtocolError("bulk string not followed by CRLF"));
        }
        args.push(start..end);
        pos = end + 2;
    }
    Ok(Some(pos))
}

/// The integer on the line starting at `from`, and where the next line
/// starts; `None` if the line is not complete.
fn line_number(buf: &[u8], from: usize) -> Result<Option<(i64, usize)>, ProtocolError> {
    let Some(rel) = buf[from.min(buf.len())..].iter().position(|&b| b == b'\r') else {
        if buf.len() - from.min(buf.len()) > 32 {
            return Err(ProtocolError("invalid length line"));
        }
        return Ok(None);
    };
    let end = from + rel;
    match buf.get(end + 1) {
        None => return Ok(None),
        Some(b'\n') => {}
        Some(_) => return Err(ProtocolError("expected LF after CR")),
    }
    let text = std::str::from_utf8(&buf[from..end]).map_err(|_| ProtocolError("invalid length"))?;
    let n: i64 = text.parse().map_err(|_| ProtocolError("invalid length"))?;
    Ok(Some((n, end + 2)))
}

/// An inline command: one line of words separated by spaces.
fn parse_inline(buf: &[u8], args: &mut Args) -> Result<Option<usize>, ProtocolError> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > MAX_LINE {
            return Err(ProtocolError("too big inline request"));
        }
        return Ok(None);
    };
    let mut start = None;
    for (i, &b) in buf[..nl].iter().enumerate() {
        match (b.is_ascii_whitespace(), start) {
            (false, None) => start = Some(i),
            (true, Some(s)) => {
                args.push(s..i);
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        args.push(s..nl);
    }
    Ok(Some(nl + 1))
}

/// Appends RESP2 replies to a buffer.
pub struct Reply<'a>(pub &'a mut Vec<u8>);

/// Appends `prefix`, the decimal `n` and CRLF, without an allocation.
fn header(out: &mut Vec<u8>, prefix: u8, n: i64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = n.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.push(prefix);
    if n < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

impl Reply<'_> {
    pub fn simple(&mut self, s: &str) {
        self.0.push(b'+');
        self.0.extend_from_slice(s.as_bytes());
        self.0.extend_from_slice(b"\r\n");
    }

    pub fn error(&mut self, s: &str) {
        self.0.push(b'-');
        // An error line cannot hold a line break.
        self.0.extend(
            s.bytes()
                .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
        );
        self.0.extend_from_slice(b"\r\n");
    }

    pub fn int(&mut self, n: i64) {
        header(self.0, b':', n);
    }

    pub fn bulk(&mut self, data: &[u8]) {
        self.0.reserve(data.len() + 24);
        header(self.0, b'$', data.len() as i64);
        self.0.extend_from_slice(data);
        self.0.extend_from_slice(b"\r\n");
    }

    pub fn nil(&mut self) {
        self.0.extend_from_slice(b"$-1\r\n");
    }

    pub fn array(&mut self, len: usize) {
        header(self.0, b'*', len as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The arguments of the first request in `buf`, as strings.
    fn words(buf: &[u8]) -> Result<Option<(Vec<String>, usize)>, ProtocolError> {
        let mut args = Vec::new();
        Ok(parse(buf, &mut args)?.map(|used| {
            let words = args
                .into_iter()
                .map(|r| String::from_utf8(buf[r].to_vec()).unwrap())
                .collect();
            (words, used)
        }))
    }

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn arrays_parse_whole_or_not_at_all() {
        let req = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n";
        for cut in 0..req.len() {
            assert_eq!(words(&req[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(
            words(req),
            Ok(Some((args(&["SET", "k", "hello"]), req.len())))
        );
    }

    #[test]
    fn pipelined_requests_parse_one_at_a_time() {
        let req = b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPING\r\n";
        assert_eq!(words(req), Ok(Some((args(&["PING"]), 14))));
        assert_eq!(words(&req[14..]), Ok(Some((args(&["PING"]), 14))));
    }

    #[test]
    fn inline_commands() {
        assert_eq!(
            words(b"set a  1\r\n"),
            Ok(Some((args(&["set", "a", "1"]), 10)))
        );
        assert_eq!(words(b"\r\n"), Ok(Some((vec![], 2))));
        assert_eq!(words(b"PING"), Ok(None));
    }

    #[test]
    fn hostile_lengths_are_refused_before_any_allocation() {
        assert_eq!(
            words(b"*1\r\n$1073741824\r\n"),
            Err(ProtocolError("invalid bulk length"))
        );
        assert_eq!(
            words(b"*99999999999\r\n"),
            Err(ProtocolError("invalid multibulk length"))
        );
        assert_eq!(
            words(b"*1\r\n$-5\r\n"),
            Err(ProtocolError("invalid bulk length"))
        );
        assert_eq!(words(b"*x\r\n"), Err(ProtocolError("invalid length")));
        assert_eq!(words(b"*1\r\n+OK\r\n"), Err(ProtocolError("expected '$'")));
        assert_eq!(
            words(b"*1\r\n$2\r\nabcd\r\n"),
            Err(ProtocolError("bulk string not followed by CRLF"))
        );
        assert_eq!(
            words(&[b'*'; 40]),
            Err(ProtocolError("invalid length line"))
        );
        assert!(words(&vec![b'a'; MAX_LINE + 1]).is_err());
    }

    #[test]
    fn replies() {
        let mut out = Vec::new();
        let mut r = Reply(&mut out);
        r.simple("OK");
        r.int(-3);
        r.int(i64::MIN);
        r.int(0);
        r.bulk(b"x");
        r.nil();
        r.array(2);
        r.error("ERR bad\r\nthing");
        assert_eq!(
            out,
            b"+OK\r\n:-3\r\n:-9223372036854775808\r\n:0\r\n$1\r\nx\r\n$-1\r\n*2\r\n-ERR bad  thing\r\n"
        );
    }
}
