//! The real `weir` binary, end to end, in namespaces this test creates.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

const T: Duration = Duration::from_secs(5);

fn tcp_roundtrip(server_ns: &Netns, server_ip: IpAddr, client_ns: &Netns) {
    let listener = server_ns.run(move || TcpListener::bind(SocketAddr::new(server_ip, 0)).unwrap());
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).unwrap();
        s.write_all(&b).unwrap();
        peer.ip()
    });
    let got = client_ns.run(move || {
        let mut c = TcpStream::connect_timeout(&addr, T).unwrap_or_else(|e| panic!("TCP connect {addr}: {e}"));
        c.set_read_timeout(Some(T)).unwrap();
        c.write_all(b"weir").unwrap();
        let mut b = [0u8; 4];
        c.read_exact(&mut b).unwrap();
        b
    });
    assert_eq!(&got, b"weir");
    server.join().unwrap();
}

fn udp_roundtrip(server_ns: &Netns, server_ip: IpAddr, client_ns: &Netns) {
    let server = server_ns.run(move || UdpSocket::bind(SocketAddr::new(server_ip, 0)).unwrap());
    let addr = server.local_addr().unwrap();
    server.set_read_timeout(Some(T)).unwrap();
    let echo = std::thread::spawn(move || {
        let mut b = [0u8; 16];
        let (n, from) = server.recv_from(&mut b).unwrap();
        server.send_to(&b[..n], from).unwrap();
    });
    let any: SocketAddr = if server_ip.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
    let client = client_ns.run(move || UdpSocket::bind(any).unwrap());
    client.set_read_timeout(Some(T)).unwrap();
    client.send_to(b"weir-udp", addr).unwrap();
    let mut b = [0u8; 16];
    let (n, _) = client.recv_from(&mut b).unwrap_or_else(|e| panic!("UDP reply from {addr}: {e}"));
    assert_eq!(&b[..n], b"weir-udp");
    echo.join().unwrap();
}

/// A device's (operstate, bridge port state if it is a port), from a dump
/// of every link: asking for the one device (RTM_GETLINK) would itself
/// apply its pending link-watch change and hide what this checks.
fn link_state(node: &Node, dev: &str) -> (String, Option<String>) {
    let v: Value = serde_json::from_str(&node.ns.ip(&["-j", "-d", "link", "show"])).unwrap();
    let l = v.as_array().unwrap().iter().find(|l| l["ifname"] == dev).unwrap_or_else(|| panic!("no link {dev}"));
    let port = l["linkinfo"]["info_slave_data"]["state"].as_str().map(str::to_string);
    (l["operstate"].as_str().unwrap_or_default().to_string(), port)
}

/// When ADD returns, the pod's first packet goes out: its host end
/// forwards on the bridge and the bridge has carrier, even when this pod
/// is the bridge's only port (the bridge had no carrier before it). Both
/// used to follow only when the kernel's link-watch work ran, up to a
/// second later: the pod's first ARP request for its gateway was dropped
/// and its first connection waited a second for the ARP retry.
#[test]
fn root_the_only_pod_on_a_bridge_can_send_when_add_returns() {
    require_root!();
    let node = Node::new();
    let conf = node.conf("1.1.0", "10.80.7.0/24", None);
    for round in 0..5 {
        let p = Netns::new("wp");
        let id = format!("only{round}");
        node.add(&id, &p, &conf).ok();
        let veth = weir_cni::naming::host_veth(&id, "eth0");
        assert_eq!(link_state(&node, &veth), ("UP".into(), Some("forwarding".into())), "round {round}: {veth}");
        assert_eq!(link_state(&node, &node.bridge).0, "UP", "round {round}: bridge {}", node.bridge);
        node.del(&id, &p, &conf).ok();
        node.assert_clean(&id, Some(&p));
    }
}

