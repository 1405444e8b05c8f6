//! The four program runs of one probe cell (see the module documentation
//! of `verdicts`): `weir_bpf::flow`, with the lab's protocols and the MAC
//! every test pod gets from its ifindex.

use std::net::IpAddr;

pub use weir_bpf::flow::{Stage, Target};
use weir_bpf::pkt;

use crate::case::Protocol;

/// The protocol number of a case's protocol.
pub fn protocol_number(p: Protocol) -> u8 {
    match p {
        Protocol::TCP => pkt::TCP,
        Protocol::UDP => pkt::UDP,
        Protocol::SCTP => pkt::SCTP,
    }
}

/// The four runs of a cell; each pod has the MAC `pkt::test_mac` gives its
/// ifindex (as the runner's CNI ADD sets it).
pub fn plan_cell(protocol: Protocol, src: (u32, IpAddr), dst_ifindex: u32, target: Target, sport: u16) -> Vec<Stage> {
    weir_bpf::flow::plan_cell(protocol_number(protocol), src, dst_ifindex, target, sport, pkt::test_mac)
}
