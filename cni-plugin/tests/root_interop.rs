//! Interoperation with Debian's reference plugins (/usr/lib/cni): the
//! host-local store is shared both ways, results have the reference
//! bridge's shape in every version both speak, and weir chains with the
//! reference portmap and bandwidth plugins as a runtime runs a conflist.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;

fn ref_ipam(node: &Node, command: &str, id: &str) -> Run {
    let conf = json!({
        "cniVersion": "1.0.0", "name": node.network,
        "ipam": { "type": "host-local", "ranges": [[{ "subnet": "10.92.0.0/24" }]], "dataDir": node.data_dir() }
    });
    let call = Call::new(command, id, "/dev/null", "eth0");
    exec_plugin(&node.ns, &format!("{REF_DIR}/host-local"), &call, serde_json::to_vec(&conf).unwrap().as_slice())
}

#[test]
fn root_host_local_reservations_are_shared_both_ways() {
    require_root!();
    if !std::path::Path::new(REF_DIR).join("host-local").exists() {
        panic!("reference plugins missing: apt-get install containernetworking-plugins");
    }
    let node = Node::new();
    let conf = node.conf("1.0.0", "10.92.0.0/24", None);
    // Reference first: .2; weir must skip it.
    let r = ref_ipam(&node, "ADD", "ref1");
    assert_eq!(r.ok()["ips"][0]["address"], json!("10.92.0.2/24"));
    let pod = Netns::new("wp");
    let w = node.add("weir1", &pod, &conf).ok().clone();
    assert_eq!(w["ips"][0]["address"], json!("10.92.0.3/24"));
    // weir's reservation (and last_reserved_ip) steer the reference.
    let r = ref_ipam(&node, "ADD", "ref2");
    assert_eq!(r.ok()["ips"][0]["address"], json!("10.92.0.4/24"));
    // The reference releases what it reads as weir's own file format...
    assert_eq!(std::fs::read(node.store().join("10.92.0.3")).unwrap(), b"weir1\r\neth0");
    ref_ipam(&node, "DEL", "weir1").ok();
    assert!(node.reserved_by("weir1").is_empty());
    // ...and weir's DEL releases the reference's.
    node.weir(&Call::new("DEL", "ref1", "", "eth0"), &conf).ok();
    assert!(node.reserved_by("ref1").is_empty());
    assert_eq!(node.reserved_by("ref2"), vec!["10.92.0.4".to_string()]);
    node.del("weir1", &pod, &conf).ok();
    ref_ipam(&node, "DEL", "ref2").ok();
    assert!(node.reserved().is_empty());
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
}

/// Field sets of a result: top level, each interface, each ip, each route.
fn shape(r: &Value) -> Vec<BTreeSet<String>> {
    let mut s = vec![keys(r)];
    for list in ["interfaces", "ips", "routes"] {
        let mut u = BTreeSet::new();
        for x in r[list].as_array().into_iter().flatten() {
            u.extend(keys(x).into_iter().map(|k| format!("{list}.{k}")));
        }
        s.push(u);
    }
    s
}

#[test]
fn root_results_have_the_reference_bridge_shape() {
    require_root!();
    for v in ["0.3.0", "0.3.1", "0.4.0", "1.0.0"] {
        let ours_node = Node::new();
        let ref_node = Node::new();
        let (p1, p2) = (Netns::new("wp"), Netns::new("wp"));
        let mut ours_conf = ours_node.conf(v, "10.93.0.0/24", Some("fd93::/64"));
        ours_conf["ipam"]["routes"] = json!([{ "dst": "0.0.0.0/0" }, { "dst": "::/0" }]);
        ours_conf["isDefaultGateway"] = json!(false);
        let mut ref_conf = ours_conf.clone();
        ref_conf["type"] = json!("bridge");
        ref_conf["bridge"] = json!(ref_node.bridge);
        ref_conf["isGateway"] = json!(true);
        ref_conf["ipam"]["dataDir"] = json!(ref_node.data_dir());
        ref_conf.as_object_mut().unwrap().remove("policy");
        let ours = ours_node.add("s1", &p1, &ours_conf).ok().clone();
        let call = Call::new("ADD", "s1", &p2.path(), "eth0");
        let theirs =
            exec_plugin(&ref_node.ns, &format!("{REF_DIR}/bridge"), &call, &serde_json::to_vec(&ref_conf).unwrap());
        let theirs = theirs.ok().clone();
        assert_eq!(shape(&ours), shape(&theirs), "version {v}:\nours   {ours}\ntheirs {theirs}");
        // Same meaning too: the pod interface is the one ips[] point at.
        for r in [&ours, &theirs] {
            for ip in r["ips"].as_array().unwrap() {
                let i = ip["interface"].as_u64().unwrap() as usize;
                assert!(r["interfaces"][i]["sandbox"].is_string(), "{v}: {r}");
            }
        }
        ours_node.del("s1", &p1, &ours_conf).ok();
        let del = Call::new("DEL", "s1", &p2.path(), "eth0");
        exec_plugin(&ref_node.ns, &format!("{REF_DIR}/bridge"), &del, &serde_json::to_vec(&ref_conf).unwrap()).ok();
    }
}

