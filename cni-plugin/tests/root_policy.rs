//! `policy.enforce: true`: the real dataplane (weir-bpf) pinned under a
//! bpffs root unique to the test. The test plays weir-policyd where one is
//! needed, by flipping the endpoint to READY through weir-bpf itself.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};
use weir_bpf::abi;

fn enforcing(node: &Node, root: &BpfRoot, timeout_ms: u64) -> Value {
    enforcing_attached(node, root, timeout_ms, "auto")
}

/// With `policy.attach` set: the tests of ADD, CHECK, DEL and GC run with
/// each mechanism ("tcx", "tc").
fn enforcing_attached(node: &Node, root: &BpfRoot, timeout_ms: u64, attach: &str) -> Value {
    let mut c = node.conf("1.1.0", "10.95.0.0/24", Some("fd95::/64"));
    c["policy"] = json!({ "enforce": true, "bpffsRoot": root.0, "runDir": node.run_dir(), "readyTimeoutMs": timeout_ms,
                          "whileNotReady": "drop", "onReadyTimeout": "fail", "attach": attach });
    c
}

/// Both programs attached to `idx`, asked in the node's netns (where a tc
/// filter lives; a TCX link answers from anywhere).
fn attached_in_node(node: &Node, root: &BpfRoot, idx: u32) -> bool {
    let root = root.0.clone();
    node.ns.run(move || weir_bpf::Dataplane::open(&root).unwrap().is_attached(idx).unwrap())
}

/// Weir's tc filters on every device of the node's netns.
fn weir_filters_in_node(node: &Node) -> Vec<(u32, weir_bpf::tc::Filter)> {
    node.ns.run(|| {
        let mut out = Vec::new();
        // SAFETY: if_nameindex returns an array ending with a zero index, freed below.
        let list = unsafe { libc::if_nameindex() };
        let mut i = 0;
        loop {
            let idx = unsafe { (*list.add(i)).if_index };
            if idx == 0 {
                break;
            }
            for side in [weir_bpf::tc::Side::Ingress, weir_bpf::tc::Side::Egress] {
                out.extend(weir_bpf::tc::weir_filter(idx, side).unwrap().map(|f| (idx, f)));
            }
            i += 1;
        }
        unsafe { libc::if_freenameindex(list) };
        out
    })
}

#[test]
fn root_enforce_without_policyd_fails_with_code_11_and_leaves_nothing_tcx() {
    without_policyd_fails_with_code_11_and_leaves_nothing("tcx");
}

#[test]
fn root_enforce_without_policyd_fails_with_code_11_and_leaves_nothing_tc() {
    without_policyd_fails_with_code_11_and_leaves_nothing("tc");
}

fn without_policyd_fails_with_code_11_and_leaves_nothing(attach: &str) {
    require_root!();
    let node = Node::new();
    let root = BpfRoot::new();
    let pod = Netns::new("wp");
    let conf = enforcing_attached(&node, &root, 50, attach);
    let r = node.add("np1", &pod, &conf);
    assert_eq!(r.err_code(), 11, "{r:?}");
    assert!(r.msg().contains("weir-policyd is not running"), "{}", r.msg());
    node.assert_clean("np1", Some(&pod));
    assert!(!pod.has_link("eth0"));
    let dp = weir_bpf::Dataplane::open(&root.0).unwrap();
    assert!(dp.endpoints().unwrap().is_empty(), "endpoint entry rolled back");
    assert!(dp.attached_ifindexes().unwrap().is_empty(), "tc links rolled back");
    assert_eq!(weir_filters_in_node(&node), vec![], "tc filters rolled back");
    let reg = weir_common::registry::Registry::under(node.run_dir());
    assert!(reg.list().0.is_empty(), "registry record rolled back");
}

