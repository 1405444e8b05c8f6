//! weirctl: Weir's command line. `weirctl lab ...` runs a cluster of network
//! namespaces (one node, or `--nodes N`) on this machine (see docs/lab.md).

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;
use weirctl::get;
use weirctl::lab::{demo, ops, serve, state::Lab};

#[derive(Parser)]
#[command(name = "weirctl", version, about = "Weir's command line")]
struct Cli {
    #[command(subcommand)]
    cmd: Top,
}

#[derive(Subcommand)]
enum Top {
    /// A cluster made of network namespaces, one node or several (needs root).
    Lab {
        #[command(subcommand)]
        cmd: LabCmd,
    },
    /// Why a flow is allowed or blocked: the policies and rules of each
    /// side, and the kernel's own verdict (asks this node's weir-policyd).
    Explain {
        #[command(flatten)]
        flow: FlowArgs,
        /// weir-policyd's run dir (its API socket is <run-dir>/api.sock).
        #[arg(long, default_value = weir_common::paths::DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
    },
    /// This node's endpoints (pods, identity, isolation) or the policies
    /// weir-policyd holds (what they isolate, their problems).
    Get {
        what: NodeWhatArg,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
        /// weir-policyd's run dir (its API socket is <run-dir>/api.sock).
        #[arg(long, default_value = weir_common::paths::DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
    },
    /// The flow log of this node: drops (and allowed new flows of
    /// namespaces annotated weir.io/flow-log: allow), naming the pods and
    /// the deciding policy and rule (asks this node's weir-policyd).
    Flows {
        #[command(flatten)]
        args: FlowsArgs,
        /// weir-policyd's run dir (its API socket is <run-dir>/api.sock).
        #[arg(long, default_value = weir_common::paths::DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum NodeWhatArg {
    Endpoints,
    Policies,
}

/// What `flows` reads and how it prints.
#[derive(clap::Args)]
struct FlowsArgs {
    /// Keep printing new records as they come (until interrupted).
    #[arg(long, short = 'f')]
    follow: bool,
    /// Only flows of this pod (NAMESPACE/POD), at either end.
    #[arg(long)]
    pod: Option<String>,
    #[arg(long, value_enum)]
    verdict: Option<FlowVerdict>,
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: ExplainOutput,
}

#[derive(Clone, Copy, ValueEnum)]
enum FlowVerdict {
    Allow,
    Drop,
    /// Allowed flows an audit-mode policy would drop.
    Audit,
}

impl FlowsArgs {
    fn query(&self) -> weirctl::flows::Query {
        weirctl::flows::Query {
            pod: self.pod.clone(),
            verdict: self.verdict.map(|v| match v {
                FlowVerdict::Allow => "allow".to_string(),
                FlowVerdict::Drop => "drop".to_string(),
                FlowVerdict::Audit => "audit".to_string(),
            }),
        }
    }

