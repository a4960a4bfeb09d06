//! The control socket: a Unix socket that only root may use, served by the agent and
//! called by the CLI.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::{fs::PermissionsExt, net::UnixStream},
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt},
    net::UnixListener,
    sync::{mpsc, oneshot},
};

use super::api::{ErrorKind, Failure, Job, Request, Response};

/// Where `lbx run --iface IF` listens unless told otherwise.
pub fn default_socket(iface: &str) -> PathBuf {
    PathBuf::from(format!("/run/lbx/{iface}.sock"))
}

/// Binds the socket, root-only: mode 0600 and a peer-credential check.
/// The socket file a bound listener made: removed when this is dropped, so that an agent
/// that fails to start, or stops, leaves no file behind.
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub fn bind(path: &Path) -> std::io::Result<(UnixListener, SocketFile)> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A socket file left by an agent that died; a live agent is detected by connecting.
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("another lbx agent is serving {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    let file = SocketFile(path.to_path_buf());
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok((listener, file))
}

/// Accepts connections until the task is dropped, passing requests to `jobs`.
pub async fn serve(listener: UnixListener, jobs: mpsc::Sender<Job>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let jobs = jobs.clone();
        tokio::spawn(async move {
            let root = stream.peer_cred().map(|c| c.uid() == 0).unwrap_or(false);
            let (rd, mut wr) = stream.into_split();
            let mut lines = tokio::io::BufReader::new(rd).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let resp = if !root {
                    Response::Error(Failure::new(
                        ErrorKind::Permission,
                        "permission denied: the lbx control socket is for root only",
                    ))
                } else {
                    match serde_json::from_str::<Request>(&line) {
                        Err(e) => Response::Error(Failure::new(
                            ErrorKind::Usage,
                            format!("malformed request: {e}"),
                        )),
                        Ok(req) => {
                            let (tx, rx) = oneshot::channel();
                            if jobs.send((req, tx)).await.is_err() {
                                return;
                            }
                            rx.await.unwrap_or(Response::Error(Failure::new(
                                ErrorKind::AgentUnreachable,
                                "the agent is shutting down",
                            )))
                        }
                    }
                };
                let mut out = serde_json::to_vec(&resp).expect("serializable");
                out.push(b'\n');
                if wr.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no lbx agent found: {0}; start one with `lbx run --iface IF`, or name its socket with --socket"
    )]
    NoAgent(String),
    #[error("permission denied on {0}: the control socket is for root only; run lbx as root")]
    Permission(PathBuf),
    #[error("cannot talk to the agent at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", .0.message)]
    Agent(Failure),
}

impl ClientError {
    pub fn failure(&self) -> Failure {
        match self {
            ClientError::Agent(f) => f.clone(),
            ClientError::Permission(_) => Failure::new(ErrorKind::Permission, self.to_string()),
            ClientError::NoAgent(_) | ClientError::Io { .. } => {
                Failure::new(ErrorKind::AgentUnreachable, self.to_string())
            }
        }
    }
}

/// The socket to use: the one given, or the only agent's under /run/lbx.
pub fn find_socket(given: Option<PathBuf>) -> Result<PathBuf, ClientError> {
    if let Some(p) = given {
        return Ok(p);
    }
    let dir = Path::new("/run/lbx");
    let socks: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "sock"))
                .collect()
        })
        .unwrap_or_default();
    match socks.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(ClientError::NoAgent(format!(
            "no socket in {}",
            dir.display()
        ))),
        many => Err(ClientError::NoAgent(format!(
            "several agents run ({}); pick one",
            many.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Sends one request and waits for its answer.
pub fn call(socket: &Path, req: &Request) -> Result<Value, ClientError> {
    let io = |source| ClientError::Io {
        path: socket.to_path_buf(),
        source,
    };
    let stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => ClientError::Permission(socket.to_path_buf()),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ClientError::NoAgent(format!("nothing listens on {}", socket.display()))
        }
        _ => io(e),
    })?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io)?;
    let mut line = serde_json::to_vec(req).expect("serializable");
    line.push(b'\n');
    (&stream).write_all(&line).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).map_err(io)?;
    match serde_json::from_str::<Response>(&answer) {
        Ok(Response::Ok(v)) => Ok(v),
        Ok(Response::Error(e)) => Err(ClientError::Agent(e)),
        Err(e) => Err(io(std::io::Error::other(format!(
            "bad answer from the agent: {e}"
        )))),
    }
}