/// A mechanism the plugin does not know is a config error naming the
/// field and the choices, before anything is set up.
#[test]
fn root_enforce_with_an_unknown_attach_mechanism_is_refused() {
    require_root!();
    let node = Node::new();
    let root = BpfRoot::new();
    let pod = Netns::new("wp");
    let conf = enforcing_attached(&node, &root, 0, "xdp");
    let r = node.add("na1", &pod, &conf);
    assert_eq!(r.err_code(), 7, "{r:?}");
    assert!(r.msg().contains("policy.attach \"xdp\"") && r.msg().contains("\"tc\""), "{}", r.msg());
    node.assert_clean("na1", Some(&pod));
    assert!(!pod.has_link("eth0"));
    assert!(!root.0.exists(), "nothing was loaded for it");
}

/// An endpoint entry holds one address per family (as Kubernetes podIPs):
/// two IPv4 range sets with enforce fail ADD with a message naming the fix,
/// and ADD leaves nothing behind.
#[test]
fn root_enforce_refuses_two_addresses_of_one_family() {
    require_root!();
    let node = Node::new();
    let root = BpfRoot::new();
    let pod = Netns::new("wp");
    let mut conf = enforcing(&node, &root, 0);
    conf["ipam"]["ranges"] = json!([[{ "subnet": "10.95.0.0/24" }], [{ "subnet": "10.96.0.0/24" }]]);
    let r = node.add("np2", &pod, &conf);
    assert_eq!(r.err_code(), 7, "{r:?}");
    assert!(r.msg().contains("2 IPv4 addresses") && r.msg().contains("one range set per family"), "{}", r.msg());
    node.assert_clean("np2", Some(&pod));
    let dp = weir_bpf::Dataplane::open(&root.0).unwrap();
    assert!(dp.endpoints().unwrap().is_empty(), "no endpoint entry");
    assert!(dp.attached_ifindexes().unwrap().is_empty(), "nothing attached");
}

