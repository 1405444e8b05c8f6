//! Verdict-level conformance: the same case files as the lab runner, judged
//! without sockets, network namespaces per pod or a running policyd.
//!
//! Per case: a fresh dataplane under its own bpffs root
//! (`/sys/fs/bpf/weir-verdict-<pid>-<n>`, removed on drop), a `Store` built
//! from the model manifests (test/conformance/model) and the case's steps,
//! pods with fake addresses and fake host ifindexes (each a real veth end in
//! the runner thread's private network namespace: BPF_PROG_TEST_RUN
//! resolves the ifindex it is given, but nothing is ever sent over them),
//! the real `Engine` compiling and the real `Sync` writing the maps. Pods
//! are added as CNI ADD adds them (endpoint entry not READY, gateways as
//! HOST in the ipcache) and every sync must flip them READY, as CNI ADD
//! waits for.
//!
//! A probe cell (src -> dst, loopback excluded as in the lab) is four
//! program runs through BPF_PROG_TEST_RUN, with conntrack flushed before
//! each cell so no earlier cell's flow can let one pass:
//!
//! 1. `from_pod` on the source's ifindex: the packet as the pod sends it
//!    (to the Service VIP and Service port, or to the pod address);
//! 2. `to_pod` on the destination's ifindex: the same packet after
//!    kube-proxy's DNAT (destination pod address, targetPort);
//! 3. `from_pod` on the destination: its answer (TCP SYN-ACK, UDP
//!    datagram, SCTP INIT ACK) before the un-DNAT;
//! 4. `to_pod` on the source: that answer from the VIP after the un-DNAT.
//!
//! The cell is connected when all four pass, which is what a lab probe
//! needs too (a connect completes, a UDP request gets its answer). The
//! engine's explanation of every cell (what policyd's `/v1/explain`
//! answers) must give the same verdict, by rule and by map entry. Requests
//! are TCP SYN, a UDP datagram, or an SCTP INIT (CRC32c set).
//!
//! Addresses mirror the lab's single node: every pod in one IPv4 /24 and
//! one IPv6 /64 (cases rely on it: `{{cidr x/b 24}}` covers every pod),
//! each pod creation taking the next address as host-local does, so a
//! recreated pod gets a new one.

//! The modules, by job: [`addresses`] hands out what CNI ADD and the
//! Service allocator would, [`kernel`] holds the dataplane and fake devices
//! a case runs on, [`cell`] plans the four program runs of one cell,
//! [`cluster`] is one case's cluster (store, engine, sync, pods, Services)
//! and [`suite`] drives cases and reports.

pub mod addresses;
pub mod cell;
pub mod cluster;
pub mod kernel;
pub mod suite;

pub use crate::report::{CaseResult, Report, Status};
pub use addresses::{Addresses, PodAddr, FIRST_IFINDEX, GATEWAY4, GATEWAY6, MAX_PODS};
pub use cell::{plan_cell, Stage, Target};
pub use cluster::Cluster;
pub use kernel::{enter_private_netns, BpfRoot, Devices};
pub use suite::{ignore_policies, run_case, run_suite, SKIPPED};
