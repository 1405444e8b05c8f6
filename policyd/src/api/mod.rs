//! weir-policyd's local API: read-only HTTP/JSON on a unix socket under
//! the run dir (`<run-dir>/api.sock`, mode 0600, root's), for `weirctl
//! explain` and whoever on the node may read policyd's view.
//!
//! - `GET /v1/explain?from=&to=&port=&protocol=`: why a flow is allowed or
//!   blocked ([`crate::engine::explain`]) and the dataplane's own answer
//!   ([`proof`]);
//! - `GET /v1/endpoints`: this node's endpoints, their pods, identity,
//!   isolation, the policies selecting them, READY;
//! - `GET /v1/policies`: the policies, what they isolate, the pods of this
//!   node they select, whether (and at which sync revision) the maps hold
//!   them, their problems;
//! - `GET /v1/flows?pod=NS/POD&verdict=drop|allow`: the flow log's recent
//!   records ([`crate::flows`]); with `follow=true`, new records as JSON
//!   lines as they come, until the client closes.
//!
//! The store and the engine belong to the daemon loop: a request is an
//! [`Ask`] sent to it, answered between compiles (so always from a
//! complete compile's state) by [`answer`]; the program runs of the proof
//! then happen on a blocking thread here, not in the loop. The HTTP side is
//! [`crate::http::serve_one`], the same responder as `/metrics`.

pub mod proof;
pub mod resolve;

use crate::engine::cluster_policy::CLUSTER_SCOPE;
use crate::engine::explain::Explanation;
use crate::engine::policy::CompiledPolicy;
use crate::engine::Engine;
use crate::http::{self, HttpState, Reply, Response, Target};
use crate::store::Store;
use anyhow::Context;
use serde_json::{json, Value};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};
use weir_bpf::Dataplane;
use weir_common::registry::EndpointRecord;

/// A request the API could not answer: an HTTP status and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: u16,
    pub message: String,
}

impl ApiError {
    pub fn bad(message: String) -> ApiError {
        ApiError { code: 400, message }
    }
    pub fn not_found(message: String) -> ApiError {
        ApiError { code: 404, message }
    }
    fn response(&self) -> Response {
        Response::json(self.code, &json!({"error": self.message}))
    }
}

/// What the daemon loop is asked.
#[derive(Debug, Clone)]
pub enum Question {
    Explain(resolve::Query),
    Endpoints,
    Policies,
}

#[derive(Debug)]
pub enum Answer {
    Explain(Box<(resolve::Resolved, Explanation)>),
    Json(Value),
}

/// What the maps hold, as the daemon loop's syncs left them: how a policy
/// or an endpoint is realized.
#[derive(Debug, Clone, Default)]
pub struct Realization {
    /// Per policy (store key; ClusterNetworkPolicies under
    /// [`CLUSTER_SCOPE`]): the compiled version whose entries a complete
    /// sync wrote, and that sync's revision.
    pub policies: std::collections::HashMap<crate::store::Key, (u64, u64)>,
    /// Endpoints the last compile left pending: their entries are older
    /// than the policies they read.
    pub pending: std::collections::BTreeSet<u32>,
    /// Endpoints READY in the endpoints map after the last sync.
    pub ready: std::collections::BTreeSet<u32>,
}

/// A question with the way back.
pub struct Ask {
    pub question: Question,
    pub reply: oneshot::Sender<Result<Answer, ApiError>>,
}

