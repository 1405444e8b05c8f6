mod common;
use common::*;
use weir_bpf::{abi, tc, AttachMode, Dataplane, Hook};

#[test]
fn root_load_attach_detach_survive_tcx() {
    load_attach_detach_survive(AttachMode::Tcx);
}

#[test]
fn root_load_attach_detach_survive_tc() {
    load_attach_detach_survive(AttachMode::Tc);
}

/// Weir's cls_bpf filters on the device's clsact, both sides.
fn tc_filters(idx: u32) -> Vec<tc::Filter> {
    [tc::Side::Ingress, tc::Side::Egress].into_iter().flat_map(|s| tc::filters(idx, s).unwrap()).collect()
}

fn load_attach_detach_survive(mode: AttachMode) {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    private_netns();
    let root = TestRoot::new("smoke");
    let dp = root.load();
    let idx = dummy("wsmoke0");
    assert!(!dp.is_attached(idx).unwrap());
    dp.attach_as(idx, mode).unwrap();
    assert!(dp.is_attached(idx).unwrap());
    dp.attach_as(idx, mode).unwrap(); // idempotent
    assert_eq!(dp.attached_ifindexes().unwrap(), vec![idx]);
    let ids: Vec<u32> = Hook::POD.iter().map(|&h| dp.program_id(h).unwrap()).collect();
    let attached: Vec<u32> = Hook::POD.iter().map(|&h| dp.attached_program_id(idx, h).unwrap().unwrap()).collect();
    assert_eq!(attached, ids);
    let filters = tc_filters(idx);
    match mode {
        // one filter per side however often it is attached, running the pinned programs
        AttachMode::Tc => assert_eq!(filters.iter().map(|f| f.prog_id).collect::<Vec<_>>(), ids, "{filters:?}"),
        _ => assert!(filters.is_empty(), "{filters:?}"),
    }
    let mac = pkt::test_mac(idx);
    let pod = abi::Endpoint::for_pod(mac, &["10.0.0.5/24".parse().unwrap()], 0).unwrap();
    let ep = abi::Endpoint { identity: 300, flags: abi::EP_READY, revision: 7, ..pod };
    dp.set_endpoint(idx, &ep).unwrap();
    drop(dp);
    // a second, independent handle sees the same state
    let dp2 = Dataplane::open(&root.path).unwrap();
    assert!(dp2.is_attached(idx).unwrap());
    assert_eq!(dp2.endpoint(idx).unwrap(), Some(ep));
    let r = dp2.run(Hook::FromPod, &pkt::garp(mac, "10.0.0.5".parse().unwrap()), idx).unwrap();
    assert_eq!(r, weir_bpf::TC_PASS);
    dp2.detach(idx).unwrap();
    assert!(!dp2.is_attached(idx).unwrap());
    assert!(tc_filters(idx).is_empty(), "no filter left behind");
    assert!(dp2.attached_ifindexes().unwrap().is_empty());
    dp2.detach(idx).unwrap();
}

/// Switching mechanism on a device leaves one attachment per hook: the
/// new one goes in, then the other mode's goes.
#[test]
fn root_attach_in_another_mode_replaces_the_first() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    private_netns();
    let root = TestRoot::new("switch");
    let dp = root.load();
    let idx = dummy("wswitch0");
    dp.attach_as(idx, AttachMode::Tcx).unwrap();
    dp.attach_as(idx, AttachMode::Tc).unwrap();
    assert!(dp.is_attached(idx).unwrap());
    assert_eq!(tc_filters(idx).len(), 2);
    let links = std::fs::read_dir(root.path.join("links")).unwrap().count();
    assert_eq!(links, 2, "the two tc records, no TCX pin");
    dp.attach_as(idx, AttachMode::Tcx).unwrap();
    assert!(dp.is_attached(idx).unwrap());
    assert!(tc_filters(idx).is_empty());
    assert_eq!(std::fs::read_dir(root.path.join("links")).unwrap().count(), 2, "the two TCX pins");
    dp.detach(idx).unwrap();
    assert!(std::fs::read_dir(root.path.join("links")).unwrap().next().is_none());
}