/// Run a conflist the way libcni does: each plugin in order with the
/// previous result as prevResult (ADD, CHECK) and in reverse for DEL.
fn run_list(node: &Node, list: &Value, command: &str, id: &str, pod: &Netns, prev: Option<&Value>) -> Value {
    let bandwidth =
        json!({ "ingressRate": 8_000_000, "ingressBurst": 80_000, "egressRate": 8_000_000, "egressBurst": 80_000 });
    run_list_shaped(node, list, command, id, pod, prev, &bandwidth)
}

/// [`run_list`] with the pod's `bandwidth` runtimeConfig, passed to every
/// plugin that declares the capability (weir's too, as libcni does).
fn run_list_shaped(
    node: &Node,
    list: &Value,
    command: &str,
    id: &str,
    pod: &Netns,
    prev: Option<&Value>,
    bandwidth: &Value,
) -> Value {
    let mut plugins: Vec<Value> = list["plugins"].as_array().unwrap().clone();
    if command == "DEL" {
        plugins.reverse();
    }
    let mut result = prev.cloned();
    for p in plugins {
        // Debian's portmap (1.1.1) CHECK looks for its IPv4 DNAT rules in the
        // ip6tables table too and fails whatever the main plugin is (with the
        // reference bridge as well), so CHECK runs the other plugins only.
        if command == "CHECK" && p["type"] == json!("portmap") {
            continue;
        }
        let mut conf = p.clone();
        conf["name"] = list["name"].clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        // Capabilities the runtime fills in.
        if p["capabilities"]["portMappings"] == json!(true) {
            conf["runtimeConfig"] =
                json!({ "portMappings": [{ "hostPort": 18080, "containerPort": 80, "protocol": "tcp" }] });
        }
        if p["capabilities"]["bandwidth"] == json!(true) {
            conf["runtimeConfig"]["bandwidth"] = bandwidth.clone();
        }
        if let Some(r) = &result {
            conf["prevResult"] = r.clone();
        }
        let ty = p["type"].as_str().unwrap();
        let bin = if ty == "weir" { WEIR.to_string() } else { format!("{REF_DIR}/{ty}") };
        let call = Call::new(command, id, &pod.path(), "eth0");
        let run = exec_plugin(&node.ns, &bin, &call, &serde_json::to_vec(&conf).unwrap());
        assert_eq!(run.code, 0, "{command} {ty}: {} {}", run.out, run.stderr);
        if command == "ADD" {
            result = Some(run.out);
        }
    }
    result.unwrap_or(Value::Null)
}

