//! The cluster's background tasks: watching the configuration and the decisions,
//! writing this node's report under its lease, and its candidacy for the weights leadership.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use etcd_client::{EventType, WatchOptions};
use tokio::sync::{Notify, mpsc, watch};

use super::{
    ClusterError, ClusterOptions, Standing, Update, Versioned,
    document::{Decisions, NodeReport},
    store::{Leader, Store},
};

/// How often the node's report is written and the store's answer checked.
const REPORT_EVERY: Duration = Duration::from_millis(500);
/// Pause before a broken watch is made again.
const RETRY: Duration = Duration::from_millis(500);

pub fn spawn<E>(
    store: Store,
    opts: ClusterOptions,
    tx: mpsc::Sender<E>,
    config_seen: u64,
    decisions_seen: u64,
    report: watch::Receiver<Option<NodeReport>>,
    standing: Arc<Mutex<Standing>>,
) where
    E: From<Update> + Send + 'static,
{
    tokio::spawn(follow(store.clone(), "config", config_seen, tx.clone()));
    tokio::spawn(follow(
        store.clone(),
        "decisions",
        decisions_seen,
        tx.clone(),
    ));
    tokio::spawn(keep_reporting(store, opts, report, standing, tx));
}

fn update(key: &str, revision: u64, value: &[u8]) -> Update {
    if key == "config" {
        Update::Config(Versioned {
            revision,
            value: String::from_utf8_lossy(value).into_owned(),
        })
    } else {
        Update::Decisions(Versioned {
            revision,
            value: serde_json::from_slice::<Decisions>(value).map_err(|e| e.to_string()),
        })
    }
}