/// Answer `q` from the loop's state: the store, the engine after its last
/// compile, this node's endpoint records and what the maps hold.
pub fn answer(
    q: &Question,
    store: &Store,
    engine: &mut Engine,
    records: &[EndpointRecord],
    realized: &Realization,
) -> Result<Answer, ApiError> {
    let name_of = |p: &CompiledPolicy| {
        if p.namespace == CLUSTER_SCOPE {
            p.name.clone()
        } else {
            format!("{}/{}", p.namespace, p.name)
        }
    };
    match q {
        Question::Explain(query) => {
            let resolved = resolve::resolve(store, records, query)?;
            let e = engine.explain(store, &resolved.flow);
            Ok(Answer::Explain(Box::new((resolved, e))))
        }
        Question::Endpoints => {
            let mut rows: Vec<Value> = records
                .iter()
                .map(|r| {
                    let st = engine.endpoint_state(r.host_ifindex);
                    let pod = (r.pod_namespace.clone(), r.pod_name.clone());
                    let policies: Vec<String> =
                        engine.selecting_policies(store, &pod).iter().map(|p| name_of(p)).collect();
                    json!({
                        "pod": format!("{}/{}", r.pod_namespace, r.pod_name),
                        "ifindex": r.host_ifindex,
                        "interface": r.host_ifname,
                        "ips": r.ips,
                        "identity": st.map(|s| s.identity),
                        "ingressIsolated": st.map(|s| s.ingress_isolated),
                        "egressIsolated": st.map(|s| s.egress_isolated),
                        "ingressAudited": st.map(|s| s.ingress_audited),
                        "egressAudited": st.map(|s| s.egress_audited),
                        "compiled": st.is_some(),
                        "policies": policies,
                        "ready": realized.ready.contains(&r.host_ifindex),
                        "pending": realized.pending.contains(&r.host_ifindex),
                    })
                })
                .collect();
            rows.sort_by(|a, b| a["pod"].as_str().cmp(&b["pod"].as_str()));
            Ok(Answer::Json(json!({"endpoints": rows})))
        }
        Question::Policies => {
            let diagnostics = |c: &Option<Arc<CompiledPolicy>>| {
                c.as_ref()
                    .map(|c| c.diagnostics.iter().map(|d| format!("{}: {}", d.field, d.message)).collect::<Vec<_>>())
            };
            // This node's pods each policy selects, and whether its current
            // compiled form is in the maps for all of them.
            let mut selects: std::collections::HashMap<String, Vec<(String, bool)>> = Default::default();
            for r in records {
                let pod = (r.pod_namespace.clone(), r.pod_name.clone());
                let pending = realized.pending.contains(&r.host_ifindex);
                for p in engine.selecting_policies(store, &pod) {
                    selects.entry(name_of(&p)).or_default().push((format!("{}/{}", pod.0, pod.1), pending));
                }
            }
            let realization = |key: crate::store::Key, c: &Option<Arc<CompiledPolicy>>| {
                let name = if key.0 == CLUSTER_SCOPE { key.1.clone() } else { format!("{}/{}", key.0, key.1) };
                let mut pods = selects.get(&name).cloned().unwrap_or_default();
                pods.sort();
                let revision = c
                    .as_ref()
                    .and_then(|c| realized.policies.get(&key).filter(|(v, _)| *v == c.version))
                    .map(|(_, rev)| *rev);
                let complete = revision.is_some() && pods.iter().all(|(_, pending)| !pending);
                (pods.into_iter().map(|(p, _)| p).collect::<Vec<_>>(), complete, revision)
            };
            let mut rows: Vec<Value> = store
                .policies
                .keys()
                .map(|k| {
                    let c = engine.compiled_policy(k);
                    let (pods, realized, revision) = realization(k.clone(), &c);
                    json!({
                        "selects": pods,
                        "realized": realized,
                        "revision": revision,
                        "kind": "NetworkPolicy",
                        "policy": format!("{}/{}", k.0, k.1),
                        "isolatesIngress": c.as_ref().map(|c| c.isolates_ingress),
                        "isolatesEgress": c.as_ref().map(|c| c.isolates_egress),
                        "mode": c.as_ref().map(|c| if c.audit { "audit" } else { "enforce" }),
                        "rules": c.as_ref().map(|c| c.rules.len()),
                        "diagnostics": diagnostics(&c),
                    })
                })
                .collect();
            rows.extend(store.cluster_policies.iter().map(|(name, cnp)| {
                let key = (CLUSTER_SCOPE.to_string(), name.clone());
                let c = engine.compiled_policy(&key);
                let (pods, realized, revision) = realization(key, &c);
                json!({
                    "selects": pods,
                    "realized": realized,
                    "revision": revision,
                    "kind": "ClusterNetworkPolicy",
                    "policy": name,
                    "tier": cnp.spec.tier,
                    "priority": cnp.spec.priority,
                    "mode": "enforce",
                    "rules": c.as_ref().map(|c| c.rules.len()),
                    "diagnostics": diagnostics(&c),
                })
            }));
            Ok(Answer::Json(json!({"policies": rows})))
        }
    }
}

/// Where the API listens under a run dir.
pub fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join(weir_common::paths::POLICYD_API_SOCKET)
}