/// Wait for ADD's endpoint record, then do what policyd does: mark READY.
fn play_policyd(node: &Node, root: &BpfRoot, id: &str) -> u32 {
    let reg = weir_common::registry::Registry::under(node.run_dir());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(rec) = reg.get(id, "eth0").unwrap() {
            let dp = weir_bpf::Dataplane::open(&root.0).unwrap();
            let ep = dp.endpoint(rec.host_ifindex).unwrap().expect("ADD writes the endpoint before the record");
            assert_eq!(ep.flags & abi::EP_READY, 0, "not READY before policyd says so");
            // ADD wrote what the pod may claim: its MAC and addresses
            assert_eq!(Some(ep.mac), weir_bpf::addr::parse_mac(&rec.mac), "the pod's MAC in the endpoint entry");
            let (mut have, mut want) = (ep.ips(), rec.ips.clone());
            have.sort();
            want.sort();
            assert_eq!(have, want, "the pod's addresses in the endpoint entry");
            dp.set_endpoint(
                rec.host_ifindex,
                &abi::Endpoint { identity: 256, flags: abi::EP_READY, revision: 1, ..ep },
            )
            .unwrap();
            // policyd also puts the pod's addresses in the ipcache.
            for ip in &rec.ips {
                let net = ipnet::IpNet::new(*ip, if ip.is_ipv4() { 32 } else { 128 }).unwrap();
                dp.set_ipcache(net, &abi::IpcacheValue { identity: 256, endpoint: rec.host_ifindex, flags: 0, pad: 0 })
                    .unwrap();
            }
            return rec.host_ifindex;
        }
        assert!(Instant::now() < deadline, "no endpoint record for {id}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn root_enforce_with_a_ready_endpoint_succeeds_and_del_cleans_the_maps_tcx() {
    ready_endpoint_succeeds_and_del_cleans_the_maps("tcx");
}

#[test]
fn root_enforce_with_a_ready_endpoint_succeeds_and_del_cleans_the_maps_tc() {
    ready_endpoint_succeeds_and_del_cleans_the_maps("tc");
}

fn ready_endpoint_succeeds_and_del_cleans_the_maps(attach: &str) {
    require_root!();
    let node = std::sync::Arc::new(Node::new());
    let root = BpfRoot::new();
    let conf = std::sync::Arc::new(enforcing_attached(&node, &root, 20_000, attach));
    let (p1, p2) = (std::sync::Arc::new(Netns::new("wp")), std::sync::Arc::new(Netns::new("wp")));
    let mut results = Vec::new();
    let mut ifindexes = Vec::new();
    for (id, p) in [("e1", &p1), ("e2", &p2)] {
        let (n, c, pp) = (node.clone(), conf.clone(), p.clone());
        let add = std::thread::spawn(move || n.add(id, &pp, &c));
        ifindexes.push(play_policyd(&node, &root, id));
        results.push(add.join().unwrap().ok().clone());
    }
    let dp = weir_bpf::Dataplane::open(&root.0).unwrap();
    for idx in &ifindexes {
        assert!(attached_in_node(&node, &root, *idx), "tc programs on host veth {idx} in the node netns");
    }
    let filters = weir_filters_in_node(&node);
    match attach {
        "tc" => assert_eq!(filters.len(), 4, "one filter per hook of each host veth: {filters:?}"),
        _ => assert_eq!(filters, vec![], "TCX only"),
    }
    // The gateway is HOST in the ipcache.
    let gw = result_gateway(&results[0], true);
    assert_eq!(dp.ipcache_lookup(gw).unwrap().unwrap().identity, abi::ID_HOST);
    // The registry record carries what policyd needs.
    let rec = weir_common::registry::Registry::under(node.run_dir()).get("e1", "eth0").unwrap().unwrap();
    assert_eq!(rec.pod_name, "p");
    assert_eq!(rec.ips.len(), 2);
    assert_eq!(rec.gateways.len(), 2);
    // Two READY, unisolated endpoints talk through the programs.
    let a2 = result_ip(&results[1], true);
    let l = p2.run(move || TcpListener::bind(SocketAddr::new(a2, 0)).unwrap());
    let addr = l.local_addr().unwrap();
    let srv = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut b = [0u8; 2];
        s.read_exact(&mut b).unwrap();
        s.write_all(&b).unwrap();
    });
    let got = p1.run(move || {
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"ok").unwrap();
        let mut b = [0u8; 2];
        c.read_exact(&mut b).unwrap();
        b
    });
    assert_eq!(&got, b"ok");
    srv.join().unwrap();
    // CHECK sees the attachment, and (like a second ADD) stacks nothing.
    let check = Call::new("CHECK", "e1", &p1.path(), "eth0");
    let mut c = (*conf).clone();
    c["prevResult"] = results[0].clone();
    node.weir(&check, &c).ok();
    node.weir(&check, &c).ok();
    assert_eq!(weir_filters_in_node(&node), filters);
    // Deny all ingress to pod 2 (isolated, nothing allowed): the programs drop it.
    let ep2 = dp.endpoint(ifindexes[1]).unwrap().unwrap();
    dp.set_endpoint(ifindexes[1], &abi::Endpoint { flags: ep2.flags | abi::EP_INGRESS_ISOLATED, ..ep2 }).unwrap();
    let l = p2.run(move || TcpListener::bind(SocketAddr::new(a2, 0)).unwrap());
    let addr = l.local_addr().unwrap();
    let denied = p1.run(move || TcpStream::connect_timeout(&addr, Duration::from_millis(800)).map(|_| ()));
    assert!(denied.is_err(), "deny-all ingress is enforced ({attach})");
    drop(l);
    // With the filter gone, CHECK fails: it reads the kernel, not our records.
    if attach == "tc" {
        let veth = weir_cni::naming::host_veth("e1", "eth0");
        node.ns.run(move || sh(&["tc", "filter", "del", "dev", &veth, "ingress"]));
        let r = node.weir(&check, &c);
        assert_ne!(r.code, 0, "CHECK passed without the from_pod filter: {r:?}");
    }

    for (id, p) in [("e1", &p1), ("e2", &p2)] {
        node.del(id, p, &conf).ok();
        node.del(id, p, &conf).ok();
        node.assert_clean(id, Some(p));
    }
    assert!(dp.endpoints().unwrap().is_empty(), "endpoint entries removed by DEL");
    assert!(dp.attached_ifindexes().unwrap().is_empty(), "links unpinned (or filter records removed) by DEL");
    assert_eq!(weir_filters_in_node(&node), vec![], "no filter left behind");
    for r in &results {
        let ip = result_ip(r, true);
        assert!(dp.ipcache_lookup(ip).unwrap().is_none_or(|v| v.endpoint == 0), "pod ipcache entry removed");
    }
    assert!(weir_common::registry::Registry::under(node.run_dir()).list().0.is_empty());
}

