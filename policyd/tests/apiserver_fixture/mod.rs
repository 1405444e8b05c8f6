//! A stand-in for kube-apiserver, which cannot be installed here (no
//! registry ships it): plain HTTP on 127.0.0.1 speaking the real list/watch
//! protocol for Namespaces, Pods, Services, Nodes (`/api/v1/...`),
//! NetworkPolicies (`/apis/networking.k8s.io/v1/...`) and
//! ClusterNetworkPolicies (`/apis/policy.networking.k8s.io/v1alpha2/...`,
//! served only while its CRD is "installed", else 404 as a real server):
//!
//! - list: a `<Kind>List` with `metadata.resourceVersion`; get of one
//!   cluster-scoped object (a Node), 404 when there is none;
//! - `?watch=true&resourceVersion=R`: chunked stream of JSON WatchEvents
//!   (ADDED / MODIFIED / DELETED, BOOKMARK on request), replaying every
//!   change after R from a change log, then live changes;
//! - compaction: a watch from R older than the compaction point gets 410
//!   Gone, either as an ERROR event carrying a Status (what kube-apiserver
//!   does) or as an HTTP 410 response;
//! - PATCH of one cluster-scoped object with a JSON merge patch (RFC 7386),
//!   stored and sent to watches as MODIFIED;
//! - faults: drop every open watch connection mid-stream, hold lists or new
//!   watches (to make "changed while disconnected" deterministic).
//!
//! Objects are k8s-openapi types serialized with serde, so what the client
//! decodes is what a real server would send for them.

#![allow(dead_code)]

use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Res {
    Namespaces,
    Pods,
    Services,
    NetworkPolicies,
    Nodes,
    ClusterNetworkPolicies,
}

impl Res {
    pub const ALL: [Res; 6] =
        [Res::Namespaces, Res::Pods, Res::Services, Res::NetworkPolicies, Res::Nodes, Res::ClusterNetworkPolicies];

    fn from_path(path: &str) -> Option<Res> {
        Some(match path {
            "/api/v1/namespaces" => Res::Namespaces,
            "/api/v1/pods" => Res::Pods,
            "/api/v1/services" => Res::Services,
            "/api/v1/nodes" => Res::Nodes,
            "/apis/networking.k8s.io/v1/networkpolicies" => Res::NetworkPolicies,
            "/apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies" => Res::ClusterNetworkPolicies,
            _ => return None,
        })
    }

    fn from_kind(kind: &str) -> Res {
        match kind {
            "Namespace" => Res::Namespaces,
            "Pod" => Res::Pods,
            "Service" => Res::Services,
            "Node" => Res::Nodes,
            "NetworkPolicy" => Res::NetworkPolicies,
            "ClusterNetworkPolicy" => Res::ClusterNetworkPolicies,
            k => panic!("the fixture does not serve {k}"),
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Res::Namespaces => "Namespace",
            Res::Pods => "Pod",
            Res::Services => "Service",
            Res::Nodes => "Node",
            Res::NetworkPolicies => "NetworkPolicy",
            Res::ClusterNetworkPolicies => "ClusterNetworkPolicy",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Res::NetworkPolicies => "networking.k8s.io/v1",
            Res::ClusterNetworkPolicies => "policy.networking.k8s.io/v1alpha2",
            _ => "v1",
        }
    }
}

/// How a watch from a compacted resourceVersion is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoneMode {
    /// HTTP 200 and a single `{"type":"ERROR","object":<Status 410>}` event.
    ErrorEvent,
    /// HTTP 410 with a Status body.
    Http410,
}

#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    res: Res,
    /// ADDED, MODIFIED, DELETED or BOOKMARK (bookmarks are never logged).
    ty: &'static str,
    object: Value,
    /// drop_watches() generation when the change was made: a connection
    /// opened before a drop must not carry changes made after it.
    gen: u64,
}

struct State {
    rv: u64,
    objects: BTreeMap<(Res, String, String), Value>,
    log: Vec<Change>,
    compacted: u64,
    gone_mode: GoneMode,
    lists: BTreeMap<Res, usize>,
    watches: BTreeMap<Res, usize>,
    held_lists: BTreeSet<Res>,
    /// resourceVersion of the latest watch request, per resource.
    last_watch_from: BTreeMap<Res, u64>,
    /// BOOKMARK events written to a connection, per resource.
    bookmarks_sent: BTreeMap<Res, usize>,
    /// List pages served (first pages and continuations), per resource.
    pages: BTreeMap<Res, usize>,
    /// Whether the ClusterNetworkPolicy CRD is installed (else its
    /// resource answers 404 NotFound, as an API server without it does).
    cnp_installed: bool,
    /// Requests answered 404 because the CRD was not installed.
    not_found: usize,
}