/// A filter someone removed is not attached, though our record says so
/// (CHECK must report it), and the next attach puts it back.
#[test]
fn root_tc_filter_removed_behind_our_back_is_not_attached() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    private_netns();
    let root = TestRoot::new("tcgone");
    let dp = root.load();
    let idx = dummy("wtcgone0");
    dp.attach_as(idx, AttachMode::Tc).unwrap();
    sh(&["tc", "filter", "del", "dev", "wtcgone0", "ingress"]);
    assert!(!dp.is_attached(idx).unwrap());
    dp.attach_as(idx, AttachMode::Tc).unwrap();
    assert!(dp.is_attached(idx).unwrap());
    assert_eq!(tc_filters(idx).len(), 2);
}

#[test]
fn root_concurrent_load_or_open_agree() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let root = TestRoot::new("conc");
    let path = root.path.clone();
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let p = path.clone();
            std::thread::spawn(move || {
                let dp = Dataplane::load_or_open(&p).unwrap();
                dp.set_endpoint(100 + i, &abi::Endpoint { identity: i, ..Default::default() }).unwrap();
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    // one set of maps: every writer's entry is in it
    let dp = Dataplane::open(&path).unwrap();
    assert_eq!(dp.endpoints().unwrap().len(), 4);
}

#[test]
fn root_pins_of_another_abi_version_are_refused() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let root = TestRoot::new("abi");
    drop(root.load());
    let pin = root.path.join(abi::MAP_ABI);
    let data = aya::maps::MapData::from_pin(&pin).unwrap();
    let mut a: aya::maps::Array<aya::maps::MapData, u32> =
        aya::maps::Array::try_from(aya::maps::Map::from_map_data(data).unwrap()).unwrap();
    a.set(0, 999, 0).unwrap();
    for r in [Dataplane::open(&root.path), Dataplane::load_or_open(&root.path)] {
        let msg = r.err().expect("refused").to_string();
        assert!(msg.contains("ABI version 999") && msg.contains(root.path.to_str().unwrap()), "{msg}");
    }
}

#[test]
fn open_names_the_missing_pin_and_the_fix() {
    // not root: only path checks are exercised
    // A root outside bpffs is a wrong setting: it used to be told to mount
    // bpffs over /tmp.
    let err = Dataplane::open(std::path::Path::new("/tmp/not-bpffs-weir")).err().unwrap().to_string();
    assert!(err.contains("/tmp/not-bpffs-weir is not on bpffs") && err.contains("/sys/fs/bpf/weir"), "{err}");
    assert!(!err.contains("mount -t bpf"), "{err}");
    if std::path::Path::new("/sys/fs/bpf").exists() && is_root() {
        let root = TestRoot::new("missing");
        std::fs::create_dir_all(&root.path).unwrap();
        let err = Dataplane::open(&root.path).err().unwrap().to_string();
        assert!(err.contains("weir_abi") && err.contains("load_or_open"), "{err}");
    }
}

