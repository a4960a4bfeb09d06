//! Just enough HTTP/1.1 for the benchmark: one request per connection, `Connection: close`,
//! small heads, no bodies in requests. Both the capacity server and the load generator use it.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};

/// Largest request or response head either side accepts.
pub const MAX_HEAD: usize = 8 * 1024;
/// Largest whole response the load generator reads.
pub const MAX_RESPONSE: usize = 64 * 1024;
/// The response header naming the backend that answered.
pub const BACKEND_HEADER: &str = "X-Backend";

/// Reads from `r` into `buf` until it holds a whole head (up to and including the blank line).
/// Returns the head's length, or `None` if the peer closed or the head grew past [`MAX_HEAD`].
pub async fn read_head<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<usize>> {
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = head_end(buf) {
            return Ok(Some(end));
        }
        if buf.len() >= MAX_HEAD {
            return Ok(None);
        }
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Where the head of `buf` ends (just past `\r\n\r\n`), if it is complete.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// The method and target of a request head: `GET /health HTTP/1.1` gives `("GET", "/health")`.
pub fn request_line(head: &[u8]) -> Option<(&str, &str)> {
    let line = head.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    let method = parts.next()?;
    let target = parts.next()?;
    parts
        .next()?
        .starts_with("HTTP/1.")
        .then_some((method, target))
}

/// The path of a request target, without its query.
pub fn path(target: &str) -> &str {
    target.split_once('?').map_or(target, |(p, _)| p)
}

/// The value of `key` in a request target's query: `/a?rps=150` and `rps` give `150`.
pub fn query_param<'a>(target: &'a str, key: &str) -> Option<&'a str> {
    let (_, query) = target.split_once('?')?;
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find_map(|(k, v)| (k == key).then_some(v))
}

/// A whole response that closes the connection, naming the backend in a header and the body.
pub fn response(status: u16, reason: &str, backend: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {reason}\r\n{BACKEND_HEADER}: {backend}\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A request for `target` that asks the server to close the connection after answering.
pub fn request(target: &str, host: &str) -> Vec<u8> {
    format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lbx-loadgen\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}

/// What the load generator needs from a response: its status and who answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub backend: Option<String>,
}

/// Parses the head of a response; `None` if it is not HTTP/1.x.
pub fn parse_response(bytes: &[u8]) -> Option<Answer> {
    let end = head_end(bytes).unwrap_or(bytes.len());
    let head = std::str::from_utf8(&bytes[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()?
        .strip_prefix("HTTP/1.")?
        .get(2..5)?
        .parse()
        .ok()?;
    let backend = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case(BACKEND_HEADER)
            .then(|| value.trim().to_owned())
    });
    Some(Answer { status, backend })
}

/// One request on a new connection to `target`; the parsed answer once the server has closed.
pub async fn exchange(target: SocketAddr, request: &[u8]) -> std::io::Result<Answer> {
    let mut stream = tokio::net::TcpStream::connect(target).await?;
    stream.set_nodelay(true)?;
    stream.write_all(request).await?;
    let mut answer = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&chunk[..n]);
        if answer.len() > MAX_RESPONSE {
            return Err(std::io::Error::other("answer too long"));
        }
    }
    parse_response(&answer).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed before a whole HTTP answer",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_parsed() {
        let head = b"GET /admin/capacity?rps=150&x=1 HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(head_end(head), Some(head.len()));
        let (method, target) = request_line(head).unwrap();
        assert_eq!((method, path(target)), ("GET", "/admin/capacity"));
        assert_eq!(query_param(target, "rps"), Some("150"));
        assert_eq!(query_param(target, "y"), None);
        assert_eq!(request_line(b"GET / SMTP\r\n\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }

    #[test]
    fn responses_round_trip() {
        let bytes = response(503, "Service Unavailable", "backend-2", "queue full\n");
        let answer = parse_response(&bytes).unwrap();
        assert_eq!(answer.status, 503);
        assert_eq!(answer.backend.as_deref(), Some("backend-2"));
        assert_eq!(parse_response(b"SSH-2.0-x\r\n"), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_head_is_read_across_chunks_and_bounded() {
        let mut buf = Vec::new();
        let mut r: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nrest";
        assert_eq!(read_head(&mut r, &mut buf).await.unwrap(), Some(27));
        let mut buf = Vec::new();
        let long = vec![b'a'; MAX_HEAD + 10];
        let mut r: &[u8] = &long;
        assert_eq!(read_head(&mut r, &mut buf).await.unwrap(), None);
    }
}
