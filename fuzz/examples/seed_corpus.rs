//! Writes the seed inputs every target's corpus started from (fuzz/corpus/),
//! so the fuzzers begin past the parsers: valid configs, manifests and
//! frames. The committed corpus is what fuzzing grew from
//! them, minimized with `cargo fuzz cmin`.
//!
//!     cargo +nightly run --manifest-path fuzz/Cargo.toml --example seed_corpus

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use weir_bpf::pkt::{self, Ip, ACK, FIN, RST, SYN};

fn main() {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let repo = fuzz.parent().unwrap().to_path_buf();
    let out = fuzz.join("corpus");
    cni_config(&repo, &out.join("cni_config"));
    policy_compile(&repo, &out.join("policy_compile"));
    packet_verdict(&out.join("packet_verdict"));
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn cni_config(repo: &Path, dir: &Path) {
    write(
        dir,
        "conflist",
        &std::fs::read(repo.join("conf/10-weir.conflist")).unwrap(),
    );
    let configs = [
        ("legacy-subnet", r#"{"cniVersion":"0.4.0","name":"n","type":"weir","ipam":{"subnet":"10.9.0.0/16","rangeStart":"10.9.0.10","rangeEnd":"10.9.0.20","gateway":"10.9.0.1","routes":[{"dst":"0.0.0.0/0"}]}}"#),
        ("dual-stack", r#"{"cniVersion":"1.0.0","name":"n","type":"weir","bridge":"br-weir","mtu":9000,"ipam":{"type":"host-local","ranges":[[{"subnet":"10.1.0.0/24"},{"subnet":"10.2.0.0/24"}],[{"subnet":"fd00::/120"}]],"routes":[{"dst":"::/0","gw":"fd00::1"}],"dataDir":"/tmp/x"}}"#),
        ("delegated", r#"{"cniVersion":"0.3.1","name":"n","type":"weir","ipam":{"type":"static"},"policy":{"enforce":true,"whileNotReady":"allow","onReadyTimeout":"continue","readyTimeoutMs":5}}"#),
        ("prev-result", r#"{"cniVersion":"1.1.0","name":"n","type":"weir","ipam":{"ranges":[[{"subnet":"10.1.0.0/24"}]]},"prevResult":{"cniVersion":"1.1.0","interfaces":[{"name":"cni0","mac":"02:00:00:00:00:01","mtu":1500},{"name":"eth0","mac":"02:00:00:00:00:03","sandbox":"/run/netns/p"}],"ips":[{"address":"10.1.0.2/24","gateway":"10.1.0.1","interface":1},{"address":"fd00::2/64","interface":1}],"routes":[{"dst":"0.0.0.0/0","gw":"10.1.0.1"}],"dns":{"nameservers":["10.96.0.10"]}}}"#),
        ("old-result", r#"{"cniVersion":"0.3.0","interfaces":[{"name":"eth0"}],"ips":[{"version":"4","address":"10.0.0.5/16","interface":0}]}"#),
        ("cni-args", "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_UID=1234;K8S_POD_INFRA_CONTAINER_ID=abc"),
        ("env", "CNI_CONTAINERID=abc123\nCNI_NETNS=/run/netns/p\nCNI_IFNAME=eth0\nCNI_ARGS=K8S_POD_NAME=p\nCNI_PATH=/opt/cni/bin:/usr/lib/cni\n"),
    ];
    for (name, text) in configs {
        write(dir, name, text.as_bytes());
    }
}

fn policy_compile(repo: &Path, dir: &Path) {
    // Manifest mode (first byte 0): the example cluster and its policies.
    let mut all = std::fs::read_to_string(repo.join("conf/examples/netpol-model.yaml")).unwrap();
    let mut names: Vec<PathBuf> = std::fs::read_dir(repo.join("conf/examples/policies"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for p in &names {
        all.push_str("\n---\n");
        all.push_str(&std::fs::read_to_string(p).unwrap());
    }
    write(
        dir,
        "manifest-model",
        &[&[0u8][..], all.as_bytes()].concat(),
    );
    // Structured mode: a few fixed pseudo-random byte strings.
    let mut x: u64 = 0x5eed;
    for n in [64usize, 256, 1024] {
        let bytes: Vec<u8> = std::iter::once(1u8)
            .chain((0..n).map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            }))
            .collect();
        write(dir, &format!("cluster-{n}"), &bytes);
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn packet_verdict(dir: &Path) {
    // The node of src/packet.rs: e 10.0.0.10, a .20, d .30, n .40, the
    // node .1, a remote pod 10.1.0.5, a VIP 10.96.0.10, ipBlock members.
    let v4 = [
        ("a-e", "10.0.0.20", "10.0.0.10"),
        ("r-e", "10.1.0.5", "10.0.0.10"),
        ("w-e", "8.8.8.8", "10.0.0.10"),
        ("b-e", "192.168.0.5", "10.0.0.10"),
        ("hole-e", "192.168.1.5", "10.0.0.10"),
        ("host-e", "10.0.0.1", "10.0.0.10"),
        ("e-r", "10.0.0.10", "10.1.0.5"),
        ("e-a", "10.0.0.10", "10.0.0.20"),
        ("e-vip", "10.0.0.10", "10.96.0.10"),
        ("e-b", "10.0.0.10", "172.16.0.5"),
        ("a-w", "10.0.0.20", "8.8.8.8"),
        ("d-e", "10.0.0.30", "10.0.0.10"),
    ];
    let v6 = [
        ("a-e6", "fd00::20", "fd00::10"),
        ("r-e6", "fd01::5", "fd00::10"),
        ("b-e6", "2001:db8::5", "fd00::10"),
        ("hole-e6", "2001:db8:1::5", "fd00::10"),
        ("e-r6", "fd00::10", "fd01::5"),
        ("e-vip6", "fd00::10", "fd96::10"),
        // IPv4-mapped: the maps key IPv4 this way.
        ("mapped-a-e6", "::ffff:10.0.0.20", "fd00::10"),
    ];
    for (name, s, d) in v4.iter().chain(v6.iter()) {
        let (s, d) = (ip(s), ip(d));
        write(
            dir,
            &format!("{name}-tcp80"),
            &pkt::tcp(s, 40000, d, 80, SYN),
        );
        write(
            dir,
            &format!("{name}-tcp443"),
            &pkt::tcp(s, 40001, d, 443, SYN | ACK),
        );
        write(dir, &format!("{name}-udp53"), &pkt::udp(s, 5353, d, 53));
        write(
            dir,
            &format!("{name}-sctp"),
            &pkt::sctp_init(s, 1500, d, 1500, 7),
        );
        write(dir, &format!("{name}-echo"), &pkt::echo(s, d, false, 9));
    }
    let (a, e) = (ip("10.0.0.20"), ip("10.0.0.10"));
    let (a6, e6) = (ip("fd00::20"), ip("fd00::10"));
    write(dir, "fin", &pkt::tcp(a, 1, e, 80, FIN | ACK));
    write(dir, "rst", &pkt::tcp(a, 1, e, 80, RST));
    write(dir, "arp", &pkt::arp());
    write(
        dir,
        "v4-options",
        &pkt::frame(
            a,
            e,
            6,
            &pkt::tcp_hdr(1, 80, SYN),
            &Ip {
                v4_options: vec![1, 1, 1, 0],
                ..Ip::default()
            },
        ),
    );
    write(
        dir,
        "v4-first-fragment",
        &pkt::frame(
            a,
            e,
            17,
            &pkt::udp_hdr(1, 53),
            &Ip {
                frag: Some((0, true)),
                ..Ip::default()
            },
        ),
    );
    write(
        dir,
        "v4-later-fragment",
        &pkt::frame(
            a,
            e,
            17,
            &[0; 16],
            &Ip {
                frag: Some((8, false)),
                ..Ip::default()
            },
        ),
    );
    write(
        dir,
        "v6-ext",
        &pkt::frame(
            a6,
            e6,
            6,
            &pkt::tcp_hdr(1, 80, SYN),
            &Ip {
                v6_ext: vec![(0, 8), (60, 16), (51, 16)],
                ..Ip::default()
            },
        ),
    );
    write(
        dir,
        "v6-later-fragment",
        &pkt::frame(
            a6,
            e6,
            17,
            &[0; 16],
            &Ip {
                frag: Some((3, false)),
                ..Ip::default()
            },
        ),
    );
    write(
        dir,
        "v6-first-fragment",
        &pkt::frame(
            a6,
            e6,
            6,
            &pkt::tcp_hdr(1, 80, SYN),
            &Ip {
                frag: Some((0, true)),
                ..Ip::default()
            },
        ),
    );
    write(
        dir,
        "proto-253",
        &pkt::frame(ip("10.1.0.5"), e, 253, &[0; 8], &Ip::default()),
    );
    let mut ns = pkt::icmp_hdr(135, 0);
    ns.extend_from_slice(&[0; 16]);
    write(
        dir,
        "nd-solicit",
        &pkt::frame(a6, e6, 58, &ns, &Ip::default()),
    );
    // An ICMP error from the world quoting e's packet to it.
    let quoted = pkt::udp(e, 5353, ip("8.8.8.8"), 53);
    let mut err = pkt::icmp_hdr(3, 0);
    err.extend_from_slice(&quoted[14..]);
    write(
        dir,
        "icmp-unreachable",
        &pkt::frame(ip("8.8.8.8"), e, 1, &err, &Ip::default()),
    );
    let mut vlan = pkt::tcp(a, 1, e, 80, SYN);
    vlan.splice(12..12, [0x81, 0x00, 0x00, 0x01]);
    write(dir, "vlan", &vlan);
}
