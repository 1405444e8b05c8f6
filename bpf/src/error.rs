use std::path::PathBuf;

/// Every error names the pin or input involved and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "bpffs not mounted at {path}: start weir-policyd (it mounts bpffs there when absent), or mount it \
         yourself (`mount -t bpf bpf {path}`)"
    )]
    BpffsNotMounted { path: PathBuf },

    #[error(
        "cannot mount bpffs at {path}: {source}; mount it yourself (`mount -t bpf -o mode=0700 bpf {path}`) \
         as root, or in a container give Weir CAP_SYS_ADMIN and the host's {path}"
    )]
    Mount {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "{path} has a {fstype} filesystem mounted on it, not bpffs: Weir does not mount over it; unmount it \
         (`umount {path}`) or mount bpffs there (`mount -t bpf bpf {path}`)"
    )]
    OtherFsMounted { path: PathBuf, fstype: String },

    #[error(
        "bpffs root {root} is not on bpffs ({found} is on another filesystem): choose a root under a bpffs \
         mount, such as /sys/fs/bpf/weir"
    )]
    NotOnBpffs { root: PathBuf, found: PathBuf },

    #[error("bpffs root: {0}")]
    Untrusted(#[from] weir_common::trust::TrustError),

    #[error(
        "pins under {root} were written by ABI version {found}, this build uses {expected}: {}",
        abi_hint(*.found, .root)
    )]
    AbiMismatch { root: PathBuf, found: u32, expected: u32 },

    #[error("carrying the pins under {root} from map ABI {from} to {to} failed: {msg}; {state}")]
    Migrate { root: PathBuf, from: u32, to: u32, msg: String, state: String },

    #[error(
        "{path} is not pinned: the dataplane under {root} is not loaded yet \
         (Dataplane::load_or_open loads it; weir-policyd and the CNI ADD call it)"
    )]
    NotLoaded { root: PathBuf, path: PathBuf },

    #[error("loading the eBPF object for {root} failed: {source}")]
    Load {
        root: PathBuf,
        #[source]
        source: Box<aya::EbpfError>,
    },

    #[error("program {name} was rejected or could not be handled: {source}{}", verifier_hint(.source))]
    Program {
        name: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },

    #[error("map {path}: {op} failed: {source}")]
    Map {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },

    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "no interface with ifindex {ifindex} in this network namespace: attach/detach run in the \
         node's netns (where the host-side veth lives)"
    )]
    NoSuchInterface { ifindex: u32 },

    #[error("invalid {field}: {msg}")]
    Invalid { field: &'static str, msg: String },
}

/// What to do about pins of another ABI.
fn abi_hint(found: u32, root: &std::path::Path) -> String {
    if found > crate::abi::ABI_VERSION {
        return format!(
            "they are a newer Weir's: run that version, or remove {} (it detaches Weir from every \
             pod until they are re-attached)",
            root.display()
        );
    }
    if crate::migrate::MIGRATES_FROM.contains(&found) {
        return "weir-policyd of this build carries them over when it starts (a CNI call fails until \
                then, and the runtime retries it)"
            .into();
    }
    format!(
        "this build carries over pins of ABI {:?} only: upgrade through a Weir version of one of \
         those, or remove {} (it detaches Weir from every pod until they are re-attached)",
        crate::migrate::MIGRATES_FROM,
        root.display()
    )
}

fn verifier_hint(e: &aya::programs::ProgramError) -> String {
    match e {
        aya::programs::ProgramError::LoadError { verifier_log, .. } => {
            format!("\nverifier log:\n{verifier_log}")
        }
        _ => String::new(),
    }
}

impl Error {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { what, path: path.into(), source }
    }
}