#[test]
fn root_enforce_not_ready_endpoint_is_fail_closed_tcx() {
    not_ready_endpoint_is_fail_closed("tcx");
}

#[test]
fn root_enforce_not_ready_endpoint_is_fail_closed_tc() {
    not_ready_endpoint_is_fail_closed("tc");
}

fn not_ready_endpoint_is_fail_closed(attach: &str) {
    require_root!();
    let node = Node::new();
    let root = BpfRoot::new();
    let mut conf = enforcing_attached(&node, &root, 0, attach);
    conf["policy"]["readyTimeoutMs"] = json!(0);
    let (p1, p2) = (Netns::new("wp"), Netns::new("wp"));
    let _r1 = node.add("f1", &p1, &conf).ok().clone();
    let r2 = node.add("f2", &p2, &conf).ok().clone();
    // readyTimeoutMs 0: ADD returns at once; nobody made the pods READY, so
    // the programs drop pod-to-pod traffic.
    let a2 = result_ip(&r2, true);
    let l = p2.run(move || TcpListener::bind(SocketAddr::new(a2, 0)).unwrap());
    let addr = l.local_addr().unwrap();
    let res = p1.run(move || TcpStream::connect_timeout(&addr, Duration::from_millis(800)).map(|_| ()));
    assert!(res.is_err(), "a not-ready pod must not receive connections");
    drop(l);
    node.del("f1", &p1, &conf).ok();
    node.del("f2", &p2, &conf).ok();
}

#[test]
fn root_enforce_gc_and_status_tcx() {
    gc_and_status("tcx");
}

#[test]
fn root_enforce_gc_and_status_tc() {
    gc_and_status("tc");
}

fn gc_and_status(attach: &str) {
    require_root!();
    let node = Node::new();
    let root = BpfRoot::new();
    let conf = enforcing_attached(&node, &root, 0, attach);
    let status = Call { command: "STATUS".into(), ..Default::default() };
    // Before any ADD the pins do not exist: ADD could not be served yet by policyd.
    assert_eq!(node.weir(&status, &conf).err_code(), 50);
    let pods: Vec<Netns> = (0..3).map(|_| Netns::new("wp")).collect();
    for (i, p) in pods.iter().enumerate() {
        node.add(&format!("g{i}"), p, &conf).ok();
    }
    assert_eq!(node.weir(&status, &conf).code, 0, "pins exist now");
    let dp = weir_bpf::Dataplane::open(&root.0).unwrap();
    assert_eq!(dp.endpoints().unwrap().len(), 3);
    let keep_idx =
        weir_common::registry::Registry::under(node.run_dir()).get("g0", "eth0").unwrap().unwrap().host_ifindex;
    let mut c = conf.clone();
    c["cni.dev/valid-attachments"] = json!([{ "containerID": "g0", "ifname": "eth0" }]);
    node.weir(&Call { command: "GC".into(), ..Default::default() }, &c).ok();
    let eps: Vec<u32> = dp.endpoints().unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(eps, vec![keep_idx], "only the valid attachment's endpoint remains");
    assert_eq!(dp.attached_ifindexes().unwrap(), vec![keep_idx]);
    assert!(attached_in_node(&node, &root, keep_idx), "GC left the valid attachment's programs");
    let left: Vec<u32> = weir_filters_in_node(&node).into_iter().map(|(i, _)| i).collect();
    match attach {
        "tc" => assert_eq!(left, vec![keep_idx, keep_idx], "GC left only the valid attachment's filters"),
        _ => assert_eq!(left, Vec::<u32>::new()),
    }
    let (records, _) = weir_common::registry::Registry::under(node.run_dir()).list();
    assert_eq!(records.iter().map(|r| r.container_id.as_str()).collect::<Vec<_>>(), ["g0"]);
    node.assert_clean("g1", None);
    node.assert_clean("g2", None);
    // A stale heartbeat from weir-policyd makes STATUS report it down.
    let hb = node.run_dir().join("policyd.heartbeat");
    std::fs::write(&hb, b"").unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(120);
    std::fs::File::options().write(true).open(&hb).unwrap().set_modified(old).unwrap();
    let r = node.weir(&status, &conf);
    assert_eq!(r.err_code(), 50);
    assert!(r.msg().contains("heartbeat"), "{}", r.msg());
    node.del("g0", &pods[0], &conf).ok();
}

