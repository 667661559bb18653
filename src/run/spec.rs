//! What to run: the image config's Entrypoint/Cmd/Env/WorkingDir/User combined with the
//! docker-style flags, as a plain value (no I/O) that the launcher executes.

use std::collections::BTreeMap;

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The runtime part of an image config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageDefaults {
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
}

/// What the user asked for on the command line.
#[derive(Debug, Clone, Default)]
pub struct ProcessOptions {
    /// `--entrypoint`: `Some("")` clears the image's.
    pub entrypoint: Option<String>,
    pub cmd: Vec<String>,
    /// `--env-file` contents, in order, each file's text.
    pub env_files: Vec<String>,
    /// `-e K=V` or `-e K` (take the value from coracle's own environment).
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub tty: bool,
    pub hostname: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub args: Vec<String>,
    /// In order of first definition; later definitions replace the value.
    pub env: Vec<(String, String)>,
    pub cwd: String,
    pub user: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("no command: the image has no Entrypoint or Cmd and none was given")]
    NoCommand,
    #[error("working directory {0:?} must be an absolute path")]
    RelativeWorkdir(String),
    #[error("invalid environment variable {0:?}")]
    BadEnv(String),
}

/// Ordered environment with replace-on-redefine.
#[derive(Default)]
struct Env {
    order: Vec<String>,
    values: BTreeMap<String, String>,
}

impl Env {
    fn set(&mut self, k: &str, v: &str) {
        if self.values.insert(k.to_owned(), v.to_owned()).is_none() {
            self.order.push(k.to_owned());
        }
    }
    fn has(&self, k: &str) -> bool {
        self.values.contains_key(k)
    }
    fn into_vec(mut self) -> Vec<(String, String)> {
        self.order.iter().map(|k| (k.clone(), self.values.remove(k).unwrap_or_default())).collect()
    }
}

/// `K=V` sets; a bare `K` takes the value from `host` (and is dropped if unset there).
fn apply_env_entry(env: &mut Env, entry: &str, host: &dyn Fn(&str) -> Option<String>) -> Result<(), SpecError> {
    let (k, v) = match entry.split_once('=') {
        Some((k, v)) => (k, Some(v.to_owned())),
        None => (entry, host(entry)),
    };
    if k.is_empty() || k.contains('\0') || v.as_deref().is_some_and(|v| v.contains('\0')) {
        return Err(SpecError::BadEnv(entry.to_owned()));
    }
    if let Some(v) = v {
        env.set(k, &v);
    }
    Ok(())
}

pub fn process(
    image: &ImageDefaults,
    o: &ProcessOptions,
    host: &dyn Fn(&str) -> Option<String>,
) -> Result<Process, SpecError> {
    // docker: --entrypoint replaces ENTRYPOINT and drops the image's CMD.
    let (entrypoint, image_cmd) = match &o.entrypoint {
        Some(e) if e.is_empty() => (Vec::new(), Vec::new()),
        Some(e) => (vec![e.clone()], Vec::new()),
        None => (image.entrypoint.clone(), image.cmd.clone()),
    };
    let cmd = if o.cmd.is_empty() { image_cmd } else { o.cmd.clone() };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(SpecError::NoCommand);
    }
    let mut env = Env::default();
    for e in &image.env {
        apply_env_entry(&mut env, e, &|_| None)?;
    }
    if !env.has("PATH") {
        env.set("PATH", DEFAULT_PATH);
    }
    env.set("HOSTNAME", &o.hostname);
    if o.tty {
        env.set("TERM", "xterm");
    }
    for file in &o.env_files {
        for line in file.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            apply_env_entry(&mut env, line, host)?;
        }
    }
    for e in &o.env {
        apply_env_entry(&mut env, e, host)?;
    }
    let cwd =
        o.workdir.clone().or_else(|| image.workdir.clone().filter(|w| !w.is_empty())).unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        return Err(SpecError::RelativeWorkdir(cwd));
    }
    let user = o.user.clone().or_else(|| image.user.clone()).unwrap_or_default();
    Ok(Process { args, env: env.into_vec(), cwd, user })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ImageDefaults {
        ImageDefaults {
            env: vec!["A=1".into(), "PATH=/bin".into()],
            entrypoint: vec!["/entry".into()],
            cmd: vec!["default".into()],
            workdir: Some("/srv".into()),
            user: Some("app".into()),
        }
    }

    fn host(k: &str) -> Option<String> {
        (k == "FROM_HOST").then(|| "h".to_owned())
    }

    #[test]
    fn image_defaults_and_overrides() {
        let p = process(&image(), &ProcessOptions { hostname: "box".into(), ..Default::default() }, &host).unwrap();
        assert_eq!(p.args, ["/entry", "default"]);
        assert_eq!(p.cwd, "/srv");
        assert_eq!(p.user, "app");
        assert_eq!(
            p.env,
            [("A".into(), "1".into()), ("PATH".into(), "/bin".into()), ("HOSTNAME".into(), "box".into())]
        );

        let o = ProcessOptions {
            cmd: vec!["x".into()],
            workdir: Some("/w".into()),
            user: Some("0".into()),
            ..Default::default()
        };
        let p = process(&image(), &o, &host).unwrap();
        assert_eq!(p.args, ["/entry", "x"]);
        assert_eq!((p.cwd.as_str(), p.user.as_str()), ("/w", "0"));
    }

    #[test]
    fn entrypoint_flag_drops_image_cmd() {
        let o = ProcessOptions { entrypoint: Some("/bin/sh".into()), ..Default::default() };
        assert_eq!(process(&image(), &o, &host).unwrap().args, ["/bin/sh"]);
        let o = ProcessOptions { entrypoint: Some(String::new()), cmd: vec!["ls".into()], ..Default::default() };
        assert_eq!(process(&image(), &o, &host).unwrap().args, ["ls"]);
        let o = ProcessOptions { entrypoint: Some(String::new()), ..Default::default() };
        assert_eq!(process(&image(), &o, &host), Err(SpecError::NoCommand));
    }

    #[test]
    fn env_precedence_and_defaults() {
        let img = ImageDefaults { cmd: vec!["c".into()], env: vec!["A=1".into()], ..Default::default() };
        let o = ProcessOptions {
            env_files: vec!["# comment\nB=file\nA=file\n\nFROM_HOST\n".into()],
            env: vec!["A=flag".into(), "MISSING".into(), "FROM_HOST".into()],
            tty: true,
            ..Default::default()
        };
        let p = process(&img, &o, &host).unwrap();
        let get = |k: &str| p.env.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str());
        assert_eq!(get("A"), Some("flag"));
        assert_eq!(get("B"), Some("file"));
        assert_eq!(get("PATH"), Some(DEFAULT_PATH));
        assert_eq!(get("TERM"), Some("xterm"));
        assert_eq!(get("FROM_HOST"), Some("h"));
        assert_eq!(get("MISSING"), None);
        assert_eq!(p.cwd, "/");
        assert!(process(&img, &ProcessOptions { env: vec!["=x".into()], ..Default::default() }, &host).is_err());
        assert!(process(&img, &ProcessOptions { workdir: Some("rel".into()), ..Default::default() }, &host).is_err());
    }
}