/// A handle writes the maps it opened, whatever is pinned under their
/// names later: an ABI migration renames a new set's pins over a root while
/// a CNI binary of the old build may be in the middle of an ADD, and its
/// entries must land in the old maps (which the migration copies again),
/// never in the new ones in the old layout. Every map, including those a
/// pod start does not touch until later (the ipcache here).
#[test]
fn root_a_handle_keeps_the_maps_it_opened_when_pins_are_replaced() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let (old, new) = (TestRoot::new("keep-old"), TestRoot::new("keep-new"));
    drop(old.load());
    drop(new.load());
    let dp = Dataplane::open(&old.path).unwrap();
    for name in [abi::MAP_ENDPOINTS, abi::MAP_IPCACHE_EXACT] {
        std::fs::rename(new.path.join(name), old.path.join(name)).unwrap();
    }
    let ep = abi::Endpoint { identity: 300, ..Default::default() };
    dp.set_endpoint(7, &ep).unwrap();
    let ip: std::net::IpAddr = "10.9.0.7".parse().unwrap();
    let v = abi::IpcacheValue { identity: 300, endpoint: 7, flags: 0, pad: 0 };
    dp.set_ipcache(ipnet::IpNet::from(ip), &v).unwrap();
    assert_eq!(dp.endpoint(7).unwrap(), Some(ep), "the handle reads what it wrote");
    assert_eq!(dp.ipcache_lookup(ip).unwrap().map(|v| v.endpoint), Some(7));
    // The maps now pinned under those names are untouched.
    let now = Dataplane::open(&old.path).unwrap();
    assert_eq!(now.endpoint(7).unwrap(), None);
    assert_eq!(now.ipcache_lookup(ip).unwrap(), None);
}

/// Full-length entries live in the exact-match hashes, shorter prefixes in
/// the tries: lookups, listings and removals must read as one LPM map.
#[test]
fn root_exact_entries_and_prefixes_read_as_one_longest_prefix_map() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let root = TestRoot::new("exact");
    let dp = root.load();
    let v = |identity| abi::IpcacheValue { identity, endpoint: 0, flags: 0, pad: 0 };
    let host: std::net::IpAddr = "10.61.0.7".parse().unwrap();
    dp.set_ipcache("10.61.0.0/16".parse().unwrap(), &v(500)).unwrap();
    dp.set_ipcache(weir_bpf::addr::host_net(host), &v(501)).unwrap();
    assert_eq!(dp.ipcache_lookup(host).unwrap().map(|v| v.identity), Some(501), "the exact entry wins");
    assert_eq!(dp.ipcache_lookup("10.61.9.9".parse().unwrap()).unwrap().map(|v| v.identity), Some(500));
    let listed: Vec<(String, u32)> =
        dp.ipcache_entries().unwrap().into_iter().map(|(n, v)| (n.to_string(), v.identity)).collect();
    assert!(
        listed.contains(&("10.61.0.0/16".into(), 500)) && listed.contains(&("10.61.0.7/32".into(), 501)),
        "{listed:?}"
    );
    dp.remove_ipcache(weir_bpf::addr::host_net(host)).unwrap();
    assert_eq!(dp.ipcache_lookup(host).unwrap().map(|v| v.identity), Some(500), "back to the prefix");

    // policy: a single-port rule (hash) and a range rule (trie) side by side
    let rule = |ports| weir_bpf::PolicyMatch::cover(9, 300, weir_bpf::Direction::Ingress, Some(6), ports);
    dp.allow(&rule(Some(80..=80)), 1).unwrap();
    dp.allow(&rule(Some(1000..=1999)), 2).unwrap();
    let entries = dp.policy_entries().unwrap();
    let full = |m: &weir_bpf::PolicyMatch| m.encode().prefix_len() == abi::POLICY_FULL_BITS;
    assert!(entries.iter().any(|(m, v)| full(m) && v.rule == 1), "{entries:?}");
    assert!(entries.iter().any(|(m, v)| !full(m) && v.rule == 2), "{entries:?}");
    // read back as written: 80 exactly, 1000..=1999 as its aligned blocks
    let mut read: Vec<_> = entries.iter().map(|(m, _)| *m).collect();
    let mut written = [rule(Some(80..=80)), rule(Some(1000..=1999))].concat();
    read.sort();
    written.sort();
    assert_eq!(read, written);
    dp.unallow(&rule(Some(80..=80))).unwrap();
    dp.unallow(&rule(Some(1000..=1999))).unwrap();
    assert!(dp.policy_entries().unwrap().is_empty());
}
