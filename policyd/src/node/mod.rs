//! Between nodes: this node's pod CIDRs handed to the CNI binary, and the
//! backend that carries pod traffic to other nodes (flannel's scheme).
//!
//! - `cidr`: a Node's pod CIDRs and InternalIPs, overlap detection;
//! - `annotations`: what a node publishes about its backend (`weir.io/*`);
//! - `desired`: pure: Nodes -> the routes, neighbour and FDB entries wanted;
//! - `netlink`: the kernel calls (VXLAN device, Weir-marked routes, entries);
//! - `apply`: this node's underlay and device, then diff-and-apply;
//! - `publish`: this node's annotations, to the API or to a file;
//! - `agent`: the daemon's handle: when to run, reporting, publishing.
//!
//! Cheap and independent of the policy engine: the daemon runs it whenever
//! the Nodes in the store change (and at every resync), before compiling.

pub mod agent;
pub mod annotations;
pub mod apply;
pub mod cidr;
pub mod desired;
pub mod netlink;
pub mod publish;

pub use agent::NodeAgent;
pub use apply::{NodeNetworking, Outcome};

/// How pod traffic reaches other nodes (`--backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// Nothing between nodes is programmed (one node, or another component
    /// routes pod CIDRs). This node's pod CIDRs are still handed to the CNI.
    None,
    /// A route per remote pod CIDR via that node's InternalIP: every node
    /// in one L2 segment, no encapsulation.
    HostGw,
    /// One VXLAN device (`weir.<VNI>`), flannel-compatible by default.
    Vxlan,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::None => "none",
            Backend::HostGw => "host-gw",
            Backend::Vxlan => "vxlan",
        }
    }
}

/// Node-networking settings (policyd's `--backend`, `--vxlan-*`,
/// `--underlay-iface`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub backend: Backend,
    pub vxlan_vni: u32,
    pub vxlan_port: u16,
    /// The interface carrying traffic between nodes; `None`: the one
    /// holding this node's InternalIP.
    pub underlay_iface: Option<String>,
}

impl Default for Config {
    fn default() -> Config {
        Config { backend: Backend::None, vxlan_vni: 1, vxlan_port: 8472, underlay_iface: None }
    }
}

impl Config {
    /// The VXLAN device's name: `weir.<VNI>`, like flannel's `flannel.1`.
    pub fn vxlan_device(&self) -> String {
        format!("weir.{}", self.vxlan_vni)
    }

    /// The VNI a device of that name would have, were it Weir's (uninstall
    /// checks the device's real VNI against it).
    pub fn vni_of_device(name: &str) -> Option<u32> {
        let vni: u32 = name.strip_prefix("weir.")?.parse().ok()?;
        let cfg = Config { vxlan_vni: vni, ..Config::default() };
        (cfg.vxlan_device() == name && (1..1 << 24).contains(&vni)).then_some(vni)
    }
}

#[cfg(test)]
mod tests {
    use super::Config;

    #[test]
    fn only_weirs_device_names_have_a_vni() {
        assert_eq!(Config::vni_of_device("weir.1"), Some(1));
        assert_eq!(Config::vni_of_device("weir.16777215"), Some(16_777_215));
        for other in ["flannel.1", "weir.", "weir.0", "weir.01", "weir.16777216", "weir.1x", "weir0", "xweir.1"] {
            assert_eq!(Config::vni_of_device(other), None, "{other}");
        }
    }
}
