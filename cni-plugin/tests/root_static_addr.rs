//! Static addresses and MACs, asked for the ways runtimes ask: podman's
//! `--ip`/`--mac-address` (`CNI_ARGS` `IP=`/`MAC=`), the `ips`/`mac`
//! capabilities (`runtimeConfig`, injected by libcni when the conflist
//! declares them), and `args.cni`. The real `weir` binary, as a runtime
//! runs it, on the shipped conflist's entry.

mod common;

use common::*;
use serde_json::{json, Value};

/// The shipped conflist's weir entry as libcni hands it to the plugin
/// (`name` and `cniVersion` injected), pointed at this test's bridge,
/// ranges and directories, without enforcement.
fn shipped_entry(node: &Node) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf/10-weir.conflist");
    let list: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut e = list["plugins"][0].clone();
    for cap in ["ips", "mac"] {
        assert_eq!(e["capabilities"][cap], json!(true), "the conflist must declare the {cap} capability");
    }
    e["name"] = json!(node.network);
    e["cniVersion"] = list["cniVersion"].clone();
    e["bridge"] = json!(node.bridge);
    e["ipMasq"] = json!(false);
    e["ipam"]["ranges"] = json!([[{ "subnet": "10.81.1.0/24" }], [{ "subnet": "fd81:1::/64" }]]);
    e["ipam"]["dataDir"] = json!(node.data_dir());
    e["policy"] =
        json!({ "enforce": false, "runDir": node.run_dir(), "bpffsRoot": node.tmp.path().join("bpffs-unused") });
    e
}

fn add_with_args(node: &Node, id: &str, pod: &Netns, conf: &Value, args: &str) -> Run {
    let mut call = Call::new("ADD", id, &pod.path(), "eth0");
    call.args = Some(format!("IgnoreUnknown=1;K8S_POD_NAME={id};{args}"));
    node.weir(&call, conf)
}

/// The pod interface's MAC and global addresses, as the kernel has them.
fn pod_link(pod: &Netns) -> (String, Vec<String>) {
    let link = pod.ip(&["-o", "link", "show", "dev", "eth0"]);
    let mac = link.split("link/ether ").nth(1).unwrap().split(' ').next().unwrap().to_string();
    let addrs = pod.ip(&["-o", "addr", "show", "dev", "eth0", "scope", "global"]);
    let addrs = addrs.lines().filter_map(|l| l.split_whitespace().nth(3)).map(str::to_string).collect();
    (mac, addrs)
}

