//! What the flow log costs the dataplane: the in-kernel time of a policy
//! drop at `to_pod` (BPF_PROG_TEST_RUN) with its event written to the ring
//! and read by a reader thread, against the same drop with events off
//! (`CFG_EVENTS_OFF`, `weir-policyd --no-flow-log`), both paced at a rate
//! of drops per second, with the per-CPU event budget policyd sets by
//! default. Also checks that every event is read, counted as lost (ring
//! full) or counted as over the budget.
//!
//!   cargo build --release -p weir-bpf --example flow_log_cost
//!   sudo target/release/examples/flow_log_cost [--rate 100000] [--seconds 2] [--rounds 5] [--budget 300]
//!
//! Runs in a network namespace of its own (on its loopback device) with a
//! bpffs root of its own under /sys/fs/bpf, both gone when it exits.
//! Prints one `round MODE ns_per_drop` line per round and mode, then
//! `summary` lines: the median of the rounds' medians per mode, their
//! ratio, and the events sent, read and lost with the flow log on.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_bpf::abi::{self, Config, Endpoint, IpcacheValue};
use weir_bpf::{pkt, Dataplane, Hook};

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name}: not a number: {v}")))
        .unwrap_or(default)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Removes the bpffs root on drop (the pins, and with them the maps).
struct Root(std::path::PathBuf);

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rate = arg(&args, "--rate", 100_000);
    let seconds = arg(&args, "--seconds", 2);
    let rounds = arg(&args, "--rounds", 5);
    // Events each CPU may emit per window (policyd sets --flow-log-rate plus
    // --flow-log-burst, 300 by default); 0: no budget, every drop an event.
    let budget = arg(&args, "--budget", 300) as u32;
    // Drops per test run, one run per tick: 1,000 per 10 ms at 100k/s.
    const BATCH: u64 = 1000;
    let tick = Duration::from_secs_f64(BATCH as f64 / rate as f64);

    weir_testsupport::netns::enter_private().expect("unshare(CLONE_NEWNET): run as root");
    let root = Root(format!("/sys/fs/bpf/weir-flow-log-cost-{}", std::process::id()).into());
    let dp = Dataplane::load_or_open(&root.0).expect("loading the programs");
    const LO: u32 = 1;
    let src: IpAddr = "10.1.0.5".parse().unwrap();
    let dst: IpAddr = "10.0.0.20".parse().unwrap();
    dp.set_ipcache("10.1.0.0/24".parse().unwrap(), &IpcacheValue { identity: 400, endpoint: 0, flags: 0, pad: 0 })
        .unwrap();
    let pod = Endpoint::for_pod(pkt::test_mac(LO), &["10.0.0.20/24".parse().unwrap()], 0).unwrap();
    // Isolated for ingress with no rule: every packet is a policy drop.
    let flags = abi::EP_READY | abi::EP_INGRESS_ISOLATED;
    dp.set_endpoint(LO, &Endpoint { identity: 300, flags, revision: 1, ..pod }).unwrap();
    let frame = pkt::as_seen_at(Hook::ToPod, pkt::test_mac(LO), &pkt::udp(src, 40000, dst, 53));

    // The reader: drains the ring as policyd's thread does (which also
    // names and writes each record; that is user space's cost, not the
    // dataplane's).
    let read = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut events = dp.events().unwrap();
    let reader = {
        let (read, stop) = (read.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                read.fetch_add(events.drain().len() as u64, Ordering::Relaxed);
                std::thread::sleep(Duration::from_micros(500));
            }
            read.fetch_add(events.drain().len() as u64, Ordering::Relaxed);
        })
    };

    let lost = || dp.counter(LO, abi::DIR_INGRESS, abi::COUNT_EVENT_LOST).unwrap().packets;
    let limited = || dp.events_limited().unwrap();
    let mut per_mode: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let (mut sent_on, lost_before, limited_before) = (0u64, lost(), limited());
    for round in 0..rounds {
        // Alternate which mode runs first: the first of a pair tends to
        // measure slower.
        let order = if round % 2 == 0 { [false, true] } else { [true, false] };
        for on in order {
            let cfg_flags = if on { 0 } else { abi::CFG_EVENTS_OFF };
            dp.set_config(&Config { flags: cfg_flags, events_per_s: budget, ..Default::default() }).unwrap();
            let mut batch_ns = Vec::new();
            let start = Instant::now();
            let mut next = start;
            while start.elapsed() < Duration::from_secs(seconds) {
                let (ret, d) = dp.run_repeat(Hook::ToPod, &frame, LO, BATCH as u32).unwrap();
                assert_eq!(ret, weir_bpf::TC_DROP, "the frame must be a policy drop");
                batch_ns.push(d.as_nanos() as f64);
                if on {
                    sent_on += BATCH;
                }
                next += tick;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            let achieved = batch_ns.len() as f64 * BATCH as f64 / start.elapsed().as_secs_f64();
            let m = median(&mut batch_ns);
            println!(
                "round {round} {} {m:.1} ns_per_drop ({achieved:.0} drops/s)",
                if on { "flow_log_on" } else { "flow_log_off" }
            );
            per_mode[on as usize].push(m);
        }
    }
    // Let the reader take what is left, then stop it.
    std::thread::sleep(Duration::from_millis(50));
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    let (off, on) = (median(&mut per_mode[0]), median(&mut per_mode[1]));
    let (read, lost, limited) = (read.load(Ordering::Relaxed), lost() - lost_before, limited() - limited_before);
    println!("summary flow_log_off_ns {off:.1}");
    println!("summary flow_log_on_ns {on:.1}");
    println!("summary on_over_off {:.3}", on / off);
    println!(
        "summary events_sent {sent_on} read {read} lost {lost} over_budget {limited} unaccounted {}",
        sent_on as i64 - (read + lost + limited) as i64
    );
}
