//! `lbx backend drain --wait`: after the drain is published, the agent is asked for the
//! backend's active flows until there are none, or the timeout passes.

use std::{
    net::IpAddr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use crate::{
    agent::{api::Request, socket},
    config::VipId,
};

/// How often the count is asked for: twice per tick of the agent's clock at the default
/// control interval (a second); asking more often would learn nothing new.
const POLL: Duration = Duration::from_millis(500);

/// What to wait for.
pub struct Wait {
    pub vip: VipId,
    pub address: IpAddr,
    pub timeout: Option<Duration>,
}

/// The backend kept active flows past the timeout; it stays drained.
#[derive(Debug, thiserror::Error)]
#[error(
    "backend {address} of VIP {vip} still has {active} active flows after {waited_s} s; \
     it stays drained (no new flows)"
)]
pub struct TimedOut {
    pub vip: VipId,
    pub address: IpAddr,
    pub active: u64,
    pub waited_s: u64,
}

/// Waits for the drained backend's last active flow to go, then prints the outcome
/// (`answer` is the drain's own answer: the generation that published it).
pub fn wait(socket: &Path, wait: Wait, answer: &Value, json: bool) -> Result<()> {
    let started = Instant::now();
    if !json {
        println!(
            "ok: published generation {}; waiting for the flows of {} to end",
            answer["generation"], wait.address
        );
    }
    let mut last = None;
    loop {
        let active = active_flows(socket, &wait)?;
        if active == 0 {
            let waited = started.elapsed().as_secs_f64();
            if json {
                let out = json!({
                    "generation": answer["generation"],
                    "active_flows": 0,
                    "waited_seconds": waited,
                });
                println!("{}", serde_json::to_string_pretty(&out).context("json")?);
            } else {
                println!(
                    "drained: {} has no active flow ({waited:.1} s)",
                    wait.address
                );
            }
            return Ok(());
        }
        if let Some(limit) = wait.timeout
            && started.elapsed() >= limit
        {
            return Err(TimedOut {
                vip: wait.vip,
                address: wait.address,
                active,
                waited_s: started.elapsed().as_secs(),
            }
            .into());
        }
        if last != Some(active) && !json {
            eprintln!("{}: {active} active flows", wait.address);
        }
        last = Some(active);
        std::thread::sleep(POLL);
    }
}

/// The backend's active flows as the agent counts them now.
fn active_flows(socket: &Path, wait: &Wait) -> Result<u64> {
    let list = socket::call(
        socket,
        &Request::BackendList {
            vip: Some(wait.vip),
        },
    )?;
    list.as_array()
        .into_iter()
        .flatten()
        .find(|b| b["address"] == json!(wait.address))
        .and_then(|b| b["active_flows"].as_u64())
        .with_context(|| {
            format!(
                "backend {} of VIP {} is no longer configured: nothing left to wait for",
                wait.address, wait.vip
            )
        })
}
