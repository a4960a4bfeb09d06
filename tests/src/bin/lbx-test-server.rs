//! A backend for the integration tests: a TCP server that answers every line it receives with
//! its own name, so a client can tell which backend a connection reached.
//!
//! A line `bulk N` asks for a large answer instead: the line `<name> N`, then N bytes of
//! [`BULK_FILLER`] (at most [`MAX_BULK`]); it makes full-size segments toward the client,
//! for the path MTU tests.
//!
//! `lbx-test-server --name backend-1 --listen 10.77.100.1:80 --listen [fd77:100::1]:80`
//! prints `listening` on stdout once every address is bound; the test harness waits for it.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Longest line a client may send; anything longer closes the connection (the tests send a
/// few bytes, so this only bounds memory against a misbehaving peer).
const MAX_LINE: usize = 4096;
/// Largest bulk answer, in bytes after its first line.
const MAX_BULK: usize = 1 << 20;
/// The byte a bulk answer is made of (the client checks every one).
const BULK_FILLER: u8 = b'#';

#[derive(Parser, Debug)]
#[command(about = "TCP server that answers each received line with its name")]
struct Args {
    /// The name written back for every line received.
    #[arg(long)]
    name: String,
    /// An address to listen on, `ADDR:PORT` or `[V6]:PORT`; repeat for several.
    #[arg(long, required = true)]
    listen: Vec<SocketAddr>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let reply: std::sync::Arc<[u8]> = format!("{}\n", args.name).into_bytes().into();

    let mut listeners = Vec::with_capacity(args.listen.len());
    for addr in &args.listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("failed to listen on {addr}"))?;
        listeners.push(listener);
    }
    println!("listening");

    let mut tasks = tokio::task::JoinSet::new();
    for listener in listeners {
        let reply = reply.clone();
        tasks.spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        tokio::spawn(serve(stream, reply.clone()));
                    }
                    Err(e) => eprintln!("accept failed: {e}"),
                }
            }
        });
    }
    tokio::select! {
        _ = tasks.join_next() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

/// Answers each line of one connection until the peer closes or resets it.
async fn serve(stream: TcpStream, reply: std::sync::Arc<[u8]>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        // Resets (clients close abortively to avoid TIME_WAIT) end the loop like a clean EOF.
        match (&mut lines)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) if line.last() != Some(&b'\n') => return,
            Ok(_) => {}
        }
        let written = match bulk_size(&line) {
            Some(n) => write_bulk(&mut write, &reply, n).await,
            None => write.write_all(&reply).await,
        };
        if written.is_err() {
            return;
        }
    }
}

/// N of a line `bulk N` with N up to [`MAX_BULK`].
fn bulk_size(line: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(line).ok()?.trim_end();
    let n: usize = text.strip_prefix("bulk ")?.parse().ok()?;
    (n <= MAX_BULK).then_some(n)
}

/// `<name> N` and N filler bytes, as one write so that the kernel sends full segments.
async fn write_bulk(
    write: &mut tokio::net::tcp::OwnedWriteHalf,
    reply: &[u8],
    n: usize,
) -> std::io::Result<()> {
    let name = reply.strip_suffix(b"\n").unwrap_or(reply);
    let mut out = Vec::with_capacity(name.len() + 24 + n);
    out.extend_from_slice(name);
    out.extend_from_slice(format!(" {n}\n").as_bytes());
    out.resize(out.len() + n, BULK_FILLER);
    write.write_all(&out).await
}
