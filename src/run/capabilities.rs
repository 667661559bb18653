//! The capability set of the container's process: podman's default set, adjusted by
//! `--cap-add`/`--cap-drop` (names with or without `CAP_`, any case; `ALL`), or every
//! capability the kernel has with `--privileged`.

use caps::{Capability, CapsHashSet};

pub const DEFAULT: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
    Capability::CAP_KILL,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETGID,
    Capability::CAP_SETPCAP,
    Capability::CAP_SETUID,
    Capability::CAP_SYS_CHROOT,
];

/// The capabilities coracle itself can pass on: in both its bounding and permitted sets
/// (a supervisor, systemd's `CapabilityBoundingSet=`, or a parent container may have
/// narrowed them). One capget(2) and one PR_CAPBSET_READ per capability: a few
/// microseconds, where reading /proc/self/status (which the kernel renders whole, memory
/// statistics and all) took ~30.
pub fn own() -> CapsHashSet {
    match (caps::read(None, caps::CapSet::Bounding), caps::read(None, caps::CapSet::Permitted)) {
        (Ok(mut bounding), Ok(permitted)) => {
            bounding.retain(|c| permitted.contains(c));
            bounding
        }
        _ => CapsHashSet::new(),
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown capability {0:?}")]
pub struct UnknownCap(pub String);

enum Name {
    All,
    One(Capability),
}

fn parse(name: &str) -> Result<Name, UnknownCap> {
    let upper = name.to_ascii_uppercase();
    if upper == "ALL" {
        return Ok(Name::All);
    }
    let full = if upper.starts_with("CAP_") { upper } else { format!("CAP_{upper}") };
    full.parse().map(Name::One).map_err(|_| UnknownCap(name.to_owned()))
}

/// The final set. Drops apply before adds, as in docker (`--cap-drop ALL --cap-add X`
/// leaves X).
pub fn compute(
    add: &[String],
    drop: &[String],
    privileged: bool,
    supported: &CapsHashSet,
) -> Result<CapsHashSet, UnknownCap> {
    let mut set: CapsHashSet = if privileged { supported.clone() } else { DEFAULT.iter().copied().collect() };
    for d in drop {
        match parse(d)? {
            Name::All => set.clear(),
            Name::One(c) => {
                set.remove(&c);
            }
        }
    }
    for a in add {
        match parse(a)? {
            Name::All => set.extend(supported.iter().copied()),
            Name::One(c) => {
                set.insert(c);
            }
        }
    }
    set.retain(|c| supported.contains(c));
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_set_matches_what_proc_self_status_says() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let mask = |key: &str| {
            let v = status.lines().find_map(|l| l.strip_prefix(key)).unwrap();
            u64::from_str_radix(v.trim(), 16).unwrap()
        };
        let both = mask("CapBnd:") & mask("CapPrm:");
        let expected: CapsHashSet = caps::all().into_iter().filter(|c| both >> c.index() & 1 == 1).collect();
        assert_eq!(own(), expected);
    }

    #[test]
    fn add_drop_all() {
        let all = caps::all();
        let s = compute(&[], &[], false, &all).unwrap();
        assert_eq!(s.len(), DEFAULT.len());
        let s = compute(&["net_admin".into()], &["CAP_CHOWN".into()], false, &all).unwrap();
        assert!(s.contains(&Capability::CAP_NET_ADMIN) && !s.contains(&Capability::CAP_CHOWN));
        let s = compute(&["KILL".into()], &["ALL".into()], false, &all).unwrap();
        assert_eq!(s, [Capability::CAP_KILL].into_iter().collect());
        assert_eq!(compute(&[], &[], true, &all).unwrap(), all);
        assert_eq!(compute(&["bogus".into()], &[], false, &all), Err(UnknownCap("bogus".into())));
    }
}
