//! kubelet's side of the CRI socket, as little of it as the runtime tests
//! need: `runtime.v1.RuntimeService` Status, RunPodSandbox,
//! PodSandboxStatus, StopPodSandbox and RemovePodSandbox over gRPC (HTTP/2
//! on the unix socket, each message a length-prefixed protobuf). The
//! messages are encoded by hand from kubernetes/cri-api's
//! `pkg/apis/runtime/v1/api.proto` (field numbers cited where used): no
//! protoc, no generated code, nothing to build but h2.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use weir_e2e::node::PodMeta;

/// A protobuf message being encoded: only the wire types these messages
/// use (varint, length-delimited). Default values are left out, as
/// proto3 encoders do.
#[derive(Default)]
pub struct Msg(Vec<u8>);

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

impl Msg {
    pub fn uint(mut self, field: u32, v: u64) -> Msg {
        if v != 0 {
            varint(&mut self.0, u64::from(field) << 3);
            varint(&mut self.0, v);
        }
        self
    }

    fn bytes(mut self, field: u32, b: &[u8]) -> Msg {
        varint(&mut self.0, (u64::from(field) << 3) | 2);
        varint(&mut self.0, b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }

    pub fn string(self, field: u32, s: &str) -> Msg {
        if s.is_empty() {
            self
        } else {
            self.bytes(field, s.as_bytes())
        }
    }

    pub fn message(self, field: u32, m: Msg) -> Msg {
        self.bytes(field, &m.0)
    }

    /// One entry of a `map<string, string>` field (key 1, value 2).
    pub fn map_entry(self, field: u32, key: &str, value: &str) -> Msg {
        self.message(field, Msg::default().string(1, key).string(2, value))
    }
}

/// A decoded field's value.
#[derive(Debug, Clone)]
pub enum Field {
    Varint(u64),
    Bytes(Vec<u8>),
}

/// Every field of an encoded message, in order (unknown ones included, so
/// callers pick what they know).
pub fn decode(mut buf: &[u8]) -> Result<Vec<(u32, Field)>> {
    fn read_varint(buf: &mut &[u8]) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = buf.split_first().context("protobuf: truncated varint")?;
            *buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        bail!("protobuf: varint longer than 10 bytes")
    }
    let mut out = Vec::new();
    while !buf.is_empty() {
        let key = read_varint(&mut buf)?;
        let field = (key >> 3) as u32;
        let value = match key & 7 {
            0 => Field::Varint(read_varint(&mut buf)?),
            2 => {
                let len = read_varint(&mut buf)? as usize;
                if len > buf.len() {
                    bail!("protobuf: field {field} runs past the message");
                }
                let (v, rest) = buf.split_at(len);
                buf = rest;
                Field::Bytes(v.to_vec())
            }
            1 => {
                buf = buf.get(8..).context("protobuf: truncated fixed64")?;
                continue;
            }
            5 => {
                buf = buf.get(4..).context("protobuf: truncated fixed32")?;
                continue;
            }
            t => bail!("protobuf: field {field} has wire type {t}, which these messages never use"),
        };
        out.push((field, value));
    }
    Ok(out)
}

fn bytes_of(fields: &[(u32, Field)], n: u32) -> Option<&[u8]> {
    fields.iter().find_map(|(f, v)| match v {
        Field::Bytes(b) if *f == n => Some(b.as_slice()),
        _ => None,
    })
}

fn string_of(fields: &[(u32, Field)], n: u32) -> String {
    bytes_of(fields, n).map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default()
}

fn varint_of(fields: &[(u32, Field)], n: u32) -> u64 {
    fields
        .iter()
        .find_map(|(f, v)| match v {
            Field::Varint(x) if *f == n => Some(*x),
            _ => None,
        })
        .unwrap_or(0)
}

/// A map<string, string> field's entries.
fn map_of(fields: &[(u32, Field)], n: u32) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (f, v) in fields {
        if let (true, Field::Bytes(b)) = (*f == n, v) {
            let e = decode(b)?;
            out.push((string_of(&e, 1), string_of(&e, 2)));
        }
    }
    Ok(out)
}