#[test]
fn root_two_pods_reach_each_other_and_the_gateway() {
    require_root!();
    let node = Node::new();
    let (p1, p2) = (Netns::new("wp"), Netns::new("wp"));
    let conf = node.conf("1.1.0", "10.80.1.0/24", Some("fd80:1::/64"));
    let r1 = node.add("c1", &p1, &conf).ok().clone();
    let r2 = node.add("c2", &p2, &conf).ok().clone();
    for v4 in [true, false] {
        let (a1, a2, gw) = (result_ip(&r1, v4), result_ip(&r2, v4), result_gateway(&r1, v4));
        assert_ne!(a1, a2);
        tcp_roundtrip(&p2, a2, &p1);
        tcp_roundtrip(&p1, a1, &p2);
        udp_roundtrip(&p2, a2, &p1);
        // The gateway is the node: it must answer the pod.
        tcp_roundtrip(&node.ns, gw, &p1);
        udp_roundtrip(&node.ns, gw, &p2);
    }
    // hairpin mode, MTU and forwarding as configured.
    let veth = weir_cni::naming::host_veth("c1", "eth0");
    assert!(node.ns.ip(&["-d", "link", "show", &veth]).contains("hairpin on"));
    assert_eq!(node.ns.run(|| std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap()).trim(), "1");
    assert_eq!(node.ns.run(|| std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/forwarding").unwrap()).trim(), "1");
    assert_eq!(p1.run(|| std::fs::read_to_string("/proc/sys/net/ipv4/conf/eth0/arp_notify").unwrap()).trim(), "1");
    node.del("c1", &p1, &conf).ok();
    node.del("c2", &p2, &conf).ok();
    node.assert_clean("c1", Some(&p1));
    node.assert_clean("c2", Some(&p2));
}

#[test]
fn root_mtu_and_routes_from_config() {
    require_root!();
    let node = Node::new();
    let pod = Netns::new("wp");
    let mut conf = node.conf("1.0.0", "10.81.0.0/24", None);
    conf["mtu"] = json!(1400);
    conf["ipam"]["routes"] = json!([{ "dst": "10.96.0.0/12" }, { "dst": "192.0.2.0/24", "gw": "10.81.0.254" }]);
    let r = node.add("c1", &pod, &conf).ok().clone();
    assert!(pod.ip(&["link", "show", "eth0"]).contains("mtu 1400"));
    let routes = pod.ip(&["-4", "route", "show"]);
    assert!(routes.contains("default via 10.81.0.1 dev eth0"), "{routes}");
    assert!(routes.contains("10.96.0.0/12 via 10.81.0.1 dev eth0"), "{routes}");
    assert!(routes.contains("192.0.2.0/24 via 10.81.0.254 dev eth0"), "{routes}");
    // Reported as configured (like the reference bridge), the default route with its gateway.
    assert_eq!(
        r["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "10.81.0.1"}, {"dst": "10.96.0.0/12"}, {"dst": "192.0.2.0/24", "gw": "10.81.0.254"}])
    );
    node.del("c1", &pod, &conf).ok();
    node.assert_clean("c1", Some(&pod));
}

#[test]
fn root_results_follow_each_spec_version() {
    require_root!();
    let node = Node::new();
    for (i, v) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"].iter().enumerate() {
        let pod = Netns::new("wp");
        let conf = node.conf(v, "10.82.0.0/24", Some("fd82::/64"));
        let id = format!("v{i}");
        let r = node.add(&id, &pod, &conf).ok().clone();
        assert_eq!(r["cniVersion"], json!(v));
        let old = v.starts_with("0.");
        for ip in r["ips"].as_array().unwrap() {
            assert_eq!(ip.get("version").is_some(), old, "{v}: {ip}");
            let idx = ip["interface"].as_u64().unwrap() as usize;
            assert_eq!(r["interfaces"][idx]["name"], json!("eth0"));
            assert_eq!(r["interfaces"][idx]["sandbox"], json!(pod.path()));
        }
        assert_eq!(r["interfaces"].as_array().unwrap().iter().any(|i| i.get("mtu").is_some()), *v == "1.1.0");
        let del = node.del(&id, &pod, &conf);
        assert_eq!(del.code, 0, "{del:?}");
        assert!(del.out.is_null(), "DEL prints nothing on success: {}", del.out);
        node.assert_clean(&id, Some(&pod));
    }
}

#[test]
fn root_version_lists_every_supported_version() {
    require_root!();
    let node = Node::new();
    let call = Call { command: "VERSION".into(), ..Default::default() };
    let r = exec_plugin(&node.ns, WEIR, &call, br#"{"cniVersion":"1.0.0"}"#);
    let out = r.ok();
    assert_eq!(out["cniVersion"], json!("1.0.0"));
    assert_eq!(out["supportedVersions"], json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]));
}

fn with_prev(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}

#[test]
fn root_check_passes_after_add_and_fails_when_the_address_is_removed() {
    require_root!();
    let node = Node::new();
    let pod = Netns::new("wp");
    let conf = node.conf("1.1.0", "10.83.0.0/24", Some("fd83::/64"));
    let r = node.add("c1", &pod, &conf).ok().clone();
    let check = Call::new("CHECK", "c1", &pod.path(), "eth0");
    node.weir(&check, &with_prev(&conf, &r)).ok();
    // Missing prevResult is a configuration error.
    assert_eq!(node.weir(&check, &conf).err_code(), 7);
    let a6 = r["ips"][1]["address"].as_str().unwrap().to_string();
    pod.ip(&["addr", "del", &a6, "dev", "eth0"]);
    let bad = node.weir(&check, &with_prev(&conf, &r));
    assert_eq!(bad.err_code(), 103);
    assert!(bad.msg().contains(&a6), "{}", bad.msg());
    node.del("c1", &pod, &conf).ok();
    node.assert_clean("c1", Some(&pod));
}

#[test]
fn root_del_is_idempotent_and_needs_no_netns() {
    require_root!();
    let node = Node::new();
    let conf = node.conf("1.1.0", "10.84.0.0/24", Some("fd84::/64"));
    // Netns deleted before DEL.
    let pod = Netns::new("wp");
    node.add("gone", &pod, &conf).ok();
    let path = pod.path();
    drop(pod);
    let mut call = Call::new("DEL", "gone", &path, "eth0");
    node.weir(&call, &conf).ok();
    node.assert_clean("gone", None);
    // CNI_NETNS empty, then unset, then again (twice).
    let pod = Netns::new("wp");
    node.add("c2", &pod, &conf).ok();
    call = Call::new("DEL", "c2", "", "eth0");
    node.weir(&call, &conf).ok();
    call.netns = None;
    node.weir(&call, &conf).ok();
    node.weir(&call, &conf).ok();
    node.assert_clean("c2", Some(&pod));
    // DEL of something never added.
    node.weir(&Call::new("DEL", "never", "", "eth0"), &conf).ok();
}

#[test]
fn root_bad_inputs_fail_cleanly() {
    require_root!();
    let node = Node::new();
    let conf = node.conf("1.1.0", "10.85.0.0/24", None);
    // A working attachment first, so the bridge exists and leaks are visible.
    let keep = Netns::new("wp");
    node.add("keep", &keep, &conf).ok();
    let before = node.reserved();

    let pod = Netns::new("wp");
    let add = Call::new("ADD", "bad", &pod.path(), "eth0");
    let expect = |r: Run, code: u64, needle: &str| {
        assert_eq!(r.err_code(), code, "{:?}", r);
        assert!(r.msg().contains(needle), "message {:?} should name {needle:?}", r.msg());
        assert!(!r.stderr.is_empty(), "errors are logged on stderr too");
    };

    // Malformed JSON.
    let r = exec_plugin(&node.ns, WEIR, &add, b"{\"cniVersion\": \"1.1.0\", ");
    expect(r, 6, "not valid JSON");
    // Unknown type.
    let mut c = conf.clone();
    c["type"] = json!("brdge");
    expect(node.weir(&add, &c), 7, "type \"brdge\"");
    // Subnet that does not parse.
    let mut c = conf.clone();
    c["ipam"]["ranges"] = json!([[{ "subnet": "10.85.0.0/40" }]]);
    expect(node.weir(&add, &c), 7, "ipam.ranges[0][0].subnet");
    // Overlapping ranges.
    let mut c = conf.clone();
    c["ipam"]["ranges"] = json!([[{ "subnet": "10.85.0.0/24" }], [{ "subnet": "10.85.0.128/25" }]]);
    expect(node.weir(&add, &c), 7, "overlaps");
    // Missing env var.
    let mut call = add.clone();
    call.netns = None;
    expect(node.weir(&call, &conf), 4, "CNI_NETNS");
    // Netns path that does not exist.
    let mut call = add.clone();
    call.netns = Some("/run/netns/weir-no-such-ns".into());
    expect(node.weir(&call, &conf), 4, "CNI_NETNS=\"/run/netns/weir-no-such-ns\" does not exist");
    // Unsupported IPAM plugin (delegation target missing).
    let mut c = conf.clone();
    c["ipam"] = json!({ "type": "no-such-ipam" });
    expect(node.weir(&add, &c), 7, "ipam.type \"no-such-ipam\"");
    node.assert_clean("bad", Some(&pod));

    // Interface name already taken in the pod.
    // (no dummy driver in this kernel: a veth pair stands in)
    pod.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer"]);
    expect(node.weir(&add, &conf), 101, "CNI_IFNAME=\"eth0\" already exists");
    assert!(node.reserved_by("bad").is_empty());
    assert!(!node.ns.has_link(&weir_cni::naming::host_veth("bad", "eth0")));
    pod.ip(&["link", "del", "eth0"]);

    // A bridge name that exists but is not a bridge: rolls back the reservation.
    let not_bridge = unique("wd");
    let not_bridge_peer = format!("{not_bridge}p");
    node.ns.ip(&["link", "add", &not_bridge, "type", "veth", "peer", "name", &not_bridge_peer]);
    let mut c = conf.clone();
    c["bridge"] = json!(not_bridge);
    expect(node.weir(&add, &c), 7, "is a veth device, not a bridge");
    node.assert_clean("bad", Some(&pod));

    // Exhausted range: a /30 has one address besides the gateway.
    let mut c = conf.clone();
    c["name"] = json!(format!("{}-small", node.network));
    c["ipam"]["ranges"] = json!([[{ "subnet": "10.86.0.0/30" }]]);
    let p3 = Netns::new("wp");
    node.add("one", &p3, &c).ok();
    let r = node.weir(&add, &c);
    expect(r, 102, "ipam.ranges[0]");
    assert!(!node.ns.has_link(&weir_cni::naming::host_veth("bad", "eth0")));
    assert!(!pod.has_link("eth0"));
    node.del("one", &p3, &c).ok();

    assert_eq!(node.reserved(), before, "the store is as it was");
    node.del("keep", &keep, &conf).ok();
}

#[test]
fn root_status_reports_exhaustion_and_missing_dataplane() {
    require_root!();
    let node = Node::new();
    let mut conf = node.conf("1.1.0", "10.87.0.0/30", None);
    let status = Call { command: "STATUS".into(), ..Default::default() };
    assert_eq!(node.weir(&status, &conf).code, 0);
    let pod = Netns::new("wp");
    node.add("c1", &pod, &conf).ok();
    let r = node.weir(&status, &conf);
    assert_eq!(r.err_code(), 50);
    assert!(r.msg().contains("ipam.ranges[0] is exhausted"), "{}", r.msg());
    node.del("c1", &pod, &conf).ok();
    assert_eq!(node.weir(&status, &conf).code, 0);
    // Policy enforcement without pinned maps cannot serve ADD.
    conf["policy"]["enforce"] = json!(true);
    let r = node.weir(&status, &conf);
    assert_eq!(r.err_code(), 50);
    assert!(r.msg().contains("pinned maps are missing"), "{}", r.msg());
    // STATUS is a 1.1.0 command.
    conf["cniVersion"] = json!("1.0.0");
    assert_eq!(node.weir(&status, &conf).err_code(), 1);
}

#[test]
fn root_gc_removes_what_is_not_valid() {
    require_root!();
    let node = Node::new();
    let conf = node.conf("1.1.0", "10.88.0.0/24", Some("fd88::/64"));
    let pods: Vec<Netns> = (0..3).map(|_| Netns::new("wp")).collect();
    for (i, p) in pods.iter().enumerate() {
        node.add(&format!("c{i}"), p, &conf).ok();
    }
    // A reservation of a container the runtime forgot, written by another plugin.
    std::fs::write(node.store().join("10.88.0.200"), "stale\r\neth0").unwrap();
    let gc = Call { command: "GC".into(), ..Default::default() };
    let mut c = conf.clone();
    c["cni.dev/valid-attachments"] = json!([{ "containerID": "c0", "ifname": "eth0" }]);
    node.weir(&gc, &c).ok();
    assert_eq!(node.reserved_by("c0").len(), 2);
    assert!(node.reserved_by("stale").is_empty());
    node.assert_clean("c1", None);
    node.assert_clean("c2", None);
    assert_eq!(node.host_veths(), vec![weir_cni::naming::host_veth("c0", "eth0")]);
    // The legacy key is honoured too; an empty list removes everything.
    let mut c = conf.clone();
    c["cni.dev/attachments"] = json!([]);
    node.weir(&gc, &c).ok();
    node.assert_clean("c0", None);
    // Missing list is a config error (GC must not guess).
    assert_eq!(node.weir(&gc, &conf).err_code(), 7);
}

#[test]
fn root_delegated_ipam_is_exec_d_from_cni_path() {
    require_root!();
    let node = Node::new();
    let pod = Netns::new("wp");
    let mut conf = node.conf("1.0.0", "10.89.0.0/24", None);
    conf["ipam"] = json!({ "type": "static", "addresses": [{ "address": "10.89.0.77/24", "gateway": "10.89.0.1" }] });
    let r = node.add("c1", &pod, &conf).ok().clone();
    assert_eq!(r["ips"][0]["address"], json!("10.89.0.77/24"));
    assert!(pod.ip(&["addr", "show", "eth0"]).contains("10.89.0.77/24"));
    tcp_roundtrip(&node.ns, "10.89.0.1".parse().unwrap(), &pod);
    node.del("c1", &pod, &conf).ok();
    assert!(!pod.has_link("eth0"));
}

#[test]
fn root_ip_masq_installs_one_shared_idempotent_rule() {
    require_root!();
    let node = Node::new();
    let mut conf = node.conf("1.1.0", "10.90.1.0/24", Some("fd90:1::/64"));
    conf["ipMasq"] = json!(true);
    conf["clusterCIDRs"] = json!(["10.90.0.0/16"]);
    let pods: Vec<Netns> = (0..2).map(|_| Netns::new("wp")).collect();
    for (i, p) in pods.iter().enumerate() {
        node.add(&format!("m{i}"), p, &conf).ok();
    }
    let nft = |args: &[&str]| node.ns.exec(&[&["nft"], args].concat());
    let rules = nft(&["list", "table", "inet", "weir"]);
    assert_eq!(rules.matches("masquerade").count(), 2, "one rule per family, not per pod: {rules}");
    assert!(rules.contains("ip saddr 10.90.1.0/24 ip daddr != { 10.90.0.0/16, 224.0.0.0/4 } masquerade"), "{rules}");

    // Unchanged ruleset: a further ADD commits no nftables transaction.
    let generation = || node.ns.run(|| weir_cni::masq::nft_generation().expect("NFT_MSG_GETGEN"));
    let g0 = generation();
    let extra = Netns::new("wp");
    node.add("m2", &extra, &conf).ok();
    assert_eq!(generation(), g0, "ADD rewrote an unchanged masquerade chain");

    // Someone removed it: the next ADD notices the moved generation and
    // writes it again.
    nft(&["delete", "table", "inet", "weir"]);
    let again = Netns::new("wp");
    node.add("m3", &again, &conf).ok();
    let rules = nft(&["list", "table", "inet", "weir"]);
    assert_eq!(rules.matches("masquerade").count(), 2, "chain not restored: {rules}");

    for (i, p) in pods.iter().chain([&extra, &again]).enumerate() {
        node.del(&format!("m{i}"), p, &conf).ok();
    }
}

#[test]
fn root_del_cuts_the_pod_off_at_once_and_add_can_follow_immediately() {
    require_root!();
    let node = Node::new();
    let pod = Netns::new("wp");
    let conf = node.conf("1.1.0", "10.91.0.0/24", None);
    let veth = weir_cni::naming::host_veth("r1", "eth0");
    node.add("r1", &pod, &conf).ok();
    // DEL without the helper's wait: when it returns the veth is either
    // gone or down and labelled for the background deletion.
    node.weir(&Call::new("DEL", "r1", &pod.path(), "eth0"), &conf).ok();
    // (The background deletion may win the race with this look.)
    let line = std::process::Command::new("ip").args(["-n", &node.ns.name, "link", "show", &veth]).output().unwrap();
    let line = String::from_utf8_lossy(&line.stdout);
    assert!(!line.contains(",UP"), "host veth still up after DEL: {line}");
    assert!(node.reserved_by("r1").is_empty(), "addresses released by DEL");
    // The runtime may ADD the same attachment again right away.
    let r = node.add("r1", &pod, &conf).ok().clone();
    tcp_roundtrip(&node.ns, "10.91.0.1".parse().unwrap(), &pod);
    assert!(result_ip(&r, true).to_string().starts_with("10.91.0."), "{r}");
    node.del("r1", &pod, &conf).ok();
    node.assert_clean("r1", Some(&pod));
}

#[test]
fn root_add_replaces_a_retired_host_veth_but_not_a_foreign_one() {
    require_root!();
    let node = Node::new();
    let conf = node.conf("1.1.0", "10.92.0.0/24", None);
    let veth = weir_cni::naming::host_veth("r2", "eth0");
    let scratch = common::unique("wr");
    // What a DEL of an older release leaves while its background deletion
    // is pending (its label did not say whose the veth was).
    node.ns.ip(&["link", "add", &veth, "type", "veth", "peer", "name", &scratch]);
    node.ns.ip(&["link", "set", &veth, "down", "alias", "weir: deleting"]);
    let pod = Netns::new("wp");
    node.add("r2", &pod, &conf).ok();
    assert!(!node.ns.has_link(&scratch), "the retired pair was deleted");
    node.del("r2", &pod, &conf).ok();
    node.assert_clean("r2", Some(&pod));

    // The same name without the label is not ours to delete.
    node.ns.ip(&["link", "add", &veth, "type", "veth", "peer", "name", &scratch]);
    let r = node.add("r2", &pod, &conf);
    assert_eq!(r.err_code(), 101, "{r:?}");
    assert!(node.ns.has_link(&scratch), "a foreign link was deleted");
    assert!(node.reserved_by("r2").is_empty(), "failed ADD released its address");
}

/// Two networks on one bridge: GC of one used to delete the other's live
/// veths (they were not in its list of valid attachments), leaving their
/// addresses reserved. GC may touch only what its own network made.
#[test]
fn root_gc_of_one_network_leaves_another_networks_pods_on_the_same_bridge() {
    require_root!();
    let node = Node::new();
    let conf_a = node.conf("1.1.0", "10.97.0.0/24", None);
    let mut conf_b = conf_a.clone();
    let net_b = common::unique("netb");
    conf_b["name"] = json!(net_b);
    conf_b["ipam"]["ranges"] = json!([[{ "subnet": "10.98.0.0/24" }]]);
    let (pa, pb) = (Netns::new("wp"), Netns::new("wp"));
    node.add("gca", &pa, &conf_a).ok();
    let rb = node.add("gcb", &pb, &conf_b).ok().clone();
    let reserved_b = || std::fs::read_dir(node.data_dir().join(&net_b)).unwrap().count();
    let before = reserved_b();

    // The runtime knows no attachment of network A any more.
    let mut gc = conf_a.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    node.weir(&Call { command: "GC".into(), ..Default::default() }, &gc).ok();

    assert!(!node.ns.has_link(&weir_cni::naming::host_veth("gca", "eth0")), "A's stale veth is collected");
    assert!(node.ns.has_link(&weir_cni::naming::host_veth("gcb", "eth0")), "B's live veth was deleted by A's GC");
    assert_eq!(reserved_b(), before, "B's reservations are B's");
    tcp_roundtrip(&node.ns, result_gateway(&rb, true), &pb);
    node.del("gcb", &pb, &conf_b).ok();
    node.assert_clean("gca", None);
}

/// CNI_NETNS naming the namespace weir runs in used to configure the node
/// itself as a pod: an address and a default route on the node.
#[test]
fn root_add_into_the_nodes_own_netns_is_refused_and_changes_nothing() {
    require_root!();
    let node = Node::new();
    let conf = node.conf("1.1.0", "10.96.0.0/24", None);
    let state = || (node.ns.ip(&["-o", "addr"]), node.ns.ip(&["route"]), node.ns.ip(&["-6", "route"]), node.ns.links());
    let before = state();
    let r = node.weir(&Call::new("ADD", "own", &node.ns.path(), "eth0"), &conf);
    assert_eq!(r.err_code(), 4, "{r:?}");
    assert!(r.msg().contains("is the network namespace weir runs in"), "{}", r.msg());
    assert_eq!(state(), before, "the node was changed");
    node.assert_clean("own", None);
    // CHECK of the same is refused too, before it reads anything.
    let mut c = conf.clone();
    c["prevResult"] = json!({"cniVersion": "1.1.0", "ips": []});
    assert_eq!(node.weir(&Call::new("CHECK", "own", &node.ns.path(), "eth0"), &c).err_code(), 4);
}

/// A pod namespace that already has a default route elsewhere: ADD used to
/// ignore EEXIST and report a default route it had not installed.
#[test]
fn root_add_never_reports_a_route_it_did_not_install() {
    require_root!();
    let node = Node::new();
    let conf = node.conf("1.1.0", "10.99.0.0/24", None);
    let pod = Netns::new("wp");
    pod.ip(&["link", "add", "other0", "type", "veth", "peer", "name", "other1"]);
    pod.ip(&["link", "set", "other1", "up"]);
    pod.ip(&["link", "set", "other0", "up"]);
    pod.ip(&["addr", "add", "192.0.2.2/24", "dev", "other0"]);
    pod.ip(&["route", "add", "default", "via", "192.0.2.1", "dev", "other0"]);
    let routes_before = pod.ip(&["route"]);
    let r = node.add("rt1", &pod, &conf);
    assert_eq!(r.err_code(), 4, "{r:?}");
    assert!(r.msg().contains("route 0.0.0.0/0 already exists"), "{}", r.msg());
    assert_eq!(pod.ip(&["route"]), routes_before);
    assert!(!pod.has_link("eth0"), "rolled back");
    node.assert_clean("rt1", None);
}

/// One conflist for every node: `ipam.ranges` left out, the pod CIDR and
/// MTU come from the node network file weir-policyd writes. Until it is
/// there ADD fails at once (code 11) and STATUS reports 50.
#[test]
fn root_ranges_left_out_come_from_the_node_network_file() {
    require_root!();
    let node = Node::new();
    let mut conf = node.conf("1.1.0", "10.89.0.0/24", None);
    conf["ipam"].as_object_mut().unwrap().remove("ranges");
    let pod = Netns::new("wp");
    let status = Call { command: "STATUS".into(), ..Default::default() };

    let r = node.add("nn1", &pod, &conf);
    assert_eq!(r.err_code(), 11, "{r:?}");
    assert!(r.msg().contains("node-network.json"), "{}", r.msg());
    node.assert_clean("nn1", Some(&pod));
    assert!(!pod.has_link("eth0"));
    assert_eq!(node.weir(&status, &conf).err_code(), 50);

    weir_common::node_network::NodeNetwork {
        node: "node-7".into(),
        pod_cidrs: vec!["10.89.7.0/24".parse().unwrap()],
        mtu: Some(1450),
    }
    .write(&node.run_dir())
    .unwrap();
    assert_eq!(node.weir(&status, &conf).code, 0);
    let r = node.add("nn1", &pod, &conf).ok().clone();
    assert!(result_ip(&r, true).to_string().starts_with("10.89.7."), "{r}");
    assert!(pod.ip(&["link", "show", "eth0"]).contains("mtu 1450"), "the backend's MTU");
    tcp_roundtrip(&node.ns, result_gateway(&r, true), &pod);
    node.del("nn1", &pod, &conf).ok();
    node.assert_clean("nn1", Some(&pod));
}
