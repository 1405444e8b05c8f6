//! Address management: the built-in host-local store, or a delegated plugin.

pub mod allocator;
pub mod disk;

use crate::config::{Env, Ipam, NetConf};
use crate::error::{code, CniError, Result};
use crate::request::RequestedIp;
use crate::result::{CniResult, IpConfig, Route};
use allocator::Store;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Addresses (with their gateways) and the routes the pod gets.
#[derive(Debug, Clone, Default)]
pub struct Lease {
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
}

/// `requested`: static addresses the runtime asked for (host-local only; a
/// delegated plugin reads them from the same environment and config).
pub fn allocate(conf: &NetConf, env: &Env, requested: &[RequestedIp]) -> Result<Lease> {
    match &conf.ipam {
        Ipam::HostLocal(h) => {
            if let Some(why) = &h.ranges_pending {
                return Err(CniError::new(code::TRY_AGAIN_LATER, why.clone()));
            }
            let dir = conf.store_dir().expect("host-local");
            let mut store = disk::DiskStore::open(&dir)?.with_index(index_dir(conf));
            let got = allocator::allocate_all(&mut store, &h.range_sets, &env.container_id, &env.ifname, requested)?;
            if let Err(e) = store.write_index(&env.container_id, &env.ifname, &got) {
                for a in &got {
                    let _ = store.release(*a);
                }
                return Err(e);
            }
            let ips = got
                .iter()
                .zip(&h.range_sets)
                .map(|(a, set)| {
                    let r = set.range_of(*a).expect("allocated inside the set");
                    IpConfig { address: r.with_prefix(*a), gateway: Some(r.gateway), interface: None }
                })
                .collect();
            let routes = h.routes.iter().map(|r| Route { dst: r.dst, gw: r.gw }).collect();
            Ok(Lease { ips, routes })
        }
        Ipam::Delegate { plugin } => {
            let out = exec_delegate(conf, env, plugin, "ADD")?;
            let r = CniResult::parse(&out, &format!("result of ipam plugin {plugin:?}"))?;
            if r.ips.is_empty() {
                let _ = exec_delegate(conf, env, plugin, "DEL");
                return Err(CniError::new(
                    code::IPAM_DELEGATE,
                    format!("ipam plugin {plugin:?} returned no addresses"),
                ));
            }
            Ok(Lease { ips: r.ips.into_iter().map(|i| IpConfig { interface: None, ..i }).collect(), routes: r.routes })
        }
    }
}

/// Free what ADD reserved for (container, ifname); nothing reserved is success.
pub fn release(conf: &NetConf, env: &Env) -> Result<()> {
    match &conf.ipam {
        Ipam::HostLocal(_) => {
            let dir = conf.store_dir().expect("host-local");
            if !dir.exists() {
                return Ok(());
            }
            let mut store = disk::DiskStore::open(&dir)?.with_index(index_dir(conf));
            store.release_by_id(&env.container_id, &env.ifname).map(|_| ())
        }
        Ipam::Delegate { plugin } => exec_delegate(conf, env, plugin, "DEL").map(|_| ()),
    }
}

/// The run dir's directory of reservation indexes, one per network.
pub const INDEX_SUBDIR: &str = "ipam";

/// Where the per-attachment reservation index of this network lives
/// (`<policy.runDir>/ipam/<network>`, tmpfs: it must not outlive the pods).
pub fn index_dir(conf: &NetConf) -> PathBuf {
    conf.policy.run_dir.join(INDEX_SUBDIR).join(&conf.name)
}

fn find_plugin(env: &Env, plugin: &str) -> Result<PathBuf> {
    env.path.iter().map(|d| d.join(plugin)).find(|p| p.is_file()).ok_or_else(|| {
        CniError::config(format!(
            "ipam.type {plugin:?}: no such plugin in CNI_PATH ({}); install it there or use \"host-local\"",
            env.path.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":")
        ))
    })
}

/// Run an IPAM plugin the way a runtime runs a plugin: same environment
/// (CNI_COMMAND replaced), the whole network config on stdin.
pub fn exec_delegate(conf: &NetConf, env: &Env, plugin: &str, command: &str) -> Result<serde_json::Value> {
    let bin = find_plugin(env, plugin)?;
    let mut child = Command::new(&bin)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| CniError::io(format!("cannot run ipam plugin {}", bin.display()), e))?;
    let body = serde_json::to_vec(&conf.raw).expect("json");
    child.stdin.take().expect("piped").write_all(&body).map_err(|e| CniError::io("writing to the ipam plugin", e))?;
    let out = child.wait_with_output().map_err(|e| CniError::io("waiting for the ipam plugin", e))?;
    let parsed: Option<serde_json::Value> = serde_json::from_slice(&out.stdout).ok();
    if !out.status.success() {
        let (c, msg) = parsed
            .as_ref()
            .map(|v| {
                (
                    v.get("code").and_then(|c| c.as_u64()).unwrap_or(0),
                    v.get("msg").and_then(|m| m.as_str()).unwrap_or("").to_string(),
                )
            })
            .unwrap_or((0, String::from_utf8_lossy(&out.stdout).into_owned()));
        return Err(CniError::new(
            code::IPAM_DELEGATE,
            format!("ipam plugin {plugin:?} {command} failed (its code {c}): {msg}"),
        ));
    }
    Ok(parsed.unwrap_or(serde_json::Value::Null))
}