pub struct ApiServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    changes: broadcast::Sender<Change>,
    drop_gen: watch::Sender<u64>,
    held_lists: watch::Sender<BTreeSet<Res>>,
    watches_paused: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn meta_key(res: Res, v: &Value) -> (Res, String, String) {
    let m = &v["metadata"];
    (res, m["namespace"].as_str().unwrap_or("").to_string(), m["name"].as_str().expect("metadata.name").to_string())
}

impl ApiServer {
    pub async fn start() -> ApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            rv: 100,
            objects: BTreeMap::new(),
            log: Vec::new(),
            compacted: 0,
            gone_mode: GoneMode::ErrorEvent,
            lists: BTreeMap::new(),
            watches: BTreeMap::new(),
            held_lists: BTreeSet::new(),
            last_watch_from: BTreeMap::new(),
            bookmarks_sent: BTreeMap::new(),
            pages: BTreeMap::new(),
            cnp_installed: true,
            not_found: 0,
        }));
        let (changes, _) = broadcast::channel(4096);
        let (drop_gen, _) = watch::channel(0u64);
        let (held_lists, _) = watch::channel(BTreeSet::new());
        let (watches_paused, _) = watch::channel(false);
        let ctx = Ctx {
            state: state.clone(),
            changes: changes.clone(),
            drop_gen: drop_gen.subscribe(),
            held_lists: held_lists.subscribe(),
            watches_paused: watches_paused.subscribe(),
        };
        let task = tokio::spawn(async move {
            loop {
                let (conn, _) = listener.accept().await.unwrap();
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    let _ = ctx.handle(conn).await;
                });
            }
        });
        ApiServer { addr, state, changes, drop_gen, held_lists, watches_paused, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig pointing at this server (no credentials).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fixture\n  cluster: {{server: \"{}\"}}\n\
             users:\n- name: anonymous\n  user: {{}}\ncontexts:\n- name: fixture\n  context: {{cluster: fixture, user: anonymous}}\n\
             current-context: fixture\n",
            self.url()
        )
    }

    /// Create or replace an object (ADDED / MODIFIED), stamping a new resourceVersion.
    pub fn put<K: kube::Resource<DynamicType = ()> + serde::Serialize>(&self, obj: &K) {
        let mut v = serde_json::to_value(obj).unwrap();
        let res = Res::from_kind(&K::kind(&()));
        // CustomResource types serialize without apiVersion/kind.
        v["apiVersion"] = json!(res.api_version());
        v["kind"] = json!(res.kind());
        let mut st = self.state.lock().unwrap();
        st.rv += 1;
        let rv = st.rv;
        v["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = meta_key(res, &v);
        if v["metadata"]["uid"].is_null() {
            v["metadata"]["uid"] = json!(format!("uid-{}-{}-{}", key.1, key.2, rv));
        }
        let ty = if st.objects.insert(key, v.clone()).is_some() { "MODIFIED" } else { "ADDED" };
        let ch = Change { rv, res, ty, object: v, gen: *self.drop_gen.borrow() };
        st.log.push(ch.clone());
        let _ = self.changes.send(ch);
    }

    /// Delete an object (DELETED); panics if absent.
    pub fn delete<K: kube::Resource<DynamicType = ()>>(&self, namespace: &str, name: &str) {
        let res = Res::from_kind(&K::kind(&()));
        let mut st = self.state.lock().unwrap();
        let mut v = st
            .objects
            .remove(&(res, namespace.to_string(), name.to_string()))
            .unwrap_or_else(|| panic!("fixture has no {} {namespace}/{name}", res.kind()));
        st.rv += 1;
        let rv = st.rv;
        v["metadata"]["resourceVersion"] = json!(rv.to_string());
        let ch = Change { rv, res, ty: "DELETED", object: v, gen: *self.drop_gen.borrow() };
        st.log.push(ch.clone());
        let _ = self.changes.send(ch);
    }

    /// Send a BOOKMARK at the current resourceVersion to every open watch;
    /// returns that resourceVersion.
    pub fn bookmark(&self) -> u64 {
        let st = self.state.lock().unwrap();
        for res in Res::ALL {
            let _ = self.changes.send(Change {
                rv: st.rv,
                res,
                ty: "BOOKMARK",
                object: json!({"apiVersion": res.api_version(), "kind": res.kind(),
                               "metadata": {"resourceVersion": st.rv.to_string()}}),
                gen: *self.drop_gen.borrow(),
            });
        }
        st.rv
    }

    pub fn bookmarks_sent(&self, res: Res) -> usize {
        self.state.lock().unwrap().bookmarks_sent.get(&res).copied().unwrap_or(0)
    }

    /// The resourceVersion the latest watch of `res` asked to start from.
    pub fn last_watch_from(&self, res: Res) -> Option<u64> {
        self.state.lock().unwrap().last_watch_from.get(&res).copied()
    }

    /// Forget history: a watch from any resourceVersion older than the
    /// current one now gets 410 Gone.
    pub fn compact(&self) {
        let mut st = self.state.lock().unwrap();
        st.compacted = st.rv;
        let c = st.compacted;
        st.log.retain(|ch| ch.rv > c);
    }

    pub fn set_gone_mode(&self, m: GoneMode) {
        self.state.lock().unwrap().gone_mode = m;
    }

    /// Close every open watch connection abruptly (no final chunk), as a
    /// dropped TCP connection or a restarting server would.
    pub fn drop_watches(&self) {
        self.drop_gen.send_modify(|g| *g += 1);
    }

    /// New watch requests wait (connection accepted, no answer) until resumed.
    pub fn pause_watches(&self, paused: bool) {
        self.watches_paused.send_replace(paused);
    }

    /// List requests for `res` wait until released.
    pub fn hold_list(&self, res: Res, held: bool) {
        self.held_lists.send_modify(|s| {
            if held {
                s.insert(res);
            } else {
                s.remove(&res);
            }
        });
    }

    /// Install or remove the ClusterNetworkPolicy CRD: while removed, its
    /// lists and watches answer 404 (objects put meanwhile are kept, and
    /// served once installed).
    pub fn set_cnp_installed(&self, installed: bool) {
        self.state.lock().unwrap().cnp_installed = installed;
    }

    /// Requests answered 404 because the CRD was not installed.
    pub fn not_found(&self) -> usize {
        self.state.lock().unwrap().not_found
    }

    pub fn lists(&self, res: Res) -> usize {
        self.state.lock().unwrap().lists.get(&res).copied().unwrap_or(0)
    }

    /// List pages served for `res` (more than `lists` when paged).
    pub fn pages(&self, res: Res) -> usize {
        self.state.lock().unwrap().pages.get(&res).copied().unwrap_or(0)
    }

    pub fn watches(&self, res: Res) -> usize {
        self.state.lock().unwrap().watches.get(&res).copied().unwrap_or(0)
    }

    /// The stored cluster-scoped object `name` of `res`, as served.
    pub fn object(&self, res: Res, name: &str) -> Option<Value> {
        self.state.lock().unwrap().objects.get(&(res, String::new(), name.to_string())).cloned()
    }

    /// (namespace, name) of every stored object of `res`, sorted.
    pub fn names(&self, res: Res) -> Vec<(String, String)> {
        let st = self.state.lock().unwrap();
        st.objects.keys().filter(|k| k.0 == res).map(|k| (k.1.clone(), k.2.clone())).collect()
    }
}

#[derive(Clone)]
struct Ctx {
    state: Arc<Mutex<State>>,
    changes: broadcast::Sender<Change>,
    drop_gen: watch::Receiver<u64>,
    held_lists: watch::Receiver<BTreeSet<Res>>,
    watches_paused: watch::Receiver<bool>,
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

impl Ctx {
    /// Whether the CRD is installed; counts the 404 when not.
    fn cnp_served(&self) -> bool {
        let mut st = self.state.lock().unwrap();
        if !st.cnp_installed {
            st.not_found += 1;
        }
        st.cnp_installed
    }

    async fn handle(mut self, mut conn: TcpStream) -> std::io::Result<()> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 2048];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let head = String::from_utf8_lossy(&buf).into_owned();
        let target = head.split(' ').nth(1).unwrap_or("").to_string();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let params: BTreeMap<&str, &str> = query.split('&').filter_map(|kv| kv.split_once('=')).collect();
        let method = head.split(' ').next().unwrap_or("").to_string();
        if std::env::var_os("FIXTURE_DEBUG").is_some() {
            eprintln!("fixture: {method} {target}");
        }
        if method == "PATCH" {
            let header_end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            while buf.len() < header_end + len {
                let n = conn.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let patch: Value = serde_json::from_slice(&buf[header_end..header_end + len]).unwrap_or(Value::Null);
            if let Some((res, name)) = path.rsplit_once('/').and_then(|(c, n)| Some((Res::from_path(c)?, n))) {
                return self.patch(conn, res, name, &patch).await;
            }
            return respond(&mut conn, 404, &status(404, "NotFound", &format!("the fixture does not patch {path}")))
                .await;
        }
        // GET of one cluster-scoped object: `<collection>/<name>`.
        if let Some(res) = path.rsplit_once('/').and_then(|(collection, _)| Res::from_path(collection)) {
            let name = path.rsplit_once('/').unwrap().1;
            return self.get(conn, res, name).await;
        }
        let Some(res) = Res::from_path(path) else {
            return respond(&mut conn, 404, &status(404, "NotFound", &format!("the fixture does not serve {path}")))
                .await;
        };
        if res == Res::ClusterNetworkPolicies && !self.cnp_served() {
            // What kube-apiserver answers for a group/version it does not serve.
            let body = status(404, "NotFound", "the server could not find the requested resource");
            return respond(&mut conn, 404, &body).await;
        }
        if params.get("watch").is_some_and(|w| *w == "true" || *w == "1") {
            let rv = params.get("resourceVersion").and_then(|r| r.parse::<u64>().ok()).unwrap_or(0);
            let bookmarks = params.get("allowWatchBookmarks").is_some_and(|b| *b == "true");
            self.watch(conn, res, rv, bookmarks).await
        } else {
            let limit = params.get("limit").and_then(|l| l.parse::<usize>().ok()).filter(|l| *l > 0);
            let cont = params.get("continue").map(|c| c.to_string());
            self.list(conn, res, limit, cont).await
        }
    }

    /// A merge patch of one cluster-scoped object: the patched object, or
    /// 404 as for a get.
    async fn patch(&mut self, mut conn: TcpStream, res: Res, name: &str, patch: &Value) -> std::io::Result<()> {
        let gen = *self.drop_gen.borrow();
        let patched = {
            let mut st = self.state.lock().unwrap();
            let key = (res, String::new(), name.to_string());
            st.objects.get(&key).cloned().map(|mut v| {
                merge_patch(&mut v, patch);
                st.rv += 1;
                let rv = st.rv;
                v["metadata"]["resourceVersion"] = json!(rv.to_string());
                st.objects.insert(key, v.clone());
                let ch = Change { rv, res, ty: "MODIFIED", object: v.clone(), gen };
                st.log.push(ch.clone());
                let _ = self.changes.send(ch);
                v
            })
        };
        match patched {
            Some(obj) => respond(&mut conn, 200, &obj).await,
            None => {
                let msg = format!("{} \"{name}\" not found", res.kind().to_lowercase());
                respond(&mut conn, 404, &status(404, "NotFound", &msg)).await
            }
        }
    }

    /// One object, or 404 with a Status as kube-apiserver answers.
    async fn get(&mut self, mut conn: TcpStream, res: Res, name: &str) -> std::io::Result<()> {
        let found = self.state.lock().unwrap().objects.get(&(res, String::new(), name.to_string())).cloned();
        match found {
            Some(obj) => respond(&mut conn, 200, &obj).await,
            None => {
                let msg = format!("{} \"{name}\" not found", res.kind().to_lowercase());
                respond(&mut conn, 404, &status(404, "NotFound", &msg)).await
            }
        }
    }

    /// A list, paged when the client sends `limit`: the continue token
    /// carries the snapshot's resourceVersion and offset, and every page
    /// reports that snapshot's resourceVersion (as etcd-backed lists do).
    async fn list(
        &mut self,
        mut conn: TcpStream,
        res: Res,
        limit: Option<usize>,
        cont: Option<String>,
    ) -> std::io::Result<()> {
        let (snapshot_rv, offset) = match &cont {
            Some(c) => {
                let (rv, off) = c.split_once('-').expect("continue token from this fixture");
                (Some(rv.parse::<u64>().unwrap()), off.parse::<usize>().unwrap())
            }
            None => (None, 0),
        };
        if cont.is_none() {
            let _ = self.held_lists.wait_for(|held| !held.contains(&res)).await;
        }
        let body = {
            let mut st = self.state.lock().unwrap();
            if cont.is_none() {
                *st.lists.entry(res).or_default() += 1;
            }
            let rv = snapshot_rv.unwrap_or(st.rv);
            // Later pages are cut from the current objects, not a stored
            // snapshot: the tests do not change objects mid-list.
            let all: Vec<Value> = st.objects.iter().filter(|(k, _)| k.0 == res).map(|(_, v)| v.clone()).collect();
            let end = limit.map_or(all.len(), |l| (offset + l).min(all.len()));
            let items = all[offset.min(all.len())..end].to_vec();
            *st.pages.entry(res).or_default() += 1;
            let mut meta = json!({"resourceVersion": rv.to_string()});
            if end < all.len() {
                meta["continue"] = json!(format!("{rv}-{end}"));
            }
            json!({"apiVersion": res.api_version(), "kind": format!("{}List", res.kind()),
                   "metadata": meta, "items": items})
        };
        respond(&mut conn, 200, &body).await
    }

    async fn watch(&mut self, mut conn: TcpStream, res: Res, from: u64, bookmarks: bool) -> std::io::Result<()> {
        let _ = self.watches_paused.wait_for(|p| !*p).await;
        let drop_at = *self.drop_gen.borrow_and_update();
        let (backlog, mut rx, gone) = {
            let mut st = self.state.lock().unwrap();
            *st.watches.entry(res).or_default() += 1;
            st.last_watch_from.insert(res, from);
            if from < st.compacted {
                (Vec::new(), self.changes.subscribe(), Some(st.gone_mode))
            } else {
                let backlog: Vec<Change> = st.log.iter().filter(|c| c.res == res && c.rv > from).cloned().collect();
                (backlog, self.changes.subscribe(), None)
            }
        };
        let gone_status = status(410, "Expired", &format!("too old resource version: {from}"));
        match gone {
            Some(GoneMode::Http410) => return respond(&mut conn, 410, &gone_status).await,
            Some(GoneMode::ErrorEvent) => {
                conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").await?;
                write_chunk(&mut conn, &json!({"type": "ERROR", "object": gone_status})).await?;
                conn.write_all(b"0\r\n\r\n").await?;
                return conn.shutdown().await;
            }
            None => {}
        }
        conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").await?;
        for ch in backlog {
            write_chunk(&mut conn, &json!({"type": ch.ty, "object": ch.object})).await?;
        }
        let mut drop_rx = self.drop_gen.clone();
        let dropped = async move {
            let _ = drop_rx.wait_for(|g| *g != drop_at).await;
        };
        tokio::pin!(dropped);
        loop {
            tokio::select! {
                // Changes made before the drop first, so a drop is a clean cut.
                biased;
                ch = rx.recv() => {
                    let ch = match ch {
                        Ok(ch) => ch,
                        Err(broadcast::error::RecvError::Lagged(_)) => panic!("fixture watch lagged; raise the channel capacity"),
                        Err(broadcast::error::RecvError::Closed) => return Ok(()),
                    };
                    if ch.gen != drop_at {
                        return Ok(()); // made after a drop: this connection is already dead
                    }
                    if ch.res != res || ch.rv <= from && ch.ty != "BOOKMARK" || (ch.ty == "BOOKMARK" && !bookmarks) {
                        continue;
                    }
                    write_chunk(&mut conn, &json!({"type": ch.ty, "object": ch.object})).await?;
                    if ch.ty == "BOOKMARK" {
                        *self.state.lock().unwrap().bookmarks_sent.entry(res).or_default() += 1;
                    }
                }
                _ = &mut dropped => {
                    // Abrupt: no terminating chunk, the client sees a truncated body.
                    return Ok(());
                }
            }
        }
    }
}

async fn write_chunk(conn: &mut TcpStream, v: &Value) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(v).unwrap();
    line.push(b'\n');
    conn.write_all(format!("{:x}\r\n", line.len()).as_bytes()).await?;
    conn.write_all(&line).await?;
    conn.write_all(b"\r\n").await?;
    conn.flush().await
}

/// RFC 7386: objects merge key by key, null removes, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().unwrap();
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

async fn respond(conn: &mut TcpStream, code: u16, body: &Value) -> std::io::Result<()> {
    let body = serde_json::to_vec(body).unwrap();
    let head = format!(
        "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(&body).await?;
    conn.shutdown().await
}

/// A Node as the fixture serves it: one pod range and an InternalIP.
pub fn node(name: &str, cidr: &str, ip: &str) -> k8s_openapi::api::core::v1::Node {
    use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeSpec, NodeStatus};
    let mut n = Node::default();
    n.metadata.name = Some(name.into());
    n.spec = Some(NodeSpec { pod_cidrs: Some(vec![cidr.into()]), ..Default::default() });
    n.status = Some(NodeStatus {
        addresses: Some(vec![NodeAddress { type_: "InternalIP".into(), address: ip.into() }]),
        ..Default::default()
    });
    n
}