/// Delivers each revision of one key newer than `seen`: reads it, then watches from there;
/// a broken watch is made again from the last revision delivered, so none is missed.
async fn follow<E: From<Update> + Send + 'static>(
    store: Store,
    name: &'static str,
    mut seen: u64,
    tx: mpsc::Sender<E>,
) {
    let key = store.key(name);
    loop {
        let mut client = store.client();
        let current = tokio::time::timeout(
            super::options::REQUEST_TIMEOUT,
            client.get(key.clone(), None),
        )
        .await;
        let Ok(Ok(current)) = current else {
            tokio::time::sleep(RETRY).await;
            continue;
        };
        if let Some(kv) = current.kvs().first() {
            let rev = kv.mod_revision() as u64;
            if rev > seen {
                seen = rev;
                if tx.send(update(name, rev, kv.value()).into()).await.is_err() {
                    return;
                }
            }
        }
        let from = current.header().map_or(0, |h| h.revision()) + 1;
        let Ok((_watcher, mut stream)) = client
            .watch(
                key.clone(),
                Some(WatchOptions::new().with_start_revision(from)),
            )
            .await
        else {
            tokio::time::sleep(RETRY).await;
            continue;
        };
        while let Ok(Some(msg)) = stream.message().await {
            if msg.canceled() {
                break;
            }
            for ev in msg.events() {
                if ev.event_type() != EventType::Put {
                    continue;
                }
                let Some(kv) = ev.kv() else { continue };
                let rev = kv.mod_revision() as u64;
                if rev > seen {
                    seen = rev;
                    if tx.send(update(name, rev, kv.value()).into()).await.is_err() {
                        return;
                    }
                }
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Writes the node's latest report under its lease every [`REPORT_EVERY`], renewing the
/// lease, standing for the weights leadership with it and asking etcd who leads; whether
/// that works is the node's view of the store: [`Update::Connected`] and
/// [`Update::CutOff`] report each change of it, [`Update::Leadership`] each change of the
/// leadership. A node leads while etcd names it and it can ask: one cut off leads no more.
async fn keep_reporting<E: From<Update> + Send + 'static>(
    store: Store,
    opts: ClusterOptions,
    report: watch::Receiver<Option<NodeReport>>,
    standing: Arc<Mutex<Standing>>,
    tx: mpsc::Sender<E>,
) {
    let ttl = opts.lease_ttl.as_secs().max(1) as i64;
    let mut lease: Option<i64> = None;
    let mut connected: Option<bool> = None;
    let mut last_error: Option<String> = None;
    let mut leading = false;
    let mut candidacy: Option<(i64, tokio::task::JoinHandle<()>)> = None;
    let elected = Arc::new(Notify::new());
    let mut every = tokio::time::interval(REPORT_EVERY);
    loop {
        // A campaign that returns starts a round at once: the new leader leads from then,
        // not from its next report.
        tokio::select! {
            _ = every.tick() => {}
            () = elected.notified() => {}
        }
        let result: Result<Option<Leader>, ClusterError> = async {
            let id = match lease {
                Some(id) => {
                    let mut c = store.client();
                    let alive = tokio::time::timeout(super::options::REQUEST_TIMEOUT, async {
                        let (mut keeper, mut stream) = c.lease_keep_alive(id).await?;
                        keeper.keep_alive().await?;
                        Ok::<_, etcd_client::Error>(stream.message().await?.map_or(0, |r| r.ttl()))
                    })
                    .await;
                    match alive {
                        Ok(Ok(t)) if t > 0 => id,
                        // Expired while cut off: a new lease.
                        Ok(Ok(_)) => grant(&store, ttl).await?,
                        Ok(Err(e)) => {
                            // A lease that expired while the node was cut off is gone:
                            // the next round takes a new one.
                            if e.to_string().contains("not found") {
                                lease = None;
                            }
                            return Err(ClusterError::from_etcd(store.endpoints(), e));
                        }
                        Err(_) => {
                            return Err(ClusterError::Unavailable {
                                endpoints: store.endpoints().to_owned(),
                                what: "renewing this node's lease in time".into(),
                            });
                        }
                    }
                }
                None => grant(&store, ttl).await?,
            };
            lease = Some(id);
            standing.lock().expect("not poisoned").lease = Some(id);
            let latest = report.borrow().clone();
            if let Some(r) = latest {
                store.put_report(&r, id).await?;
            }
            // A new lease stands anew: the candidacy under the old one ended with it.
            if candidacy.as_ref().is_none_or(|(l, _)| *l != id) {
                if let Some((_, old)) = candidacy.take() {
                    old.abort();
                }
                let task =
                    tokio::spawn(stand(store.clone(), opts.node.clone(), id, elected.clone()));
                candidacy = Some((id, task));
            }
            Ok(store.leader().await?.filter(|l| l.lease == id))
        }
        .await;
        let leader_key = match &result {
            Ok(Some(l)) => Some(l.key.clone()),
            _ => None,
        };
        let now_leading = leader_key.is_some();
        standing.lock().expect("not poisoned").leader_key = leader_key;
        if now_leading != leading {
            leading = now_leading;
            if tx.send(Update::Leadership(leading).into()).await.is_err() {
                return;
            }
        }
        let result = result.map(drop);
        let ok = result.is_ok();
        match result {
            Err(e) if connected == Some(false) => {
                let why = e.to_string();
                if last_error.as_ref() != Some(&why) {
                    eprintln!("cluster: still cut off: {why}");
                    last_error = Some(why);
                }
            }
            _ if connected == Some(ok) => {}
            result => {
                connected = Some(ok);
                let u = match result {
                    Ok(()) => Update::Connected,
                    Err(e) => {
                        last_error = Some(e.to_string());
                        Update::CutOff(e.to_string())
                    }
                };
                if tx.send(u.into()).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Stands for the weights leadership under `lease` until elected (then says so through
/// `elected`), again after errors other than the lease's end (a new lease stands anew).
async fn stand(store: Store, node: String, lease: i64, elected: Arc<Notify>) {
    loop {
        match store.campaign(&node, lease).await {
            Ok(()) => {
                elected.notify_one();
                return;
            }
            Err(e) if e.to_string().contains("not found") => return,
            Err(_) => tokio::time::sleep(RETRY).await,
        }
    }
}

async fn grant(store: &Store, ttl: i64) -> Result<i64, ClusterError> {
    let mut c = store.client();
    match tokio::time::timeout(super::options::REQUEST_TIMEOUT, c.lease_grant(ttl, None)).await {
        Ok(Ok(r)) => Ok(r.id()),
        Ok(Err(e)) => Err(ClusterError::from_etcd(store.endpoints(), e)),
        Err(_) => Err(ClusterError::Unavailable {
            endpoints: store.endpoints().to_owned(),
            what: "granting this node's lease in time".into(),
        }),
    }
}