/// Bind the API socket under `run_dir` (which must be root's, like every
/// run-dir path: `weir_common::trust`). A stale socket of a policyd that
/// is gone is replaced; one a running policyd answers on is not, and
/// anything that is not a socket is refused. The socket is made 0600
/// under a temporary name and renamed into place, so it is never
/// reachable with looser bits.
pub fn bind(run_dir: &Path) -> anyhow::Result<UnixListener> {
    weir_common::trust::ensure_dir(run_dir).with_context(|| format!("--run-dir {}", run_dir.display()))?;
    let path = socket_path(run_dir);
    match std::fs::symlink_metadata(&path) {
        Ok(md) if md.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                anyhow::bail!(
                    "{}: another weir-policyd answers on this run dir's API socket; stop it, or give this one another --run-dir",
                    path.display()
                );
            }
        }
        Ok(_) => anyhow::bail!("{}: exists and is not a socket; remove it (`rm {0}`)", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| path.display().to_string()),
    }
    let tmp = run_dir.join(format!("{}.{}.tmp", weir_common::paths::POLICYD_API_SOCKET, std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let bind = || -> std::io::Result<std::os::unix::net::UnixListener> {
        let l = std::os::unix::net::UnixListener::bind(&tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&tmp, &path)?;
        l.set_nonblocking(true)?;
        Ok(l)
    };
    let listener = bind().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    });
    let listener = listener.with_context(|| format!("binding the API socket {}", path.display()))?;
    Ok(UnixListener::from_std(listener)?)
}

/// What the API's requests share.
pub struct ApiState {
    pub node: String,
    pub asks: mpsc::Sender<Ask>,
    pub dp: Arc<Dataplane>,
    pub http: Arc<HttpState>,
    pub flows: Arc<crate::flows::FlowLog>,
}

/// How long a question may wait for the daemon loop.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// Serve on `listener` until the task is aborted.
pub fn spawn(listener: UnixListener, state: Arc<ApiState>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((conn, _)) => {
                    let state = state.clone();
                    tokio::spawn(async move {
                        let _ = http::serve_one_reply(conn, |t| reply(&state, t)).await;
                    });
                }
                Err(e) => {
                    log::warn!("api accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
}

async fn reply(state: &ApiState, t: Target) -> Reply {
    if t.path == "/v1/flows" {
        return flows(state, &t).unwrap_or_else(|e| Reply::Whole(e.response()));
    }
    match tokio::time::timeout(ANSWER_TIMEOUT, route(state, t)).await {
        Ok(r) => Reply::Whole(r),
        Err(_) => Reply::Whole(Response::json(
            503,
            &json!({"error": format!("weir-policyd did not answer within {ANSWER_TIMEOUT:?} (its loop is busy); try again")}),
        )),
    }
}

/// `/v1/flows`: the recent records, or with `follow=true` the new ones as
/// JSON lines. Needs no compile: answered here, not by the loop.
fn flows(state: &ApiState, t: &Target) -> Result<Reply, ApiError> {
    let filter = crate::flows::Filter::parse(t.param("pod"), t.param("verdict")).map_err(ApiError::bad)?;
    let follow = match t.param("follow") {
        None | Some("" | "false") => false,
        Some("true") => true,
        Some(v) => return Err(ApiError::bad(format!("follow {v:?}: give true or false"))),
    };
    if !follow {
        let recent = state.flows.recent(&filter);
        let rows: Vec<&crate::flows::record::FlowRecord> = recent.iter().map(|r| &**r).collect();
        return Ok(Reply::Whole(Response::json(200, &json!({"node": state.node, "flows": rows}))));
    }
    let mut live = state.flows.follow();
    let (tx, lines) = mpsc::channel::<String>(256);
    tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let line = tokio::select! {
                () = tx.closed() => return,
                r = live.recv() => match r {
                    Ok(r) if filter.matches(&r) => serde_json::to_string(&*r).unwrap_or_default(),
                    Ok(_) => continue,
                    // Too slow a reader: say how many it missed, go on.
                    Err(RecvError::Lagged(n)) => json!({"skipped": n}).to_string(),
                    Err(RecvError::Closed) => return,
                },
            };
            if tx.send(line + "\n").await.is_err() {
                return;
            }
        }
    });
    Ok(Reply::Lines { content_type: "application/x-ndjson", lines })
}