fn result_mac(r: &Value) -> String {
    r["interfaces"].as_array().unwrap().iter().find(|i| i["sandbox"].is_string()).unwrap()["mac"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn root_podman_style_cni_args_ip_and_mac_are_honoured() {
    require_root!();
    let node = Node::new();
    let pod = Netns::new("wp");
    let conf = shipped_entry(&node);
    assert_eq!(conf["cniVersion"], "1.0.0");
    let r = add_with_args(&node, "s1", &pod, &conf, "IP=10.81.1.77;MAC=0a:58:0a:51:01:4d").ok().clone();
    assert_eq!(r["cniVersion"], "1.0.0");
    assert_eq!(result_ip(&r, true).to_string(), "10.81.1.77");
    assert_eq!(result_mac(&r), "0a:58:0a:51:01:4d");
    // The IPv6 set had no request: allocated as usual.
    assert_eq!(result_ip(&r, false).to_string(), "fd81:1::2");
    let (mac, addrs) = pod_link(&pod);
    assert_eq!(mac, "0a:58:0a:51:01:4d");
    assert!(addrs.contains(&"10.81.1.77/24".to_string()) && addrs.contains(&"fd81:1::2/64".to_string()), "{addrs:?}");
    let mut held = node.reserved_by("s1");
    held.sort();
    assert_eq!(held, ["10.81.1.77", "fd81:1::2"]);
    node.del("s1", &pod, &conf).ok();
    node.assert_clean("s1", Some(&pod));
}

#[test]
fn root_the_ips_and_mac_capabilities_are_honoured_over_cni_args() {
    require_root!();
    let node = Node::new();
    let pod = Netns::new("wp");
    let mut conf = shipped_entry(&node);
    // What libcni injects for `capabilities: {ips, mac}`.
    conf["runtimeConfig"] = json!({ "ips": ["10.81.1.90/24", "fd81:1::90/64"], "mac": "0a:58:00:00:00:5a" });
    let r = add_with_args(&node, "s2", &pod, &conf, "MAC=0a:58:00:00:00:01").ok().clone();
    assert_eq!(result_ip(&r, true).to_string(), "10.81.1.90");
    assert_eq!(result_ip(&r, false).to_string(), "fd81:1::90");
    assert_eq!(result_mac(&r), "0a:58:00:00:00:5a", "runtimeConfig.mac wins over CNI_ARGS MAC=");
    assert_eq!(pod_link(&pod).0, "0a:58:00:00:00:5a");
    // CHECK agrees with what ADD reported.
    let mut check = conf.clone();
    check["prevResult"] = r.clone();
    node.weir(&Call::new("CHECK", "s2", &pod.path(), "eth0"), &check).ok();
    node.del("s2", &pod, &conf).ok();
    node.assert_clean("s2", Some(&pod));
}

/// Each bad request fails with a message naming the field, and leaves no
/// veth, no pod interface, no reservation; the pod that holds an address
/// keeps it.
#[test]
fn root_bad_static_requests_name_the_field_and_leave_nothing() {
    require_root!();
    let node = Node::new();
    let (holder, pod) = (Netns::new("wp"), Netns::new("wp"));
    let conf = shipped_entry(&node);
    add_with_args(&node, "h1", &holder, &conf, "IP=10.81.1.50").ok();
    let with_rc = |rc: Value| {
        let mut c = conf.clone();
        c["runtimeConfig"] = rc;
        c
    };
    let cases: Vec<(&str, Value, u64, &str)> = vec![
        ("IP=10.82.0.5", conf.clone(), 107, "CNI_ARGS IP=: 10.82.0.5 is outside every range of ipam.ranges"),
        ("IP=10.81.1.50", conf.clone(), 107, "CNI_ARGS IP=: 10.81.1.50 is already reserved in ipam.ranges[0]"),
        ("IP=10.81.1.1", conf.clone(), 107, "CNI_ARGS IP=: 10.81.1.1 is the gateway of ipam.ranges[0]"),
        ("IP=10.81.1.500", conf.clone(), 4, "CNI_ARGS IP=: \"10.81.1.500\" is not an IP address"),
        ("MAC=01:00:5e:00:00:01", conf.clone(), 4, "CNI_ARGS MAC=: 01:00:5e:00:00:01 is not a unicast MAC"),
        (
            "",
            with_rc(json!({"ips": ["fd81:1::9", "10.81.1.50"]})),
            107,
            "runtimeConfig.ips[1]: 10.81.1.50 is already reserved",
        ),
        ("", with_rc(json!({"mac": "0a:58:00:00"})), 7, "runtimeConfig.mac: \"0a:58:00:00\" is not a MAC address"),
    ];
    for (args, c, code, msg) in cases {
        let r = add_with_args(&node, "b1", &pod, &c, args);
        assert_eq!(r.err_code(), code, "{args} {}: {r:?}", c["runtimeConfig"]);
        assert!(r.msg().starts_with(msg), "{args}: {}", r.msg());
        node.assert_clean("b1", Some(&pod));
        assert!(!pod.has_link("eth0"), "{args}: pod interface left behind");
        let mut held = node.reserved_by("h1");
        held.sort();
        assert_eq!(held, ["10.81.1.50", "fd81:1::2"], "{args}: the holder keeps its addresses");
        // DEL after a failed ADD succeeds, as a runtime sends it.
        node.del("b1", &pod, &c).ok();
    }
    node.del("h1", &holder, &conf).ok();
    node.assert_clean("h1", Some(&holder));
}
