//! The cluster as policyd sees it: the objects every source fills and the
//! policy engine reads. Sources differ (Kubernetes API, manifest directory);
//! what they produce is this, with identical semantics.

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use std::collections::BTreeMap;

/// (namespace, name) of a namespaced object.
pub type Key = (String, String);

#[derive(Debug, Clone, Default)]
pub struct Store {
    pub namespaces: BTreeMap<String, Namespace>,
    pub pods: BTreeMap<Key, Pod>,
    pub services: BTreeMap<Key, Service>,
    pub policies: BTreeMap<Key, NetworkPolicy>,
    pub nodes: BTreeMap<String, Node>,
}