#[test]
fn root_chains_with_reference_portmap_and_bandwidth() {
    require_root!();
    let node = Node::new();
    let pod = Netns::new("wp");
    let mut weir = node.conf("1.0.0", "10.94.0.0/24", Some("fd94::/64"));
    weir.as_object_mut().unwrap().remove("name");
    weir.as_object_mut().unwrap().remove("cniVersion");
    let list = json!({
        "cniVersion": "1.0.0", "name": node.network,
        "plugins": [weir,
            { "type": "portmap", "capabilities": { "portMappings": true } },
            { "type": "bandwidth", "capabilities": { "bandwidth": true } }]
    });
    let result = run_list(&node, &list, "ADD", "ch1", &pod, None);
    assert_eq!(result["ips"][0]["address"], json!("10.94.0.2/24"), "{result}");
    // bandwidth shaped the host veth weir named in its result.
    let veth = weir_cni::naming::host_veth("ch1", "eth0");
    let qdisc = node.ns.ip(&["link", "show"]);
    assert!(qdisc.contains("bwp"), "bandwidth's ifb device exists: {qdisc}");
    let tc = node.ns.exec(&["tc", "qdisc", "show", "dev", &veth]);
    assert!(tc.contains("tbf"), "{tc}");
    // portmap's DNAT for 18080 exists in the node.
    let nat = node.ns.exec(&["iptables-save", "-t", "nat"]);
    assert!(nat.contains("18080"), "{nat}");
    // CHECK of the whole chain against the final result.
    run_list(&node, &list, "CHECK", "ch1", &pod, Some(&result));
    run_list(&node, &list, "DEL", "ch1", &pod, Some(&result));
    node.assert_clean("ch1", Some(&pod));
    let nat = node.ns.exec(&["iptables-save", "-t", "nat"]);
    assert!(!nat.contains("18080"), "{nat}");
}

/// The shipped chain enforcing, attach "auto": a pod whose egress the
/// bandwidth plugin shapes gets TCX links, since bandwidth's `ingress`
/// qdisc cannot go in beside clsact; any other pod gets tc filters, next to
/// which bandwidth's ingress shaping (a root tbf) works.
#[test]
fn root_auto_attach_leaves_room_for_bandwidths_egress_shaping() {
    require_root!();
    let node = Node::new();
    let root = BpfRoot::new();
    let mut weir = node.conf("1.0.0", "10.97.0.0/24", None);
    weir.as_object_mut().unwrap().remove("name");
    weir.as_object_mut().unwrap().remove("cniVersion");
    weir["capabilities"] = json!({ "bandwidth": true });
    weir["policy"] = json!({ "enforce": true, "bpffsRoot": root.0, "runDir": node.run_dir(), "readyTimeoutMs": 0,
                             "attach": "auto" });
    let list = json!({
        "cniVersion": "1.0.0", "name": node.network,
        "plugins": [weir, { "type": "bandwidth", "capabilities": { "bandwidth": true } }]
    });
    let both =
        json!({ "ingressRate": 8_000_000, "ingressBurst": 80_000, "egressRate": 8_000_000, "egressBurst": 80_000 });
    let ingress_only = json!({ "ingressRate": 8_000_000, "ingressBurst": 80_000 });
    let links = |id: &str, veth: &str| -> (Vec<String>, String) {
        let rec = weir_common::registry::Registry::under(node.run_dir()).get(id, "eth0").unwrap().unwrap();
        let idx = rec.host_ifindex;
        let pins: Vec<String> = std::fs::read_dir(root.0.join("links"))
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let ours: Vec<String> = pins.into_iter().filter(|n| n.starts_with(&format!("{idx}_"))).collect();
        (ours, node.ns.exec(&["tc", "qdisc", "show", "dev", veth]))
    };
    for (id, bandwidth, tcx) in [("bw1", &both, true), ("bw2", &ingress_only, false)] {
        let pod = Netns::new("wp");
        let result = run_list_shaped(&node, &list, "ADD", id, &pod, None, bandwidth);
        let veth = weir_cni::naming::host_veth(id, "eth0");
        let (mut pins, qdiscs) = links(id, &veth);
        pins.sort();
        assert!(qdiscs.contains("tbf"), "bandwidth shapes the pod's ingress: {qdiscs}");
        if tcx {
            assert!(pins.iter().all(|p| !p.ends_with("-tc")) && pins.len() == 2, "TCX link pins: {pins:?}");
            assert!(qdiscs.contains("ingress") && !qdiscs.contains("clsact"), "bandwidth's ingress qdisc: {qdiscs}");
        } else {
            assert!(pins.iter().all(|p| p.ends_with("-tc")) && pins.len() == 2, "tc filter records: {pins:?}");
            assert!(qdiscs.contains("clsact"), "{qdiscs}");
        }
        run_list_shaped(&node, &list, "CHECK", id, &pod, Some(&result), bandwidth);
        run_list_shaped(&node, &list, "DEL", id, &pod, Some(&result), bandwidth);
        node.assert_clean(id, Some(&pod));
    }
}
