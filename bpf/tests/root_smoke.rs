mod common;
use common::*;
use weir_bpf::{abi, Dataplane, Hook};

#[test]
fn root_load_attach_detach_survive() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    private_netns();
    let root = TestRoot::new("smoke");
    let dp = root.load();
    let idx = dummy("wsmoke0");
    assert!(!dp.is_attached(idx).unwrap());
    dp.attach(idx).unwrap();
    assert!(dp.is_attached(idx).unwrap());
    dp.attach(idx).unwrap(); // idempotent
    let ep = abi::Endpoint { identity: 300, flags: abi::EP_READY, revision: 7 };
    dp.set_endpoint(idx, &ep).unwrap();
    drop(dp);
    // a second, independent handle sees the same state
    let dp2 = Dataplane::open(&root.path).unwrap();
    assert!(dp2.is_attached(idx).unwrap());
    assert_eq!(dp2.endpoint(idx).unwrap(), Some(ep));
    let r = dp2.run(Hook::FromPod, &pkt::arp(), idx).unwrap();
    assert_eq!(r, weir_bpf::TC_PASS);
    dp2.detach(idx).unwrap();
    assert!(!dp2.is_attached(idx).unwrap());
    dp2.detach(idx).unwrap();
}