    /// Print the recent records, or follow the nodes' new ones.
    fn run(&self, run_dirs: &[PathBuf], recent: impl FnOnce() -> Result<Vec<serde_json::Value>>) -> Result<()> {
        let json = matches!(self.output, ExplainOutput::Json);
        if self.follow {
            return weirctl::flows::follow(run_dirs, &self.query(), |v| weirctl::flows::print(&v, json));
        }
        // JSON: one record per line, as the log file and --follow have them.
        for v in &recent()? {
            weirctl::flows::print(v, json);
        }
        Ok(())
    }
}

/// The flow `explain` is about.
#[derive(clap::Args)]
struct FlowArgs {
    /// The client: NAMESPACE/POD or an IP address.
    #[arg(long)]
    from: String,
    /// The server: NAMESPACE/POD, svc/NAMESPACE/NAME (judged at the backend
    /// its port maps to) or an IP address.
    #[arg(long)]
    to: String,
    /// Destination port (the Service port for svc/...), 1-65535.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
    #[arg(long, value_enum, ignore_case = true)]
    protocol: Proto,
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: ExplainOutput,
}

#[derive(Clone, Copy, ValueEnum)]
enum ExplainOutput {
    Text,
    Json,
}

impl FlowArgs {
    fn ask(&self) -> weirctl::explain::Ask {
        weirctl::explain::Ask {
            from: self.from.clone(),
            to: self.to.clone(),
            port: self.port,
            protocol: proto_str(self.protocol).into(),
        }
    }
}

/// Print an explanation; a disagreement with the kernel (or a check that
/// could not run) is printed loudly and fails the command.
fn print_explanation(v: &serde_json::Value, output: ExplainOutput) -> Result<()> {
    match output {
        ExplainOutput::Text => print!("{}", weirctl::explain::render_text(v)),
        ExplainOutput::Json => println!("{}", serde_json::to_string_pretty(v)?),
    }
    if let Some(p) = weirctl::explain::problem(v) {
        eprintln!("error: {p}");
        std::process::exit(3);
    }
    Ok(())
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Via {
    Service,
    Pod,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
#[value(rename_all = "UPPER")]
enum Proto {
    Tcp,
    Udp,
    Sctp,
}

#[derive(Clone, Copy, ValueEnum)]
enum What {
    Pods,
    Services,
    Policies,
    Nodes,
}

/// Backends between the nodes of a multi-node lab.
#[derive(Clone, Copy, ValueEnum)]
enum BackendArg {
    HostGw,
    Vxlan,
}

#[derive(Subcommand)]
enum LabCmd {
    /// Create the node(s), start weir-policyd, create every object in FILEs.
    Up {
        #[arg(long, default_value = "default")]
        name: String,
        /// How many nodes (1 to 16); pods without spec.nodeName are spread over them.
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        /// How weir-policyd connects the nodes' pod CIDRs (with --nodes 2 or more; default vxlan).
        #[arg(long, value_enum)]
        backend: Option<BackendArg>,
        /// Manifest file or directory (repeatable).
        #[arg(short = 'f', long = "filename")]
        files: Vec<PathBuf>,
        /// Directory holding the `weir` CNI binary (default: next to weirctl, then /opt/cni/bin).
        #[arg(long)]
        cni_bin_dir: Option<PathBuf>,
        /// The weir-policyd binary (default: next to weirctl, /usr/local/bin, /usr/bin).
        #[arg(long)]
        policyd_bin: Option<PathBuf>,
        /// Run without weir-policyd and without enforcement.
        #[arg(long)]
        no_policy: bool,
        /// CNI plugin type to exec (the binary's name).
        #[arg(long, default_value = "weir", hide = true)]
        cni_type: String,
    },
    /// Create or replace the objects in FILEs.
    Apply {
        #[arg(long, default_value = "default")]
        name: String,
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// Delete the objects named in FILEs (a Namespace takes its contents).
    Delete {
        #[arg(long, default_value = "default")]
        name: String,
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// Every pod to every pod: `.` connected, `X` blocked.
    Probe {
        #[arg(long, default_value = "default")]
        name: String,
        #[arg(long, default_value_t = 80)]
        port: u16,
        #[arg(long, value_enum, default_value = "TCP", ignore_case = true)]
        protocol: Proto,
        #[arg(long, value_enum, default_value = "service")]
        via: Via,
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
        /// Only this source pod (ns/pod).
        #[arg(long)]
        from: Option<String>,
        /// Only this destination pod (ns/pod).
        #[arg(long)]
        to: Option<String>,
        /// Probe IPv6 addresses (pod IPs or IPv6 ClusterIPs).
        #[arg(long)]
        ipv6: bool,
    },
    /// Run a command in a pod's network namespace (like kubectl exec); exits with its code.
    Exec {
        #[arg(long, default_value = "default")]
        name: String,
        /// NAMESPACE/NAME
        pod: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// List pods, services, policies or nodes.
    Get {
        what: What,
        #[arg(long, default_value = "default")]
        name: String,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// `weirctl explain` in the lab: asks the node of the source pod (and of
    /// the destination, when it is another).
    Explain {
        #[arg(long, default_value = "default")]
        name: String,
        #[command(flatten)]
        flow: FlowArgs,
    },
    /// `weirctl flows` in the lab: every node's flow log, merged by time.
    Flows {
        #[arg(long, default_value = "default")]
        name: String,
        #[command(flatten)]
        args: FlowsArgs,
    },
    /// Remove every netns, link, pin, rule and process of the lab.
    Down {
        #[arg(long, default_value = "default")]
        name: String,
    },
    /// The NetworkPolicy e2e model (3 namespaces x 3 pods) with example policies.
    Demo {
        #[arg(long, default_value = "demo")]
        name: String,
        /// Leave the lab running afterwards.
        #[arg(long)]
        keep: bool,
        #[arg(long)]
        cni_bin_dir: Option<PathBuf>,
        #[arg(long)]
        policyd_bin: Option<PathBuf>,
        #[arg(long)]
        no_policy: bool,
    },
    /// The server inside each lab pod (started by the lab itself).
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        netns: String,
        #[arg(long)]
        status_file: PathBuf,
        #[arg(long = "port")]
        ports: Vec<String>,
    },
}

fn proto_str(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "TCP",
        Proto::Udp => "UDP",
        Proto::Sctp => "SCTP",
    }
}

fn run() -> Result<()> {
    let cmd = match Cli::parse().cmd {
        Top::Lab { cmd } => cmd,
        Top::Explain { flow, run_dir } => {
            let v = weirctl::explain::explain(&run_dir, &flow.ask())?;
            return print_explanation(&v, flow.output);
        }
        Top::Get { what, output, run_dir } => {
            let what = match what {
                NodeWhatArg::Endpoints => get::NodeWhat::Endpoints,
                NodeWhatArg::Policies => get::NodeWhat::Policies,
            };
            let v = get::fetch(&run_dir, what)?;
            match output {
                Output::Table => print!("{}", get::render_table(what, &v)),
                Output::Json => println!("{}", serde_json::to_string_pretty(&v)?),
            }
            return Ok(());
        }
        Top::Flows { args, run_dir } => {
            let q = args.query();
            return args.run(std::slice::from_ref(&run_dir), || weirctl::flows::recent(&run_dir, &q));
        }
    };
    match cmd {
        LabCmd::Up { name, nodes, backend, files, cni_bin_dir, policyd_bin, no_policy, cni_type } => {
            let backend = backend.map(|b| match b {
                BackendArg::HostGw => "host-gw".to_string(),
                BackendArg::Vxlan => "vxlan".to_string(),
            });
            ops::up(
                &Lab::new(&name)?,
                &ops::UpOpts { files, cni_bin_dir, policyd_bin, no_policy, cni_type, quiet: false, nodes, backend },
            )
        }
        LabCmd::Exec { name, pod, command } => {
            let code = ops::exec(&Lab::new(&name)?, &pod, &command)?;
            std::process::exit(code);
        }
        LabCmd::Apply { name, files } => ops::apply(&Lab::new(&name)?, &files, false),
        LabCmd::Delete { name, files } => ops::delete(&Lab::new(&name)?, &files, false),
        LabCmd::Probe { name, port, protocol, via, timeout_ms, output, from, to, ipv6 } => {
            let m = ops::probe(
                &Lab::new(&name)?,
                &ops::ProbeOpts {
                    port,
                    protocol: proto_str(protocol).into(),
                    via_service: via == Via::Service,
                    timeout: Duration::from_millis(timeout_ms),
                    from,
                    to,
                    ipv6,
                },
            )?;
            match output {
                Output::Table => print!("{}", m.table()),
                Output::Json => println!("{}", serde_json::to_string(&m.json())?),
            }
            Ok(())
        }
        LabCmd::Get { what, name, output } => {
            let w = match what {
                What::Pods => ops::GetWhat::Pods,
                What::Services => ops::GetWhat::Services,
                What::Policies => ops::GetWhat::Policies,
                What::Nodes => ops::GetWhat::Nodes,
            };
            print!("{}", ops::get(&Lab::new(&name)?, w, matches!(output, Output::Json))?);
            Ok(())
        }
        LabCmd::Explain { name, flow } => {
            let v = weirctl::explain::lab_explain(&Lab::new(&name)?, &flow.ask())?;
            print_explanation(&v, flow.output)
        }
        LabCmd::Flows { name, args } => {
            let lab = Lab::new(&name)?;
            let q = args.query();
            args.run(&weirctl::flows::lab_run_dirs(&lab)?, || weirctl::flows::lab_recent(&lab, &q))
        }
        LabCmd::Down { name } => ops::down(&Lab::new(&name)?, false),
        LabCmd::Demo { name, keep, cni_bin_dir, policyd_bin, no_policy } => demo::run(
            &Lab::new(&name)?,
            keep,
            ops::UpOpts {
                files: vec![],
                cni_bin_dir,
                policyd_bin,
                no_policy,
                cni_type: "weir".into(),
                quiet: false,
                nodes: 1,
                backend: None,
            },
        ),
        LabCmd::Serve { netns, status_file, ports } => {
            let ports = ports.iter().map(|p| serve::parse_port_spec(p)).collect::<Result<Vec<_>>>()?;
            serve::run(&netns, &ports, &status_file)
        }
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
