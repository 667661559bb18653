//! Running-container state under `--state` (default /run/coracle): `<id>.json`,
//! flock'ed exclusively by its `coracle run` for the container's whole life. The kernel
//! drops the lock when that process dies, so a free lock means "gone", whatever the file
//! says (rkt's pod lifecycle): readers never trust a state file without trying its lock.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    pub id: String,
    pub name: String,
    /// The app's pid as the host sees it.
    pub pid: i32,
    /// The container's PID 1 as the host sees it (the app itself with --no-init).
    pub init_pid: i32,
    pub image: String,
    pub image_digest: String,
    pub command: Vec<String>,
    pub started: String,
    pub store: PathBuf,
    /// The app's environment (`K=V`), working directory, user and capabilities: what
    /// `coracle exec` gives the processes it adds.
    pub env: Vec<String>,
    pub cwd: String,
    pub user: String,
    pub caps: Vec<String>,
    pub privileged: bool,
    /// `--security-opt seccomp=`: `default`, `unconfined` or the profile's path, which
    /// `exec` applies to the processes it adds.
    #[serde(default = "default_seccomp")]
    pub seccomp: String,
}

fn default_seccomp() -> String {
    "default".into()
}

/// A state entry held by this process; removed on drop.
pub struct Held {
    path: PathBuf,
    _lock: File,
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// The state entry of container `id`, `<state_dir>/<id>.json`, locked, is made in two
/// steps: [`Pending`], the locked temporary file `.<id>.json.tmp`, while the container is
/// being set up (when the outer process would otherwise wait), then
/// [`Pending::commit`], written and renamed, once the app's process is known.
pub fn prepare(state_dir: &Path, id: &str) -> io::Result<Pending> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(state_dir)?;
    let tmp = state_dir.join(format!(".{id}.json.tmp"));
    let f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    // From here on, dropping the Pending removes the file.
    let pending = Pending { dir: state_dir.to_path_buf(), tmp, file: Some(f) };
    pending.file.as_ref().expect("just made").lock()?;
    Ok(pending)
}

/// A locked, not yet visible state file; removed on drop unless committed.
pub struct Pending {
    dir: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
}

impl Pending {
    /// Writes `s` and makes it visible under its id.
    pub fn commit(mut self, s: &State) -> io::Result<Held> {
        let f = self.file.as_mut().expect("committed once");
        f.write_all(&serde_json::to_vec_pretty(s).map_err(io::Error::other)?)?;
        // No fsync: the file means nothing once its lock is gone, and a crash drops the lock.
        let path = self.dir.join(format!("{}.json", s.id));
        fs::rename(&self.tmp, &path)?;
        // Visible under its id: no longer ours to remove as a temporary file.
        let f = self.file.take().expect("committed once");
        Ok(Held { path, _lock: f })
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// The containers whose `coracle run` is alive; leftovers of dead ones are removed.
pub fn list(state_dir: &Path) -> io::Result<Vec<State>> {
    scan(state_dir).map(|(live, _)| live)
}

/// Removes the state of containers whose `coracle run` died (SIGKILL, a crash); returns
/// their ids.
pub fn prune(state_dir: &Path) -> io::Result<Vec<String>> {
    scan(state_dir).map(|(_, dead)| dead)
}

fn scan(state_dir: &Path) -> io::Result<(Vec<State>, Vec<String>)> {
    let mut out = Vec::new();
    let mut dead = Vec::new();
    let rd = match fs::read_dir(state_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((out, dead)),
        Err(e) => return Err(e),
    };
    for e in rd.flatten() {
        let file = e.file_name();
        let Some(file) = file.to_str() else { continue };
        let path = e.path();
        if let Some(id) = file.strip_prefix('.').and_then(|f| f.strip_suffix(".json.tmp")) {
            // A run writes its .tmp and locks it a moment after creating it: only a stale
            // one (a run killed in between) is debris.
            let stale =
                path.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|e| e.as_secs() > 10));
            if stale && !locked(&path) && fs::remove_file(&path).is_ok() {
                dead.push(id.to_owned());
            }
            continue;
        }
        // Anything that is not `<64 hex>.json` is foreign: left alone.
        let Some(id) =
            file.strip_suffix(".json").filter(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        else {
            continue;
        };
        let Ok(f) = File::open(&path) else { continue };
        match f.try_lock_shared() {
            Err(TryLockError::WouldBlock) => {
                if let Ok(s) = serde_json::from_reader::<_, State>(&f) {
                    out.push(s);
                }
            }
            Ok(()) => {
                drop(f);
                if fs::remove_file(&path).is_ok() {
                    dead.push(id.to_owned());
                }
            }
            Err(TryLockError::Error(_)) => {}
        }
    }
    out.sort_by(|a, b| a.started.cmp(&b.started).then(a.id.cmp(&b.id)));
    Ok((out, dead))
}

fn locked(p: &Path) -> bool {
    File::open(p).map(|f| matches!(f.try_lock_shared(), Err(TryLockError::WouldBlock))).unwrap_or(false)
}

/// Finds a running container by id, unique id prefix or name.
pub fn find(state_dir: &Path, key: &str) -> io::Result<Option<State>> {
    let all = list(state_dir)?;
    if let Some(s) = all.iter().find(|s| s.name == key || s.id == key) {
        return Ok(Some(s.clone()));
    }
    let by_prefix: Vec<&State> = all.iter().filter(|s| key.len() >= 4 && s.id.starts_with(key)).collect();
    Ok(if by_prefix.len() == 1 { Some(by_prefix[0].clone()) } else { None })
}
