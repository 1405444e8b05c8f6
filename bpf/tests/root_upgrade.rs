//! A newer build takes over running pods: `Dataplane::load_or_upgrade`
//! pins its programs and switches every pinned link to them with
//! BPF_LINK_UPDATE, while long-lived TCP and UDP flows between two pods made
//! by the real `weir` binary keep going. The maps (conntrack included) are
//! the same pins, so no flow notices; the CNI binary's `load_or_open` never
//! swaps programs, so an old and a new binary cannot flip them back and forth.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use weir_bpf::abi::*;
use weir_bpf::{Dataplane, Direction, Hook, PolicyMatch};
use weir_common::registry::EndpointRecord;

/// Echo servers for TCP (every connection, every 4-byte message) and UDP.
fn serve_echo(ns: &str, ip: IpAddr, tcp: u16, udp: u16) {
    let (tx, rx) = std::sync::mpsc::channel();
    in_netns(ns, move || {
        let l = TcpListener::bind((ip, tcp)).unwrap();
        let u = UdpSocket::bind((ip, udp)).unwrap();
        tx.send(()).unwrap();
        std::thread::spawn(move || {
            let mut b = [0u8; 64];
            while let Ok((n, from)) = u.recv_from(&mut b) {
                let _ = u.send_to(&b[..n], from);
            }
        });
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            std::thread::spawn(move || {
                let mut b = [0u8; 4];
                while s.read_exact(&mut b).is_ok() && s.write_all(&b).is_ok() {}
            });
        }
    });
    rx.recv().unwrap();
}

/// One long-lived flow from a pod: echoes counted, the first failure kept.
struct Flow {
    echoed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Option<String>>>,
}

