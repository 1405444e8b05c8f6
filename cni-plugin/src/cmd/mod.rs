//! One module per CNI command; `run` is the whole plugin minus process I/O.

pub mod add;
pub mod check;
pub mod del;
pub mod gc;
pub mod status;

use crate::config::{self, Command, SUPPORTED_VERSIONS};
use crate::error::{code, CniError, Result};
use serde_json::{json, Value};

/// What the process prints and its exit status.
pub struct Outcome {
    pub stdout: Option<Value>,
    pub exit: i32,
}

/// Run one invocation: `getenv` reads the CNI_* variables, `stdin` is the
/// configuration the runtime wrote.
pub fn run(getenv: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    let mut version = "1.1.0".to_string();
    match run_inner(&getenv, stdin, &mut version) {
        Ok(out) => Outcome { stdout: out, exit: 0 },
        Err(e) => {
            eprintln!("weir: {e}");
            Outcome { stdout: Some(e.to_json(&version)), exit: 1 }
        }
    }
}

fn run_inner(getenv: &dyn Fn(&str) -> Option<String>, stdin: &[u8], version: &mut String) -> Result<Option<Value>> {
    let command = config::parse_command(getenv("CNI_COMMAND").as_deref())?;
    if command == Command::Version {
        let req = if stdin.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            config::parse_stdin(stdin).ok().map(|v| config::version_of(&v))
        };
        let v = req.unwrap_or_else(|| "1.1.0".into());
        *version = v.clone();
        return Ok(Some(json!({ "cniVersion": v, "supportedVersions": SUPPORTED_VERSIONS })));
    }
    let raw = config::parse_stdin(stdin)?;
    *version = config::version_of(&raw);
    let conf = config::parse_netconf(raw)?;
    let env = config::parse_env(command, getenv)?;
    let need = |v: &str, what: &str| -> Result<()> {
        if conf.version_at_least(v) {
            Ok(())
        } else {
            Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!("{what} needs cniVersion {v} or later, the config says {}; raise cniVersion", conf.cni_version),
            ))
        }
    };
    match command {
        Command::Add => add::add(&conf, &env).map(Some),
        Command::Del => del::del(&conf, &env).map(|_| None),
        Command::Check => {
            need("0.4.0", "CHECK")?;
            check::check(&conf, &env).map(|_| None)
        }
        Command::Status => {
            need("1.1.0", "STATUS")?;
            status::status(&conf).map(|_| None)
        }
        Command::Gc => {
            need("1.1.0", "GC")?;
            gc::gc(&conf, &env).map(|_| None)
        }
        Command::Version => unreachable!("handled above"),
    }
}