async fn route(state: &ApiState, t: Target) -> Response {
    let question = match t.path.as_str() {
        "/v1/explain" => match explain_query(&t) {
            Ok(q) => Question::Explain(q),
            Err(e) => return e.response(),
        },
        "/v1/endpoints" => Question::Endpoints,
        "/v1/policies" => Question::Policies,
        _ => {
            return ApiError::not_found("not found: try /v1/explain, /v1/endpoints, /v1/policies, /v1/flows".into())
                .response()
        }
    };
    if !state.http.is_ready() {
        return Response::json(
            503,
            &json!({"error": "weir-policyd is starting: its sources have not synced or the maps are not programmed yet; try again shortly"}),
        );
    }
    let (reply, rx) = oneshot::channel();
    if state.asks.send(Ask { question, reply }).await.is_err() {
        return Response::json(503, &json!({"error": "weir-policyd is shutting down"}));
    }
    let answer = match rx.await {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => return e.response(),
        Err(_) => return Response::json(503, &json!({"error": "weir-policyd is shutting down"})),
    };
    match answer {
        Answer::Json(v) => Response::json(200, &v),
        Answer::Explain(b) => {
            let (resolved, e) = *b;
            let dp = state.dp.clone();
            let proved = tokio::task::spawn_blocking(move || {
                let p = proof::prove(&dp, &resolved, &e);
                (resolved, e, p)
            })
            .await;
            match proved {
                Ok((resolved, e, p)) => Response::json(200, &explain_json(&state.node, &t, &resolved, &e, p)),
                Err(err) => Response::json(500, &json!({"error": format!("the dataplane check failed: {err}")})),
            }
        }
    }
}

fn explain_query(t: &Target) -> Result<resolve::Query, ApiError> {
    let need = |k: &str| {
        t.param(k).filter(|v| !v.is_empty()).ok_or_else(|| ApiError::bad(format!("missing query parameter {k:?}")))
    };
    Ok(resolve::Query {
        from: need("from")?.to_string(),
        to: need("to")?.to_string(),
        port: resolve::parse_port(need("port")?)?,
        protocol: resolve::parse_protocol(need("protocol")?)?,
    })
}

fn explain_json(
    node: &str,
    t: &Target,
    r: &resolve::Resolved,
    e: &Explanation,
    proof: Result<proof::Proof, weir_bpf::Error>,
) -> Value {
    let mut notes = r.notes.clone();
    for (what, end, info) in [("from", &r.flow.src, &e.src), ("to", &r.flow.dst, &e.dst)] {
        if end.pod.is_none() && info.kind == "world" {
            notes.push(format!(
                "{what} {}: outside every known range (no pod, not this node): judged as world",
                info.addr
            ));
        }
    }
    let dataplane = match proof {
        Ok(p) => serde_json::to_value(p).unwrap_or(Value::Null),
        Err(err) => json!({"allowed": Value::Null, "agrees": false, "error": format!("running the programs: {err}")}),
    };
    json!({
        "node": node,
        "allowed": e.allowed,
        "flow": {
            "from": t.param("from"),
            "to": t.param("to"),
            "protocol": resolve::proto_name(r.flow.protocol),
            "port": r.dialed.1,
            "dialed": {"ip": r.dialed.0, "port": r.dialed.1},
            "backend": {"ip": r.flow.dst.addr, "port": r.flow.port},
            "service": r.service,
        },
        "src": e.src,
        "dst": e.dst,
        "egress": e.egress,
        "ingress": e.ingress,
        "notes": notes,
        "dataplane": dataplane,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    /// The run dir must be root's (the trust checks), so this needs root.
    #[tokio::test]
    async fn root_the_socket_is_0600_replaces_a_stale_one_and_refuses_a_live_one_or_a_file() {
        if !is_root() {
            eprintln!("skipped: needs root (the run dir must be root's)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let path = socket_path(&run);
        let first = bind(&run).unwrap();
        let md = std::fs::symlink_metadata(&path).unwrap();
        assert!(md.file_type().is_socket());
        assert_eq!(md.permissions().mode() & 0o777, 0o600);
        let e = bind(&run).unwrap_err().to_string();
        assert!(e.contains("another weir-policyd answers"), "{e}");
        drop(first); // a policyd that died: its socket stays, nobody listens
        assert!(path.exists());
        let _second = bind(&run).unwrap();
        drop(_second);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"not a socket").unwrap();
        let e = bind(&run).unwrap_err().to_string();
        assert!(e.contains("is not a socket"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"not a socket", "left alone");
        let leftovers: Vec<_> = std::fs::read_dir(&run).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(leftovers.len(), 1, "no temporary socket left: {leftovers:?}");
    }

    #[tokio::test]
    async fn root_a_run_dir_others_can_write_is_refused() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir(&run).unwrap();
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = format!("{:#}", bind(&run).unwrap_err());
        assert!(e.contains("--run-dir") && e.contains("0777"), "{e}");
        assert!(!socket_path(&run).exists());
    }
}