/// What PodSandboxStatus says of a sandbox.
#[derive(Debug, Clone)]
pub struct SandboxStatus {
    pub ready: bool,
    /// `network.ip`: the address CNI ADD returned.
    pub ip: String,
    /// The sandbox's process (its network namespace is the pod's).
    pub pid: u32,
}

/// A gRPC connection to a CRI runtime; calls block (their own runtime).
pub struct Cri {
    rt: tokio::runtime::Runtime,
    send: h2::client::SendRequest<Bytes>,
}

/// How long one call may take: the runtime's work (a sandbox start with
/// CNI ADD waiting for policyd) on a loaded 2-core machine; not what is
/// measured.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

impl Cri {
    pub fn connect(socket: &Path) -> Result<Cri> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let send = rt.block_on(async {
            let io = tokio::net::UnixStream::connect(socket)
                .await
                .with_context(|| format!("connecting to {}", socket.display()))?;
            let (send, conn) = h2::client::handshake(io).await.context("HTTP/2 handshake")?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            anyhow::Ok(send)
        })?;
        Ok(Cri { rt, send })
    }

    /// One unary call of `runtime.v1.RuntimeService`; the response message.
    pub fn call(&self, method: &str, request: Msg) -> Result<Vec<u8>> {
        let send = self.send.clone();
        let call = async move {
            let req = http::Request::builder()
                .method("POST")
                .uri(format!("http://localhost/runtime.v1.RuntimeService/{method}"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())?;
            let mut send = send.ready().await?;
            let (response, mut stream) = send.send_request(req, false)?;
            // gRPC framing: not compressed (0), the length, the message.
            let mut framed = vec![0u8];
            framed.extend_from_slice(&(request.0.len() as u32).to_be_bytes());
            framed.extend_from_slice(&request.0);
            stream.send_data(Bytes::from(framed), true)?;
            let (head, mut body) = response.await?.into_parts();
            let mut data = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk?;
                let _ = body.flow_control().release_capacity(chunk.len());
                data.extend_from_slice(&chunk);
            }
            // A failure may come as headers only, without trailers.
            let trailers = body.trailers().await?.unwrap_or_default();
            let field = |name: &str| {
                trailers
                    .get(name)
                    .or_else(|| head.headers.get(name))
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            };
            let status = field("grpc-status").unwrap_or_else(|| format!("none (HTTP {})", head.status));
            if status != "0" {
                bail!("{method}: grpc-status {status}: {}", field("grpc-message").unwrap_or_default());
            }
            let len = data.get(1..5).context("a response shorter than its gRPC frame header")?;
            let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
            data.get(5..5 + len).map(<[u8]>::to_vec).context("a response shorter than its gRPC frame says")
        };
        self.rt
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, call).await })
            .with_context(|| format!("{method}: no answer within {CALL_TIMEOUT:?}"))?
    }

    /// `Status`: whether the runtime reports NetworkReady, and its reason
    /// and message when not (RuntimeStatus.conditions, field 1 of 1).
    pub fn network_ready(&self) -> Result<(bool, String)> {
        let resp = decode(&self.call("Status", Msg::default())?)?;
        let status = decode(bytes_of(&resp, 1).unwrap_or_default())?;
        for (f, v) in &status {
            let (1, Field::Bytes(c)) = (f, v) else { continue };
            let c = decode(c)?;
            if string_of(&c, 1) == "NetworkReady" {
                return Ok((varint_of(&c, 2) == 1, format!("{}: {}", string_of(&c, 3), string_of(&c, 4))));
            }
        }
        bail!("Status has no NetworkReady condition")
    }

    /// `RunPodSandbox` with what kubelet sets for a pod on the pod network;
    /// the sandbox's id.
    pub fn run_pod_sandbox(&self, pod: &PodMeta, cgroup_parent: &str) -> Result<String> {
        self.run_sandbox(pod, cgroup_parent, false)
    }

    /// `RunPodSandbox` of a `hostNetwork` pod: no CNI call at all.
    pub fn run_host_network_sandbox(&self, pod: &PodMeta, cgroup_parent: &str) -> Result<String> {
        self.run_sandbox(pod, cgroup_parent, true)
    }

    fn run_sandbox(&self, pod: &PodMeta, cgroup_parent: &str, host_network: bool) -> Result<String> {
        // PodSandboxMetadata: name 1, uid 2, namespace 3.
        let metadata = Msg::default().string(1, &pod.name).string(2, &pod.uid).string(3, &pod.namespace);
        // LinuxPodSandboxConfig: cgroup_parent 1, security_context 2
        // (LinuxSandboxSecurityContext.namespace_options 1:
        // NamespaceOption.network 1, NODE = 2).
        let mut linux = Msg::default().string(1, cgroup_parent);
        if host_network {
            linux = linux.message(2, Msg::default().message(1, Msg::default().uint(1, 2)));
        }
        // PodSandboxConfig: metadata 1, hostname 2 (the node's, unset, for
        // a hostNetwork pod), labels 6, linux 8.
        let config = Msg::default()
            .message(1, metadata)
            .string(2, if host_network { "" } else { &pod.name })
            .map_entry(6, "io.kubernetes.pod.name", &pod.name)
            .map_entry(6, "io.kubernetes.pod.namespace", &pod.namespace)
            .message(8, linux);
        // RunPodSandboxRequest.config 1 -> RunPodSandboxResponse.pod_sandbox_id 1.
        let resp = decode(&self.call("RunPodSandbox", Msg::default().message(1, config))?)?;
        let id = string_of(&resp, 1);
        if id.is_empty() {
            bail!("RunPodSandbox answered no pod_sandbox_id");
        }
        Ok(id)
    }

    /// `PodSandboxStatus` (verbose, for the sandbox's pid).
    pub fn pod_sandbox_status(&self, id: &str) -> Result<SandboxStatus> {
        // PodSandboxStatusRequest: pod_sandbox_id 1, verbose 2.
        let resp = decode(&self.call("PodSandboxStatus", Msg::default().string(1, id).uint(2, 1))?)?;
        // PodSandboxStatusResponse: status 1, info 2 (map).
        let status = decode(bytes_of(&resp, 1).context("PodSandboxStatus without status")?)?;
        // PodSandboxStatus: state 3 (SANDBOX_READY = 0), network 5 (ip 1).
        let network = decode(bytes_of(&status, 5).unwrap_or_default())?;
        let info = map_of(&resp, 2)?;
        let info = info.iter().find(|(k, _)| k == "info").map(|(_, v)| v.as_str()).unwrap_or("{}");
        let info: serde_json::Value = serde_json::from_str(info).context("PodSandboxStatus: info is not JSON")?;
        Ok(SandboxStatus {
            ready: varint_of(&status, 3) == 0,
            ip: string_of(&network, 1),
            pid: info["pid"].as_u64().unwrap_or(0) as u32,
        })
    }

    pub fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        self.call("StopPodSandbox", Msg::default().string(1, id)).map(drop)
    }

    pub fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        self.call("RemovePodSandbox", Msg::default().string(1, id)).map(drop)
    }
}

#[test]
fn messages_encode_as_protobuf_and_decode_back() {
    let m = Msg::default().string(1, "a").uint(2, 300).uint(3, 0).string(4, "").map_entry(6, "k", "v");
    // field 1 "a"; field 2 varint 300 (0xac 0x02); 3 and 4 left out; map entry.
    assert_eq!(m.0, [0x0a, 1, b'a', 0x10, 0xac, 0x02, 0x32, 6, 0x0a, 1, b'k', 0x12, 1, b'v']);
    let fields = decode(&m.0).unwrap();
    assert_eq!(string_of(&fields, 1), "a");
    assert_eq!(varint_of(&fields, 2), 300);
    assert_eq!(map_of(&fields, 6).unwrap(), [("k".to_string(), "v".to_string())]);
    assert!(decode(&[0x0a, 5, b'a']).is_err(), "a length past the end is an error");
}
