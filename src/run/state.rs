//! Running-container state under `--state` (default /run/coracle): `<id>/state.json`,
//! flock'ed exclusively by its `coracle run` for the container's whole life. The kernel
//! drops the lock when that process dies, so a free lock means "gone", whatever the file
//! says (rkt's pod lifecycle): readers never trust a state file without trying its lock.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::os::unix::fs::DirBuilderExt;
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
}

/// A state entry held by this process; removed on drop.
pub struct Held {
    dir: PathBuf,
    _lock: File,
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Creates `<state_dir>/<id>/state.json`, locked, written before it becomes visible.
pub fn create(state_dir: &Path, s: &State) -> io::Result<Held> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(state_dir)?;
    let dir = state_dir.join(&s.id);
    fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let tmp = dir.join("state.json.tmp");
    let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
    f.lock()?;
    f.write_all(&serde_json::to_vec_pretty(s).map_err(io::Error::other)?)?;
    // No fsync: the file means nothing once its lock is gone, and a crash drops the lock.
    fs::rename(&tmp, dir.join("state.json"))?;
    Ok(Held { dir, _lock: f })
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
        let dir = e.path();
        let Ok(f) = File::open(dir.join("state.json")) else {
            // No state file: a run that died while creating it, or foreign junk we leave.
            // A run writes state.json.tmp and locks it a moment after creating it: only
            // a stale one (a run killed in between) is debris.
            let tmp = dir.join("state.json.tmp");
            let stale =
                tmp.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|e| e.as_secs() > 10));
            if stale && !locked(&tmp) && fs::remove_dir_all(&dir).is_ok() {
                dead.push(e.file_name().to_string_lossy().into_owned());
            }
            continue;
        };
        match f.try_lock_shared() {
            Err(TryLockError::WouldBlock) => {
                if let Ok(s) = serde_json::from_reader::<_, State>(&f) {
                    out.push(s);
                }
            }
            Ok(()) => {
                drop(f);
                if fs::remove_dir_all(&dir).is_ok() {
                    dead.push(e.file_name().to_string_lossy().into_owned());
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
