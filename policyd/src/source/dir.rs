//! The manifest directory source: `*.yaml`, `*.yml` and `*.json` files in
//! one directory (not recursive; names starting with `.` are ignored, so
//! writers can stage a file as `.name.tmp` and rename it into place).
//!
//! Woken by inotify as files change, with a periodic re-scan as a safety
//! net (filesystems without inotify, missed wake-ups). A scan compares each
//! file's (size, mtime, ctime, inode) and re-reads only what changed.
//!
//! A file that fails to parse, or holds a kind or apiVersion policyd does
//! not read (`Networkpolicy`, `networking.k8s.io/v1beta1`), keeps
//! contributing the objects of its last good version: a half-written or
//! mistyped policy file must never drop the policy (that would open
//! traffic). Last good versions are kept on disk too
//! ([`DirOptions::last_good`], see [`super::last_good`]), so a restart
//! while a file is broken keeps them as well. A removed file removes its
//! objects. Objects defined in two files: the later file name (byte order)
//! wins, with a warning.

use super::last_good::LastGood;
use super::manifest;
use super::{count_event, Object, ObjectKind, ObjectRef, Sender, Source, SourceError, SourceEvent};
use crate::metrics::Metrics;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Metric/log label of this source.
pub const SOURCE: &str = "dir";

/// Where weir-policyd keeps last good versions, under its run directory.
pub const LAST_GOOD_DIR: &str = "manifests-last-good";

/// Why a file is held at its last good version: the `reason` label of
/// `weir_policyd_manifest_files_broken` ([`SourceError::reason`] values).
pub const BROKEN_REASONS: [&str; 3] = ["manifest_invalid", "unknown_kind", "manifest_read"];

#[derive(Debug, Clone)]
pub struct DirOptions {
    /// Re-scan at least this often even without an inotify wake-up.
    pub poll_interval: Duration,
    /// After an inotify wake-up, wait this long for a writer's burst of
    /// changes (several files, write then rename) to finish before scanning.
    pub settle: Duration,
    /// Keep each file's last good version in this directory and start from
    /// it (weir-policyd: `<run dir>/manifests-last-good`). None: in memory
    /// only, so a broken file read at start contributes nothing.
    pub last_good: Option<PathBuf>,
}

impl Default for DirOptions {
    fn default() -> Self {
        DirOptions { poll_interval: Duration::from_millis(100), settle: Duration::from_millis(2), last_good: None }
    }
}

/// Start watching `dir` (created if missing). The first `Synced` comes
/// after the first complete scan; if the directory cannot be read, no
/// `Synced` is sent until it can (syncing an empty view would leave every
/// pod unisolated).
pub fn spawn_dir(dir: PathBuf, opts: DirOptions, metrics: Arc<Metrics>) -> Source {
    Source::spawn(move |tx| run(dir, opts, metrics, tx))
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
}

impl Stamp {
    fn of(md: &std::fs::Metadata) -> Stamp {
        Stamp {
            size: md.size(),
            mtime_ns: md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128,
            ctime_ns: md.ctime() as i128 * 1_000_000_000 + md.ctime_nsec() as i128,
            ino: md.ino(),
        }
    }
}

#[derive(Debug)]
struct FileState {
    /// None for a last good version read back at start: the file itself
    /// has not been looked at yet.
    stamp: Option<Stamp>,
    /// Content last parsed (good or bad), to skip no-op rewrites.
    content: Vec<u8>,
    /// Objects from the last good content.
    objects: Vec<Object>,
    /// Why the current content is not used (a [`BROKEN_REASONS`] value).
    broken: Option<&'static str>,
}

struct DirState {
    dir: PathBuf,
    files: BTreeMap<String, FileState>,
    /// Last read error logged per file name.
    read_errors: BTreeMap<String, String>,
    last_good: Option<LastGood>,
    metrics: Arc<Metrics>,
}

