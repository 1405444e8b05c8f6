//! `weirctl lab`: a one-node cluster made of network namespaces. The node is
//! a netns holding the bridge, every pod a netns plugged in by the real `weir`
//! CNI binary, Services are kube-proxy-style DNAT rules, and a directory of
//! manifests stands in for the API server (weir-policyd watches it).

pub mod cni;
pub mod demo;
pub mod naming;
pub mod objects;
pub mod ops;
pub mod probe;
pub mod serve;
pub mod services;
pub mod state;
pub mod sys;
