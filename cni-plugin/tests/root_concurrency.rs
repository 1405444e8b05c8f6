//! 100 concurrent ADDs then 100 concurrent DELs against one bridge and one
//! store, as a runtime starting and stopping a node full of pods does.

mod common;

use common::*;
use std::collections::HashSet;
use std::sync::Arc;

const PODS: usize = 100;

#[test]
fn root_100_concurrent_adds_then_dels() {
    require_root!();
    let node = Arc::new(Node::new());
    let conf = Arc::new(node.conf("1.1.0", "10.91.0.0/24", Some("fd91::/64")));
    let pods: Vec<Arc<Netns>> = (0..PODS).map(|_| Arc::new(Netns::new("wc"))).collect();

    let adds: Vec<_> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (node, conf, p) = (node.clone(), conf.clone(), p.clone());
            std::thread::spawn(move || node.add(&format!("cc{i}"), &p, &conf))
        })
        .collect();
    let results: Vec<Run> = adds.into_iter().map(|h| h.join().unwrap()).collect();
    let mut v4 = HashSet::new();
    let mut v6 = HashSet::new();
    for r in &results {
        let out = r.ok();
        assert!(v4.insert(result_ip(out, true)), "duplicate IPv4 in {out}");
        assert!(v6.insert(result_ip(out, false)), "duplicate IPv6 in {out}");
    }
    assert_eq!(node.reserved().len(), 2 * PODS);
    assert_eq!(node.host_veths().len(), PODS);
    // Each pod really has the address its result names.
    for (p, r) in pods.iter().zip(&results) {
        let a = result_ip(&r.out, true).to_string();
        assert!(p.ip(&["-4", "addr", "show", "eth0"]).contains(&a));
    }

    let dels: Vec<_> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (node, conf, p) = (node.clone(), conf.clone(), p.clone());
            std::thread::spawn(move || node.del(&format!("cc{i}"), &p, &conf))
        })
        .collect();
    for h in dels {
        h.join().unwrap().ok();
    }
    assert!(node.reserved().is_empty(), "leftover reservations: {:?}", node.reserved());
    assert!(node.host_veths().is_empty(), "leftover veths: {:?}", node.host_veths());
    for (i, p) in pods.iter().enumerate() {
        assert!(!p.has_link("eth0"), "pod {i} still has eth0");
        node.assert_clean(&format!("cc{i}"), Some(p));
    }
    // Bridge, gateway addresses and nothing else remain in the node.
    let links = node.ns.links();
    assert_eq!(links.len(), 2, "{links:?}");
}