impl Flow {
    fn start(ns: &str, dst: SocketAddr, udp: bool) -> Flow {
        let (echoed, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let (e, s) = (echoed.clone(), stop.clone());
        let thread = in_netns(ns, move || {
            let mut n: u32 = 0;
            let tcp = if udp { None } else { Some(TcpStream::connect_timeout(&dst, Duration::from_secs(2)).ok()?) };
            let u = UdpSocket::bind((IpAddr::from([0, 0, 0, 0]), 0)).unwrap();
            u.connect(dst).unwrap();
            u.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            while !s.load(Ordering::Relaxed) {
                n += 1;
                let msg = n.to_be_bytes();
                let mut back = [0u8; 4];
                let r = match &tcp {
                    Some(t) => {
                        let mut t: &TcpStream = t;
                        t.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                        t.write_all(&msg).and_then(|_| t.read_exact(&mut back))
                    }
                    None => u.send(&msg).and_then(|_| u.recv(&mut back).map(|_| ())),
                };
                if let Err(err) = r {
                    return Some(format!("message {n}: {err}"));
                }
                if back != msg {
                    return Some(format!("message {n}: echoed {back:?}"));
                }
                e.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
            None
        });
        Flow { echoed, stop, thread: Some(thread) }
    }

    /// Wait until `more` further echoes arrived (the flow is alive now).
    fn advance(&self, more: u64, what: &str) {
        let from = self.echoed.load(Ordering::Relaxed);
        for _ in 0..1000 {
            if self.echoed.load(Ordering::Relaxed) >= from + more {
                return;
            }
            if self.thread.as_ref().is_some_and(|t| t.is_finished()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("{what}: the flow stopped after {} echoes", self.echoed.load(Ordering::Relaxed));
    }

    fn finish(mut self) -> (u64, Option<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let failure = self.thread.take().unwrap().join().unwrap();
        (self.echoed.load(Ordering::Relaxed), failure)
    }
}

#[test]
fn root_upgrade_switches_running_pods_to_the_new_programs_without_breaking_flows_tcx() {
    upgrade_switches_running_pods_without_breaking_flows("upx", "tcx", "10.79.0.0/24");
}

/// With tc filters the program is swapped in each filter (cls_bpf replaces
/// it in one RCU update), from the node's netns as weir-policyd runs.
#[test]
fn root_upgrade_switches_running_pods_to_the_new_programs_without_breaking_flows_tc() {
    upgrade_switches_running_pods_without_breaking_flows("upt", "tc", "10.79.1.0/24");
}

/// Both pods isolated both ways, as weir-policyd programs them (identities
/// 300 and 301); pod 0 may reach pod 1 on TCP 8080 and UDP 8081.
fn isolate_both_allow_echo(dp: &Dataplane, r0: &EndpointRecord, r1: &EndpointRecord) {
    program_like_policyd(dp, r0, 300, EP_READY | EP_EGRESS_ISOLATED | EP_INGRESS_ISOLATED);
    program_like_policyd(dp, r1, 301, EP_READY | EP_EGRESS_ISOLATED | EP_INGRESS_ISOLATED);
    for (n, (proto, port)) in [(6u8, 8080u16), (17, 8081)].into_iter().enumerate() {
        let rule = |endpoint, identity, direction| {
            PolicyMatch::cover(endpoint, identity, direction, Some(proto), Some(port..=port))
        };
        dp.allow(&rule(r0.host_ifindex, 301, Direction::Egress), 1 + n as u32).unwrap();
        dp.allow(&rule(r1.host_ifindex, 300, Direction::Ingress), 3 + n as u32).unwrap();
    }
}

fn upgrade_switches_running_pods_without_breaking_flows(tag: &str, attach: &str, subnet: &str) {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let c = CniPods::add_attached(tag, 2, subnet, attach);
    let node_ns = format!("/run/netns/{}", c.node);
    // what weir-policyd does at start, in the node's netns
    let upgrade_as = |build: &'static str| {
        let root = c.guard.root.clone();
        netns::run_in(&node_ns, move || match build {
            "" => Dataplane::load_or_upgrade(&root).map(|(_, u)| u).unwrap(),
            b => Dataplane::load_or_upgrade_as(&root, b).map(|(_, u)| u).unwrap(),
        })
    };
    let g = &c.guard;
    let (r0, r1) = (c.record(0), c.record(1));
    let ip1 = *r1.ips.iter().find(|a| a.is_ipv4()).unwrap();
    let dp = Dataplane::open(&g.root).unwrap();
    isolate_both_allow_echo(&dp, &r0, &r1);
    let (p0, p1) = (c.netns(0), c.netns(1));
    serve_echo(&p1, ip1, 8080, 8081);
    let tcp = Flow::start(&p0, SocketAddr::new(ip1, 8080), false);
    let udp = Flow::start(&p0, SocketAddr::new(ip1, 8081), true);
    tcp.advance(20, "TCP before the upgrade");
    udp.advance(20, "UDP before the upgrade");

    let ifindexes = [r0.host_ifindex, r1.host_ifindex];
    // asked in the node's netns, where a tc filter lives
    let running = || -> Vec<u32> {
        let root = g.root.clone();
        netns::run_in(&node_ns, move || {
            let dp = Dataplane::open(&root).unwrap();
            ifindexes
                .iter()
                .flat_map(|&i| Hook::POD.map(|h| dp.attached_program_id(i, h).unwrap().expect("attached")))
                .collect()
        })
    };
    let before = running();
    assert_eq!(before, ifindexes.iter().flat_map(|_| Hook::POD.map(|h| dp.program_id(h).unwrap())).collect::<Vec<_>>());

    // The same build again changes nothing.
    let same = upgrade_as("");
    assert!(!same.replaced, "{same:?}");
    assert_eq!(running(), before);

    // The next build: new programs, every link switched, under traffic.
    let up = upgrade_as("next-build");
    let dp2 = Dataplane::open(&g.root).unwrap();
    assert!(up.replaced, "{up:?}");
    assert_eq!(up.links_updated, 4, "{up:?}");
    assert!(g.root.join("build-next-build").is_dir());
    assert!(!g.root.join(format!("build-{}", weir_bpf::build_id())).exists(), "the old build's marker stays behind");
    let after = running();
    let new_ids: Vec<u32> = ifindexes.iter().flat_map(|_| Hook::POD.map(|h| dp2.program_id(h).unwrap())).collect();
    assert_eq!(after, new_ids, "every link runs the newly pinned programs");
    assert!(after.iter().all(|a| !before.contains(a)), "old {before:?}, now {after:?}");

    // A CNI binary of the older build opens the root: it keeps the new programs.
    let _ = Dataplane::load_or_open(&g.root).unwrap();
    assert_eq!(running(), new_ids);

    // weir-policyd asking for another event ring: a new ring, new programs
    // using it on every link, under traffic; the CNI binary keeps it too.
    assert_eq!(Dataplane::events_bytes(&g.root).unwrap(), Some(EVENTS_BYTES));
    let resized = {
        let root = g.root.clone();
        let opts = weir_bpf::LoadOptions::with_events_bytes(1 << 16).unwrap();
        netns::run_in(&node_ns, move || Dataplane::load_or_upgrade_with(&root, opts).unwrap().1)
    };
    assert_eq!(resized.events_resized, Some((EVENTS_BYTES, 1 << 16)), "{resized:?}");
    assert_eq!(resized.links_updated, 4, "{resized:?}");
    assert_eq!(Dataplane::events_bytes(&g.root).unwrap(), Some(1 << 16));
    let _ = Dataplane::load_or_open(&g.root).unwrap();
    assert_eq!(Dataplane::events_bytes(&g.root).unwrap(), Some(1 << 16), "the CNI binary's default does not undo it");
    let dp3 = Dataplane::open(&g.root).unwrap();
    let new_ids: Vec<u32> = ifindexes.iter().flat_map(|_| Hook::POD.map(|h| dp3.program_id(h).unwrap())).collect();
    assert_eq!(running(), new_ids, "every link runs the programs of the new ring");
    for bad in [0u64, 4095, 3 << 12, 1 << 31] {
        let e = weir_bpf::LoadOptions::with_events_bytes(bad).unwrap_err().to_string();
        assert!(e.contains("power of two"), "{bad}: {e}");
    }

    tcp.advance(20, "TCP after the upgrade");
    udp.advance(20, "UDP after the upgrade");
    for (what, f) in [("TCP", tcp), ("UDP", udp)] {
        let (echoed, failure) = f.finish();
        assert_eq!(failure, None, "the {what} flow broke across the upgrade ({echoed} echoes before)");
        eprintln!("{what}: {echoed} messages echoed across the upgrade, none lost");
    }
    // Policy still holds on the new programs: pod 1 may not open to pod 0.
    let ip0 = *r0.ips.iter().find(|a| a.is_ipv4()).unwrap();
    let mut events = dp3.events().unwrap();
    events.drain();
    serve_tcp(&p0, ip0, 9090);
    assert!(!tcp_ok(&p1, SocketAddr::new(ip0, 9090)), "the new programs still enforce");
    assert!(
        events.drain().iter().any(|e| e.reason == R_DROP_POLICY && u16::from_be(e.dport) == 9090),
        "the drop is an event in the new ring"
    );
}

/// Maps added beside the others need no ABI bump: pins of an older build of
/// this ABI that lack them (here: removed, as that build never made them)
/// get them when this build takes over, the other pins stay the same
/// maps, and the new programs link a Service flow through them. The links
/// are forgotten whenever another build's programs take over.
#[test]
fn root_upgrade_adds_the_maps_an_older_build_lacked() {
    if !weir_testsupport::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    private_netns();
    let root = TestRoot::new("addmaps");
    let dp = root.load();
    let ct_id = |p: &std::path::Path| std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap();
    let ct_before = ct_id(&root.path.join(MAP_CT));
    for m in [MAP_SERVICE_OPENS, MAP_SERVICE_BACKENDS] {
        std::fs::remove_file(root.path.join(m)).unwrap();
    }
    drop(dp);
    assert_eq!(Dataplane::open(&root.path).unwrap().service_backends().unwrap(), vec![], "absent: nothing linked");
    let (dp, up) = Dataplane::load_or_upgrade_as(&root.path, "next-build").unwrap();
    assert!(up.replaced);
    for m in [MAP_SERVICE_OPENS, MAP_SERVICE_BACKENDS] {
        assert!(root.path.join(m).exists(), "{m} pinned by the upgrade");
    }
    assert_eq!(ct_id(&root.path.join(MAP_CT)), ct_before, "conntrack is the same pin");
    // the new programs use them: a Service flow's first packet links
    let a = dummy("wa");
    let uplink = dummy("wu");
    let cache = |net: &str, identity, endpoint, flags| {
        dp.set_ipcache(net.parse().unwrap(), &IpcacheValue { identity, endpoint, flags, pad: 0 }).unwrap();
    };
    cache("10.0.0.10/32", 300, a, 0);
    cache("10.96.0.0/12", ID_WORLD, 0, IPCACHE_SERVICE);
    let addrs = ["10.0.0.10/24".parse().unwrap()];
    let ep = Endpoint::for_pod(pkt::test_mac(a), &addrs, 0).unwrap();
    dp.set_endpoint(a, &Endpoint { identity: 300, flags: EP_READY, revision: 1, ..ep }).unwrap();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let to_vip = pkt::tcp(ip("10.0.0.10"), 3000, ip("10.96.0.10"), 80, pkt::SYN);
    assert_eq!(
        dp.run(Hook::FromPod, &pkt::as_seen_at(Hook::FromPod, pkt::test_mac(a), &to_vip), a).unwrap(),
        weir_bpf::TC_PASS
    );
    let leaving = pkt::tcp(ip("10.0.0.10"), 3000, ip("10.1.0.5"), 8080, pkt::SYN);
    assert_ne!(dp.run(Hook::LeaveNode, &leaving, uplink).unwrap(), weir_bpf::TC_DROP);
    let links = dp.service_backends().unwrap();
    assert_eq!(links.len(), 1, "{links:?}");
    assert_eq!((links[0].0.dst(), links[0].1.addr()), (ip("10.96.0.10"), ip("10.1.0.5")));
    // the next build's programs start without links: an older build's
    // programs in between would have kept them without keeping them true
    let (dp, _) = Dataplane::load_or_upgrade_as(&root.path, "third-build").unwrap();
    assert_eq!(dp.service_backends().unwrap(), vec![], "links forgotten when programs are replaced");
}

/// Stamp the pins under `root` as written by map ABI `v`, as an older
/// build's loader would have left them.
fn stamp_abi(root: &std::path::Path, v: u32) {
    let path = root.join(MAP_ABI);
    let m = aya::maps::Map::from_map_data(aya::maps::MapData::from_pin(&path).unwrap()).unwrap();
    let mut a: aya::maps::Array<aya::maps::MapData, u32> = aya::maps::Array::try_from(m).unwrap();
    a.set(0, v, 0).unwrap();
}

/// A map ABI change, make-before-break. Pins an ABI 6 build left (this
/// build's maps, stamped 6, with a rule for every peer written under
/// `ID_ANY` alone, as 6 wrote it) carry two pods' long-lived TCP and UDP
/// flows. The CNI binary of this build refuses them, saying who carries
/// them over; weir-policyd's load does, under traffic: a new set of maps
/// holding the old state, every link switched to the new programs, the new
/// set under the old names, the rule for every peer also under
/// `ID_ANY_POD`. No flow breaks, policy still holds, and pins of an ABI it
/// cannot carry are refused untouched.
#[test]
fn root_upgrade_carries_pins_of_an_older_map_abi_under_traffic() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let c = CniPods::add_attached("upm", 2, "10.79.2.0/24", "tcx");
    let node_ns = format!("/run/netns/{}", c.node);
    let g = &c.guard;
    let (r0, r1) = (c.record(0), c.record(1));
    let ip1 = *r1.ips.iter().find(|a| a.is_ipv4()).unwrap();
    let dp = Dataplane::open(&g.root).unwrap();
    isolate_both_allow_echo(&dp, &r0, &r1);
    let every_peer = PolicyMatch::cover(r1.host_ifindex, ID_ANY, Direction::Ingress, Some(6), Some(7070..=7070));
    dp.allow(&every_peer, 9).unwrap();
    dp.allow(&PolicyMatch::cover(r0.host_ifindex, 301, Direction::Egress, Some(6), Some(7070..=7070)), 10).unwrap();
    let (p0, p1) = (c.netns(0), c.netns(1));
    serve_echo(&p1, ip1, 8080, 8081);
    let tcp = Flow::start(&p0, SocketAddr::new(ip1, 8080), false);
    let udp = Flow::start(&p0, SocketAddr::new(ip1, 8081), true);
    tcp.advance(20, "TCP before the migration");
    udp.advance(20, "UDP before the migration");

    let set_abi = |v: u32| stamp_abi(&g.root, v);
    // one exchange more, on a socket of its own: its entry sees no packet
    // after this, so only a copy can carry it
    let _ = udp_ok(&p0, SocketAddr::new(ip1, 8081));
    let entries = |dp: &Dataplane| -> Vec<CtKey> {
        dp.ct_entries().unwrap().into_iter().filter(|c| c.dst() == ip1).map(|c| c.key).collect()
    };
    let carried = entries(&dp);
    assert!(carried.len() >= 3, "the two flows and the one exchange: {carried:?}");
    // state in an LPM trie (a prefix, not a full-length key), the
    // configuration and the counters come along too
    let remote: ipnet::IpNet = "10.79.200.0/24".parse().unwrap();
    dp.set_ipcache(remote, &IpcacheValue { identity: 777, endpoint: 0, flags: 0, pad: 0 }).unwrap();
    let cfg = Config { ct_udp_timeout_s: 1234, ..dp.config().unwrap() };
    dp.set_config(&cfg).unwrap();
    let allowed = dp.counter(r1.host_ifindex, DIR_INGRESS, R_ALLOW_POLICY).unwrap().packets;
    assert!(allowed > 0);
    set_abi(6);
    drop(dp);
    let ino = |name: &str| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(g.root.join(name)).unwrap());
    let ct_before = ino(MAP_CT);

    let e = Dataplane::load_or_open(&g.root).err().expect("the CNI binary refuses ABI 6 pins").to_string();
    assert!(e.contains("ABI version 6") && e.contains("weir-policyd of this build carries them over"), "{e}");

    let up = {
        let root = g.root.clone();
        netns::run_in(&node_ns, move || Dataplane::load_or_upgrade(&root).map(|(_, u)| u).unwrap())
    };
    assert_eq!(up.migrated_from, Some(6), "{up:?}");
    assert_eq!(up.links_updated, 4, "{up:?}");
    let dp = Dataplane::open(&g.root).expect("the root is this ABI's now");
    assert_ne!(ino(MAP_CT), ct_before, "conntrack is the new map, under the old name");
    let leftovers: Vec<_> = std::fs::read_dir(&g.root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("migrating-"))
        .collect();
    assert_eq!(leftovers, Vec::<String>::new(), "the staging directory is gone");
    let now = entries(&dp);
    assert!(carried.iter().all(|k| now.contains(k)), "conntrack carried: before {carried:?}, now {now:?}");
    let ipcache = dp.ipcache_entries().unwrap();
    assert!(ipcache.iter().any(|(net, v)| *net == remote && v.identity == 777), "the prefix carried");
    assert_eq!(dp.config().unwrap().ct_udp_timeout_s, 1234, "the configuration carried");
    assert!(dp.counter(r1.host_ifindex, DIR_INGRESS, R_ALLOW_POLICY).unwrap().packets >= allowed, "counters carried");
    let ifindexes = [r0.host_ifindex, r1.host_ifindex];
    let running: Vec<u32> = {
        let root = g.root.clone();
        netns::run_in(&node_ns, move || {
            let dp = Dataplane::open(&root).unwrap();
            ifindexes.iter().flat_map(|&i| Hook::POD.map(|h| dp.attached_program_id(i, h).unwrap().unwrap())).collect()
        })
    };
    let pinned: Vec<u32> = ifindexes.iter().flat_map(|_| Hook::POD.map(|h| dp.program_id(h).unwrap())).collect();
    assert_eq!(running, pinned, "every link runs the new programs");
    let policy = dp.policy_entries().unwrap();
    for identity in [ID_ANY, ID_ANY_POD] {
        assert!(
            policy
                .iter()
                .any(|(m, _)| m.identity == identity && m.endpoint == r1.host_ifindex && m.port == every_peer[0].port),
            "the rule for every peer under identity {identity}"
        );
    }

    tcp.advance(20, "TCP after the migration");
    udp.advance(20, "UDP after the migration");
    for (what, f) in [("TCP", tcp), ("UDP", udp)] {
        let (echoed, failure) = f.finish();
        assert_eq!(failure, None, "the {what} flow broke across the migration ({echoed} echoes before)");
        eprintln!("{what}: {echoed} messages echoed across the migration, none lost");
    }
    serve_tcp(&p1, ip1, 7070);
    assert!(tcp_ok(&p0, SocketAddr::new(ip1, 7070)), "the rule for every peer admits a pod under this ABI");
    let ip0 = *r0.ips.iter().find(|a| a.is_ipv4()).unwrap();
    serve_tcp(&p0, ip0, 9090);
    assert!(!tcp_ok(&p1, SocketAddr::new(ip0, 9090)), "the new programs still enforce");

    // an ABI this build cannot carry: refused, nothing touched
    set_abi(5);
    let ct = ino(MAP_CT);
    let root = g.root.clone();
    let e =
        netns::run_in(&node_ns, move || Dataplane::load_or_upgrade(&root).err()).expect("ABI 5 refused").to_string();
    assert!(e.contains("ABI version 5") && e.contains("carries over pins of ABI [6] only"), "{e}");
    assert_eq!(ino(MAP_CT), ct);
}

/// A migration a crash stopped. Before its commit, the root's pins were
/// never touched: the next start discards the staged set and migrates
/// again. Just after it, the next start gives the staged set the root's
/// names and then loads its programs as any upgrade does. Either way the
/// state is carried.
#[test]
fn root_upgrade_finishes_or_redoes_an_interrupted_migration() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    private_netns();
    let root = TestRoot::new("migcrash");
    let dp = root.load();
    let remote: ipnet::IpNet = "10.79.201.0/24".parse().unwrap();
    dp.set_ipcache(remote, &IpcacheValue { identity: 778, endpoint: 0, flags: 0, pad: 0 }).unwrap();
    drop(dp);
    let staging = root.path.join(format!("migrating-abi-{ABI_VERSION}"));
    let set_abi = |v: u32| stamp_abi(&root.path, v);
    let ino = |name: &str| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(root.path.join(name)).unwrap());
    for commit in [false, true] {
        set_abi(6);
        let ct = ino(MAP_CT);
        Dataplane::stage_migration_as_if_interrupted(&root.path, commit).unwrap();
        assert!(staging.is_dir());
        assert_eq!(ino(MAP_CT), ct, "commit {commit}: the root's own pins are untouched until the renames");
        let e = Dataplane::load_or_open(&root.path).err().expect("the CNI binary neither finishes nor migrates");
        assert!(e.to_string().contains("ABI version 6"), "{e}");
        let (dp, up) = Dataplane::load_or_upgrade_as(&root.path, &format!("build-after-{commit}")).unwrap();
        assert!(!staging.exists(), "commit {commit}: the staged set is gone");
        // before the commit: migrated again; after it: finished, then relinked
        assert_eq!(up.migrated_from, if commit { None } else { Some(6) }, "commit {commit}: {up:?}");
        assert!(up.replaced, "commit {commit}: {up:?}");
        assert_ne!(ino(MAP_CT), ct, "commit {commit}: the new set holds the names");
        let ipcache = dp.ipcache_entries().unwrap();
        assert!(ipcache.iter().any(|(n, v)| *n == remote && v.identity == 778), "commit {commit}: the prefix carried");
    }
}
