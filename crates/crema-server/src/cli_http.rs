//! The smallest HTTP/1.1 client the operator commands need: one request per connection to our
//! own admin server (`Connection: close`, body read to the end). Written by hand because an HTTP
//! client crate would double the binary's dependencies for four fixed requests.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response: status code and body.
pub struct Response {
    pub status: u16,
    pub body: String,
}

impl Response {
    /// The body of a 2xx response, else an error with the body.
    pub fn ok(self) -> anyhow::Result<String> {
        if (200..300).contains(&self.status) {
            Ok(self.body)
        } else {
            bail!("the node answered {}: {}", self.status, self.body.trim_end())
        }
    }
}

/// Sends one request to `addr`.
pub async fn request(
    addr: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    json: Option<&str>,
) -> anyhow::Result<Response> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        let body = json.unwrap_or("");
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        parse(&raw)
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .context("the admin server did not answer in 10 s")?
}

fn parse(raw: &[u8]) -> anyhow::Result<Response> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").context("malformed HTTP response")?;
    let status =
        head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("malformed HTTP status line")?;
    let chunked = head.lines().any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding: chunked"));
    let body = if chunked { dechunk(body)? } else { body.to_owned() };
    Ok(Response { status, body })
}

fn dechunk(mut body: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").context("malformed chunk")?;
        let size = usize::from_str_radix(size.trim(), 16).context("malformed chunk size")?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..size).context("short chunk")?);
        body = rest.get(size + 2..).context("short chunk")?;
    }
}