impl DirState {
    /// Start from the last good versions kept in `last_good`, if any: the
    /// first scan compares every file against them like against any
    /// earlier version (a broken file keeps them, a removed one drops them).
    fn new(dir: PathBuf, last_good: Option<&Path>, metrics: Arc<Metrics>) -> DirState {
        let mut state =
            DirState { dir, files: BTreeMap::new(), read_errors: BTreeMap::new(), last_good: None, metrics };
        let Some(path) = last_good else { return state };
        let store = match LastGood::open(path, &state.dir) {
            Ok(s) => s,
            Err(e) => {
                let err = SourceError::LastGoodWrite { dir: path.display().to_string(), message: e.to_string() };
                log::error!("{err}");
                state.error(&err);
                return state;
            }
        };
        let copies = store.list().unwrap_or_else(|e| {
            log::error!("{}: cannot read the last good manifest versions: {e}", path.display());
            Vec::new()
        });
        for (name, content) in copies {
            let copy = path.join(&name).display().to_string();
            let parsed = std::str::from_utf8(&content)
                .map_err(|e| e.to_string())
                .and_then(|text| manifest::parse(&copy, text).map_err(|e| e.to_string()));
            match parsed {
                Ok(p) if p.skipped.is_empty() => {
                    state.files.insert(name, FileState { stamp: None, content, objects: p.objects, broken: None });
                }
                // Only good versions are saved; this one was written by a
                // policyd that read more, or damaged: not worth keeping.
                Ok(_) | Err(_) => {
                    log::warn!("{copy}: not a usable last good version; discarded");
                    let _ = store.remove(&name);
                }
            }
        }
        state.last_good = Some(store);
        state
    }

    fn error(&self, e: &SourceError) {
        self.metrics.source_error(SOURCE, e);
    }

