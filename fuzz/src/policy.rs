//! policyd's manifest parser and engine on arbitrary input: a structured
//! cluster (see [`crate::cluster`]) or raw manifest text. Nothing may
//! panic, a compile is deterministic, and the compiled maps, read the way
//! the dataplane reads them, allow exactly what the policy text allows
//! (`weir_policyd::engine::reference`): never more, which would open
//! traffic, and never less.

use crate::cluster::{Cluster, GATEWAYS};
use arbitrary::{Arbitrary, Unstructured};
use weir_common::registry::EndpointRecord;
use weir_policyd::engine::{reference, Engine};
use weir_policyd::source::manifest;
use weir_policyd::store::Store;

/// Pods of a raw manifest that get an endpoint on this node.
const MAX_LOCAL: usize = 8;

/// First byte: 0 (mod 4) for manifest text, else a structured cluster.
pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (text, generated) = if mode % 4 == 0 {
        let Ok(text) = std::str::from_utf8(rest) else {
            return;
        };
        (text.to_string(), None)
    } else {
        let Ok(cluster) = Cluster::arbitrary_take_rest(Unstructured::new(rest)) else {
            return;
        };
        let (text, locals) = cluster.manifest();
        (text, Some(locals))
    };
    let parsed = match manifest::parse("fuzz.yaml", &text) {
        Ok(p) => p,
        Err(e) => {
            assert!(generated.is_none(), "a well-formed generated manifest was rejected: {e}\n{text}");
            return;
        }
    };
    let mut store = Store::default();
    for obj in parsed.objects {
        let r = obj.object_ref();
        assert!(!r.name.is_empty(), "{r}: accepted without a name");
        assert!(!r.kind.namespaced() || !r.namespace.is_empty(), "{r}: namespaced object without a namespace");
        store.apply(obj);
    }
    let locals = generated.unwrap_or_else(|| every_pod_local(&store));
    let d = Engine::new().compile(&store, &locals);
    assert_eq!(d, Engine::new().compile(&store, &locals), "two compiles of one input differ");
    let wrong = reference::mismatches(&store, &locals, &d);
    if !wrong.is_empty() {
        let shown: Vec<String> = wrong.iter().take(8).map(ToString::to_string).collect();
        panic!(
            "{} questions answered differently by the compiled maps and the policy text:\n{}\nmanifest: {text}\nrecords: {locals:?}",
            wrong.len(),
            shown.join("\n")
        );
    }
}

/// A raw manifest says nothing about nodes: put its first pods on this one.
fn every_pod_local(store: &Store) -> Vec<EndpointRecord> {
    store
        .pods
        .iter()
        .take(MAX_LOCAL)
        .enumerate()
        .map(|(i, ((ns, name), pod))| EndpointRecord {
            container_id: format!("c{i}"),
            ifname: "eth0".into(),
            netns: String::new(),
            network: "weir".into(),
            pod_namespace: ns.clone(),
            pod_name: name.clone(),
            pod_uid: String::new(),
            host_ifname: format!("weir{i}"),
            host_ifindex: 100 + i as u32,
            ips: pod.pod_ips.iter().chain(&pod.pod_ip).filter_map(|ip| ip.addr()).collect(),
            mac: String::new(),
            gateways: GATEWAYS.iter().map(|g| g.parse().unwrap()).collect(),
        })
        .collect()
}