/// Record names were `<containerID>_<ifname>`: DEL of ("wpq", "r_eth0"),
/// never added, found and removed the record of ("wpq_r", "eth0") with its
/// endpoint entry and link pins, so that pod ignored its policy from then on.
#[test]
fn root_del_of_an_attachment_whose_name_collided_with_another_touches_nothing_of_it() {
    require_root!();
    let node = std::sync::Arc::new(Node::new());
    let root = BpfRoot::new();
    let conf = std::sync::Arc::new(enforcing(&node, &root, 20_000));
    let pod = std::sync::Arc::new(Netns::new("wp"));
    let (n, c, p) = (node.clone(), conf.clone(), pod.clone());
    let add = std::thread::spawn(move || n.add("wpq_r", &p, &c));
    let idx = play_policyd(&node, &root, "wpq_r");
    add.join().unwrap().ok();

    let rogue = node.weir(&Call::new("DEL", "wpq", &pod.path(), "r_eth0"), &conf);
    assert_eq!(rogue.code, 0, "DEL of an unknown attachment succeeds (idempotent): {rogue:?}");

    let reg = weir_common::registry::Registry::under(node.run_dir());
    assert!(reg.get("wpq_r", "eth0").unwrap().is_some(), "the other attachment's record was removed");
    let dp = weir_bpf::Dataplane::open(&root.0).unwrap();
    let ep = dp.endpoint(idx).unwrap().expect("the other attachment's endpoint entry was removed");
    assert_ne!(ep.flags & abi::EP_READY, 0);
    assert!(attached_in_node(&node, &root, idx), "the other attachment's programs were detached");
    node.del("wpq_r", &pod, &conf).ok();
    node.assert_clean("wpq_r", Some(&pod));
}

/// `/sys/fs/bpf` is mode 1777: a user who made the bpffs root (or its
/// `links` directory) first could later delete the link pins and switch off
/// enforcement. Such a root is refused, and the failed ADD leaves nothing.
#[test]
fn root_a_bpffs_root_or_run_dir_another_user_made_is_refused() {
    require_root!();
    use std::os::unix::fs::PermissionsExt;
    let squat = |dir: &std::path::Path| {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::os::unix::fs::chown(dir, Some(65534), Some(65534)).unwrap();
    };
    for (what, sub) in [("bpffs root", None), ("links dir", Some("links")), ("run dir", Some("run"))] {
        let node = Node::new();
        let root = BpfRoot::new();
        let conf = enforcing(&node, &root, 0);
        let squatted = match sub {
            None => root.0.clone(),
            Some("run") => node.run_dir(),
            Some(s) => {
                std::fs::create_dir(&root.0).unwrap();
                root.0.join(s)
            }
        };
        squat(&squatted);
        let pod = Netns::new("wp");
        let r = node.add("sq1", &pod, &conf);
        r.err_code();
        assert!(r.msg().contains(&format!("{} is owned by uid 65534", squatted.display())), "{what}: {}", r.msg());
        assert!(r.msg().contains("chmod 0700"), "{what}: the fix is named: {}", r.msg());
        node.assert_clean("sq1", Some(&pod));
        assert!(!pod.has_link("eth0"), "{what}: rolled back");
        if sub.is_none() {
            assert!(!root.0.join("progs").exists(), "nothing is loaded into a squatted root");
        }
    }
}

