//! `--user` / image `User` resolution against the image's own /etc/passwd and /etc/group,
//! as docker and runc do it: names are looked up, numbers are taken as numbers (never as
//! names), a uid without a passwd entry runs with gid 0 and HOME=/, and supplementary
//! groups come from /etc/group memberships of the user's name.

/// Largest uid/gid accepted (docker and runc refuse ids above 2^31-1).
pub const MAX_ID: u64 = (1 << 31) - 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    #[error("user {0:?} not found in the image's /etc/passwd")]
    NoUser(String),
    #[error("group {0:?} not found in the image's /etc/group")]
    NoGroup(String),
    #[error("{0:?} is out of range: uids and gids must be 0 to 2147483647")]
    Range(String),
    #[error("invalid user spec {0:?}: expected USER[:GROUP] or UID[:GID]")]
    Invalid(String),
}

struct Passwd<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

struct Group<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn parse_passwd(s: &str) -> impl Iterator<Item = Passwd<'_>> {
    s.lines().filter(|l| !l.starts_with('#')).filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 7).then_some(())?;
        Some(Passwd { name: f[0], uid: f[2].parse().ok()?, gid: f[3].parse().ok()?, home: f[5] })
    })
}

fn parse_group(s: &str) -> impl Iterator<Item = Group<'_>> {
    s.lines().filter(|l| !l.starts_with('#')).filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4).then_some(())?;
        Some(Group {
            name: f[0],
            gid: f[2].parse().ok()?,
            members: f[3].split(',').filter(|m| !m.is_empty()).collect(),
        })
    })
}

fn numeric(s: &str) -> Result<Option<u32>, UserError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    match s.parse::<u64>() {
        Ok(n) if n <= MAX_ID => Ok(Some(n as u32)),
        _ => Err(UserError::Range(s.to_owned())),
    }
}

/// Resolves `spec` (`""`, `user`, `uid`, `user:group`, `uid:gid`, …) with the image's
/// passwd and group file contents (empty when the files are absent).
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<ExecUser, UserError> {
    let (user, grp) = match spec.split_once(':') {
        Some((_, g)) if g.is_empty() || g.contains(':') => return Err(UserError::Invalid(spec.to_owned())),
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user = if user.is_empty() { "0" } else { user };
    let entry = match numeric(user)? {
        Some(uid) => parse_passwd(passwd).find(|p| p.uid == uid),
        None => Some(parse_passwd(passwd).find(|p| p.name == user).ok_or_else(|| UserError::NoUser(user.to_owned()))?),
    };
    let uid = match (numeric(user)?, &entry) {
        (Some(uid), _) => uid,
        (None, Some(p)) => p.uid,
        (None, None) => unreachable!("named users were found above"),
    };
    let home = entry.as_ref().map_or("/", |p| p.home).to_owned();
    let home = if home.is_empty() { "/".to_owned() } else { home };
    let primary = entry.as_ref().map_or(0, |p| p.gid);
    let gid = match grp {
        None => primary,
        Some(g) => match numeric(g)? {
            Some(gid) => gid,
            None => parse_group(group)
                .find(|x| x.name == g)
                .map(|x| x.gid)
                .ok_or_else(|| UserError::NoGroup(g.to_owned()))?,
        },
    };
    // Supplementary groups: only when no group was forced (docker keeps them either way
    // for named users; runc adds them when the user has a passwd entry).
    let mut groups = Vec::new();
    if let Some(p) = &entry {
        for g in parse_group(group) {
            if g.members.contains(&p.name) && !groups.contains(&g.gid) {
                groups.push(g.gid);
            }
        }
    }
    if !groups.contains(&gid) {
        groups.insert(0, gid);
    }
    // Ids from the image's files get the same range check as numbers given by hand: a
    // uid of 4294967295 is (uid_t)-1, which setresuid takes as "leave unchanged" (the app
    // would stay root).
    let check = |what: &str, id: u32| {
        if u64::from(id) <= MAX_ID {
            Ok(())
        } else {
            Err(UserError::Range(format!("{what} {id} (from the image's /etc/passwd or /etc/group)")))
        }
    };
    check("uid", uid)?;
    check("gid", gid)?;
    for g in &groups {
        check("gid", *g)?;
    }
    Ok(ExecUser { uid, gid, groups, home })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n1234:x:77:77::/weird:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:app\napp:x:1000:\naudio:x:29:app,other\n";

    #[test]
    fn out_of_range_ids_from_the_images_files_are_refused() {
        let passwd = "evil:x:4294967295:0::/:/bin/sh\nbig:x:3000000000:0::/:/bin/sh\nok:x:5:4294967295::/:/bin/sh\n";
        let group = "huge:x:4294967295:ok2\n";
        for spec in ["evil", "big", "ok", "0:huge"] {
            assert!(matches!(resolve(spec, passwd, group), Err(UserError::Range(_))), "{spec}");
        }
        let passwd2 = "ok2:x:7:7::/:/bin/sh\n";
        assert!(matches!(resolve("ok2", passwd2, group), Err(UserError::Range(_))), "supplementary group");
    }

    #[test]
    fn names_and_numbers() {
        let root = resolve("", PASSWD, GROUP).unwrap();
        assert_eq!((root.uid, root.gid, root.home.as_str()), (0, 0, "/root"));
        let app = resolve("app", PASSWD, GROUP).unwrap();
        assert_eq!((app.uid, app.gid, app.home.as_str()), (1000, 1000, "/home/app"));
        assert_eq!(app.groups, vec![1000, 10, 29]);
        let by_uid = resolve("1000", PASSWD, GROUP).unwrap();
        assert_eq!(by_uid, app);
        assert_eq!(resolve("app:wheel", PASSWD, GROUP).unwrap().gid, 10);
        assert_eq!(resolve("app:5", PASSWD, GROUP).unwrap().gid, 5);
    }

    #[test]
    fn numeric_uid_is_never_a_name() {
        // "1234" is a user *name* in this passwd, with uid 77; as --user it means uid 1234.
        let u = resolve("1234", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (1234, 0, "/"));
    }

    #[test]
    fn errors() {
        assert_eq!(resolve("nobody", PASSWD, GROUP), Err(UserError::NoUser("nobody".into())));
        assert_eq!(resolve("app:nogroup", PASSWD, GROUP), Err(UserError::NoGroup("nogroup".into())));
        assert_eq!(resolve("2147483648", PASSWD, GROUP), Err(UserError::Range("2147483648".into())));
        assert_eq!(resolve("0:99999999999", PASSWD, GROUP), Err(UserError::Range("99999999999".into())));
        assert!(matches!(resolve("a:b:c", PASSWD, GROUP), Err(UserError::Invalid(_))));
        assert!(matches!(resolve("a:", PASSWD, GROUP), Err(UserError::Invalid(_))));
    }
}