    /// Re-read what changed. Returns whether any file's objects changed, or
    /// Err when the directory itself cannot be listed.
    fn scan(&mut self) -> std::io::Result<bool> {
        let mut seen = BTreeSet::new();
        let mut changed = false;
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = match entry.file_name().into_string() {
                Ok(n) => n,
                Err(n) => {
                    log::debug!("{}: ignoring non-UTF-8 file name {:?}", self.dir.display(), n);
                    continue;
                }
            };
            if !is_manifest_name(&name) {
                continue;
            }
            let path = entry.path();
            // Follow symlinks (ConfigMap mounts are symlink farms).
            let md = match std::fs::metadata(&path) {
                Ok(md) if md.is_file() => md,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    self.read_failed(&name, &path, e, &mut seen);
                    continue;
                }
            };
            seen.insert(name.clone());
            let stamp = Stamp::of(&md);
            if self.files.get(&name).is_some_and(|f| f.stamp.as_ref() == Some(&stamp)) {
                continue;
            }
            let content = match std::fs::read(&path) {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    seen.remove(&name);
                    continue;
                }
                Err(e) => {
                    self.read_failed(&name, &path, e, &mut seen);
                    continue;
                }
            };
            changed |= self.load(&name, &path, stamp, content);
        }
        let gone: Vec<String> = self.files.keys().filter(|n| !seen.contains(*n)).cloned().collect();
        for name in gone {
            log::info!("{}: removed; its objects are removed", self.dir.join(&name).display());
            self.files.remove(&name);
            self.forget_last_good(&name);
            changed = true;
        }
        for reason in BROKEN_REASONS {
            let n = self.files.values().filter(|f| f.broken == Some(reason)).count();
            self.metrics.manifest_files_broken.set(&[reason], n as f64);
        }
        Ok(changed)
    }

    fn save_last_good(&self, name: &str, content: &[u8]) {
        let Some(store) = &self.last_good else { return };
        if let Err(e) = store.save(name, content) {
            let err =
                SourceError::LastGoodWrite { dir: store.dir().display().to_string(), message: format!("{name}: {e}") };
            log::error!("{err}");
            self.error(&err);
        }
    }

    fn forget_last_good(&self, name: &str) {
        let Some(store) = &self.last_good else { return };
        if let Err(e) = store.remove(name) {
            let err =
                SourceError::LastGoodWrite { dir: store.dir().display().to_string(), message: format!("{name}: {e}") };
            log::error!("{err}");
            self.error(&err);
        }
    }

    /// Hold `name` at its last good objects (none if it never had any).
    fn hold(&mut self, name: &str, stamp: Stamp, content: Vec<u8>, reason: &'static str) {
        let previous = self.files.remove(name);
        if previous.as_ref().is_none_or(|f| f.objects.is_empty()) {
            log::error!(
                "{}: no earlier good version of it defines any object, so it contributes none until it is fixed",
                self.dir.join(name).display()
            );
        }
        let objects = previous.map(|f| f.objects).unwrap_or_default();
        self.files.insert(name.to_string(), FileState { stamp: Some(stamp), content, objects, broken: Some(reason) });
    }

    fn read_failed(&mut self, name: &str, path: &Path, e: std::io::Error, seen: &mut BTreeSet<String>) {
        let err = SourceError::ManifestRead { file: path.display().to_string(), message: e.to_string() };
        self.error(&err);
        // Unreadable files are retried every scan: log once per distinct error.
        let text = err.to_string();
        if self.read_errors.get(name) != Some(&text) {
            log::error!("{text}");
            self.read_errors.insert(name.to_string(), text);
        }
        // Keep what it contributed: an unreadable file is not a removed one.
        if let Some(f) = self.files.get_mut(name) {
            f.broken = Some(err.reason());
            seen.insert(name.to_string());
        }
    }

    /// Parse new content of `name`; true if its objects changed.
    fn load(&mut self, name: &str, path: &Path, stamp: Stamp, content: Vec<u8>) -> bool {
        self.read_errors.remove(name);
        if let Some(f) = self.files.get_mut(name) {
            if f.content == content {
                f.stamp = Some(stamp);
                return false;
            }
        }
        let file = path.display().to_string();
        // `>` redirections and most editors truncate, then write: a scan
        // between the two sees an empty file. Taking that at face value
        // would delete the file's policies for a moment, so an emptied file
        // only counts once it has stayed empty for EMPTY_GRACE (its stamp is
        // not recorded, so the next scans look again).
        if content.iter().all(|b| b.is_ascii_whitespace())
            && self.files.get(name).is_some_and(|f| !f.objects.is_empty())
            && modified_within(path, EMPTY_GRACE)
        {
            log::debug!("{file}: emptied just now; waiting to see whether a write follows");
            return false;
        }
        let parsed = match std::str::from_utf8(&content) {
            Ok(text) => manifest::parse(&file, text),
            Err(e) => Err(SourceError::ManifestInvalid { file: file.clone(), message: format!("not UTF-8 text: {e}") }),
        };
        match parsed {
            Ok(p) if !p.skipped.is_empty() => {
                // A kind or apiVersion typo: reading the rest would drop the
                // mistyped object (a policy, opening traffic).
                for s in &p.skipped {
                    log::error!(
                        "{s} (the file's objects are held at its last good version until it is fixed or removed)"
                    );
                    self.error(s);
                }
                self.hold(name, stamp, content, "unknown_kind");
                false
            }
            Ok(p) => {
                let was_broken = self.files.get(name).is_some_and(|f| f.broken.is_some());
                if was_broken {
                    log::info!("{file}: parses again ({} objects)", p.objects.len());
                }
                self.save_last_good(name, &content);
                let old = self.files.insert(
                    name.to_string(),
                    FileState { stamp: Some(stamp), content, objects: p.objects, broken: None },
                );
                old.map(|o| o.objects) != self.files.get(name).map(|f| f.objects.clone())
            }
            Err(e) => {
                log::error!("{e}");
                self.error(&e);
                self.hold(name, stamp, content, e.reason());
                false
            }
        }
    }

    /// Every object, later file names winning.
    fn merged(&self) -> BTreeMap<ObjectRef, Object> {
        let mut out: BTreeMap<ObjectRef, (Object, &str)> = BTreeMap::new();
        for (name, f) in &self.files {
            for o in &f.objects {
                let r = o.object_ref();
                if let Some((_, first)) = out.get(&r) {
                    if *first != name.as_str() {
                        let e = SourceError::DuplicateObject {
                            object: r.clone(),
                            first: self.dir.join(first).display().to_string(),
                            second: self.dir.join(name).display().to_string(),
                        };
                        log::warn!("{e}");
                        self.error(&e);
                    }
                }
                out.insert(r, (o.clone(), name.as_str()));
            }
        }
        out.into_iter().map(|(r, (o, _))| (r, o)).collect()
    }
}

/// How long an emptied file must stay empty before its objects are removed.
const EMPTY_GRACE: Duration = Duration::from_secs(1);

fn modified_within(path: &Path, d: Duration) -> bool {
    std::fs::metadata(path).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).is_some_and(|age| age < d)
}