/// podman and `ctr run --cni` pass no K8S_POD_* arguments: with
/// enforcement ADD used to wait readyTimeoutMs for a Pod policyd could
/// never find, then blame policyd. It now says what is missing at once.
#[test]
fn root_enforce_without_pod_identity_fails_at_once_naming_what_is_missing() {
    require_root!();
    let node = Node::new();
    let root = BpfRoot::new();
    let conf = enforcing(&node, &root, 60_000);
    let pod = Netns::new("wp");
    let mut call = Call::new("ADD", "nok8s", &pod.path(), "eth0");
    call.args = Some("IgnoreUnknown=1".into());
    let r = node.weir(&call, &conf);
    assert_eq!(r.err_code(), 4, "{r:?}");
    assert!(
        r.msg().contains("K8S_POD_NAMESPACE or K8S_POD_NAME") && r.msg().contains("\"enforce\": false"),
        "{}",
        r.msg()
    );
    node.assert_clean("nok8s", Some(&pod));
    assert!(!pod.has_link("eth0"));
    assert!(!root.0.exists(), "nothing was loaded for it");
}

/// A static MAC and addresses reach the endpoint entry the programs judge
/// by; a request for a taken address leaves no entry, link or record.
#[test]
fn root_enforce_static_mac_and_addresses_reach_the_endpoint_and_a_taken_one_leaves_nothing() {
    require_root!();
    let node = Node::new();
    let root = BpfRoot::new();
    let (p1, p2) = (Netns::new("wp"), Netns::new("wp"));
    let mut conf = enforcing(&node, &root, 0);
    conf["runtimeConfig"] = json!({ "ips": ["10.95.0.77", "fd95::77"], "mac": "0a:58:0a:5f:00:4d" });
    let r = node.add("sm1", &p1, &conf).ok().clone();
    assert_eq!(result_ip(&r, true).to_string(), "10.95.0.77");
    let dp = weir_bpf::Dataplane::open(&root.0).unwrap();
    let eps = dp.endpoints().unwrap();
    assert_eq!(eps.len(), 1);
    let ep = eps[0].1;
    assert_eq!(weir_bpf::addr::format_mac(ep.mac), "0a:58:0a:5f:00:4d");
    let mut ips = ep.ips();
    ips.sort();
    assert_eq!(ips, ["10.95.0.77".parse::<std::net::IpAddr>().unwrap(), "fd95::77".parse().unwrap()]);

    let mut taken = conf.clone();
    taken["runtimeConfig"] = json!({ "ips": ["10.95.0.77"] });
    let r = node.add("sm2", &p2, &taken);
    assert_eq!(r.err_code(), 107, "{r:?}");
    assert!(r.msg().starts_with("runtimeConfig.ips[0]: 10.95.0.77 is already reserved"), "{}", r.msg());
    node.assert_clean("sm2", Some(&p2));
    assert!(!p2.has_link("eth0"));
    assert_eq!(dp.endpoints().unwrap().len(), 1, "no endpoint entry for the refused pod");
    assert_eq!(dp.attached_ifindexes().unwrap().len(), 1, "nothing attached for the refused pod");
    let reg = weir_common::registry::Registry::under(node.run_dir());
    let ids: Vec<String> = reg.list().0.into_iter().map(|r| r.container_id).collect();
    assert_eq!(ids, ["sm1"]);
    node.del("sm1", &p1, &conf).ok();
    node.assert_clean("sm1", Some(&p1));
    assert!(dp.endpoints().unwrap().is_empty());
}
