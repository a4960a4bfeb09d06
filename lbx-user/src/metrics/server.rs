//! The metrics endpoint: HTTP/1.1 `GET /metrics` (and `GET /healthz`), nothing else. A
//! scrape asks the state's owner for a snapshot; scrapes closer together than
//! [`MIN_SNAPSHOT_INTERVAL`] share one, so no scraper can make the agent read the maps
//! more often than that.

use std::{
    convert::Infallible,
    sync::Arc,
    time::{Duration, Instant},
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::TcpListener,
    sync::{Mutex, Semaphore, mpsc, oneshot},
};

use super::{
    exposition::{self, Format},
    live::Live,
    snapshot::Snapshot,
};

/// Scrapes within this of the last snapshot are answered from it.
pub const MIN_SNAPSHOT_INTERVAL: Duration = Duration::from_millis(500);
/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 32;
/// A client that has not sent its request head by then is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// A request for a fresh snapshot, answered by the owner of the state (the agent).
pub struct ScrapeRequest(pub oneshot::Sender<Snapshot>);

struct Endpoint<E> {
    owner: mpsc::Sender<E>,
    live: Arc<Live>,
    last: Mutex<Option<(Instant, Arc<Snapshot>)>>,
}

impl<E: From<ScrapeRequest>> Endpoint<E> {
    async fn snapshot(&self) -> Option<Arc<Snapshot>> {
        // Held across the round trip: concurrent scrapes wait for one snapshot, then share it.
        let mut last = self.last.lock().await;
        if let Some((at, s)) = &*last
            && at.elapsed() < MIN_SNAPSHOT_INTERVAL
        {
            return Some(s.clone());
        }
        let (tx, rx) = oneshot::channel();
        self.owner.send(E::from(ScrapeRequest(tx))).await.ok()?;
        let s = Arc::new(rx.await.ok()?);
        *last = Some((Instant::now(), s.clone()));
        Some(s)
    }

    async fn respond(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path();
        if path != "/metrics" && path != "/healthz" {
            return plain(
                StatusCode::NOT_FOUND,
                "not found: lbx serves /metrics and /healthz\n",
            );
        }
        if req.method() != Method::GET {
            let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET is served\n");
            r.headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
            return r;
        }
        if path == "/healthz" {
            return plain(StatusCode::OK, "ok\n");
        }
        let format = Format::from_accept(
            req.headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok()),
        );
        let Some(snapshot) = self.snapshot().await else {
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "the agent is shutting down\n",
            );
        };
        let body = exposition::encode(&self.live, snapshot, format);
        let mut r = Response::new(Full::new(Bytes::from(body)));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(format.content_type()),
        );
        r
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Serves the endpoint on `listener` until the task is dropped; snapshots come from
/// `owner`, which answers each [`ScrapeRequest`].
pub async fn serve<E>(listener: TcpListener, owner: mpsc::Sender<E>, live: Arc<Live>)
where
    E: From<ScrapeRequest> + Send + 'static,
{
    let endpoint = Arc::new(Endpoint {
        owner,
        live,
        last: Mutex::new(None),
    });
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let endpoint = endpoint.clone();
                async move { Ok::<_, Infallible>(endpoint.respond(req).await) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(permit);
        });
    }
}