fn is_manifest_name(name: &str) -> bool {
    !name.starts_with('.') && [".yaml", ".yml", ".json"].iter().any(|ext| name.len() > ext.len() && name.ends_with(ext))
}

async fn run(dir: PathBuf, opts: DirOptions, metrics: Arc<Metrics>, tx: Sender) {
    if let Err(e) = std::fs::create_dir_all(&dir) {
        log::error!("{}: cannot create the manifest directory: {e}", dir.display());
    }
    let mut wake = match crate::fswatch::watch_dir(&dir) {
        Ok(rx) => Some(rx),
        Err(e) => {
            log::warn!(
                "{}: inotify unavailable ({e}); noticing changes by polling every {:?}",
                dir.display(),
                opts.poll_interval
            );
            None
        }
    };
    let mut state = DirState::new(dir.clone(), opts.last_good.as_deref(), metrics.clone());
    let mut tick = tokio::time::interval(opts.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    // Initial view: retry until the directory can be read.
    loop {
        match state.scan() {
            Ok(_) => break,
            Err(e) => {
                let err = SourceError::ManifestRead { file: dir.display().to_string(), message: e.to_string() };
                log::error!("{err}; retrying");
                metrics.source_error(SOURCE, &err);
                tick.tick().await;
            }
        }
    }
    let mut emitted = state.merged();
    let mut by_kind: BTreeMap<ObjectKind, Vec<Object>> = ObjectKind::ALL.iter().map(|k| (*k, Vec::new())).collect();
    for (r, o) in &emitted {
        by_kind.get_mut(&r.kind).expect("every kind present").push(o.clone());
    }
    for (k, objs) in by_kind {
        let ev = SourceEvent::Replace(k, objs);
        count_event(&metrics, SOURCE, &ev);
        if tx.send(ev).await.is_err() {
            return;
        }
    }
    if tx.send_synced().await.is_err() {
        return;
    }
    metrics.source_synced.set(&[SOURCE], 1.0);
    log::info!("{}: synced, {} objects", dir.display(), emitted.len());

    let mut dir_error: Option<String> = None;
    loop {
        let woke = match wake.as_mut() {
            Some(rx) => tokio::select! {
                w = rx.recv() => {
                    if w.is_none() {
                        log::warn!("{}: inotify watch ended; polling only", dir.display());
                        wake = None;
                    }
                    true
                }
                _ = tick.tick() => false,
            },
            None => {
                tick.tick().await;
                false
            }
        };
        if woke && !opts.settle.is_zero() {
            tokio::time::sleep(opts.settle).await;
        }
        let changed = match state.scan() {
            Ok(c) => {
                if dir_error.take().is_some() {
                    log::info!("{}: readable again", dir.display());
                }
                c
            }
            Err(e) => {
                // Keep everything: a directory briefly unreadable (being
                // replaced, permissions) is no reason to drop policies.
                let err = SourceError::ManifestRead { file: dir.display().to_string(), message: e.to_string() };
                metrics.source_error(SOURCE, &err);
                // Once per distinct error, not every poll.
                if dir_error.as_deref() != Some(err.to_string().as_str()) {
                    log::error!("{err}; keeping the objects read so far");
                    dir_error = Some(err.to_string());
                }
                continue;
            }
        };
        if !changed {
            continue;
        }
        let now = state.merged();
        let mut events = Vec::new();
        for (r, o) in &now {
            if emitted.get(r) != Some(o) {
                events.push(SourceEvent::Apply(o.clone()));
            }
        }
        for r in emitted.keys() {
            if !now.contains_key(r) {
                events.push(SourceEvent::Delete(r.clone()));
            }
        }
        emitted = now;
        for ev in events {
            count_event(&metrics, SOURCE, &ev);
            if tx.send(ev).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_manifest_name;

    #[test]
    fn manifest_names() {
        assert!(is_manifest_name("a.yaml"));
        assert!(is_manifest_name("a.yml"));
        assert!(is_manifest_name("a.json"));
        assert!(!is_manifest_name(".a.yaml"));
        assert!(!is_manifest_name("a.yaml.tmp"));
        assert!(!is_manifest_name("a.yaml~"));
        assert!(!is_manifest_name(".yaml"));
        assert!(!is_manifest_name("README.md"));
    }
}
