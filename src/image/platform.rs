//! Platform matching for image indexes, with the variant rules of containerd's platform
//! matcher: `arm64` means `arm64/v8`; an `arm/v7` host also runs v6 and v5 images
//! (preferring the newest); an `amd64` host runs v1 and each microarchitecture level its
//! CPU supports, preferring the highest.

use crate::store::images::Platform;

use super::manifest::PlatformSpec;

/// The platform this process runs on.
pub fn host() -> Platform {
    let (architecture, variant) = match std::env::consts::ARCH {
        "x86_64" => ("amd64", None),
        "aarch64" => ("arm64", Some("v8")),
        "arm" => ("arm", Some("v7")),
        "x86" => ("386", None),
        "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
        "powerpc64" => ("ppc64", None),
        "riscv64" => ("riscv64", None),
        "s390x" => ("s390x", None),
        other => (other, None),
    };
    Platform { os: "linux".into(), architecture: architecture.into(), variant: variant.map(Into::into) }
}

/// Normalises architecture aliases and default variants.
pub fn normalize(os: &str, arch: &str, variant: Option<&str>) -> Platform {
    let variant = variant.filter(|v| !v.is_empty());
    let (arch, variant) = match (arch, variant) {
        ("x86_64" | "x86-64" | "amd64", Some("v1") | None) => ("amd64", None),
        ("x86_64" | "x86-64" | "amd64", v) => ("amd64", v),
        ("aarch64" | "arm64", Some("8") | Some("v8") | None) => ("arm64", Some("v8")),
        ("aarch64" | "arm64", v) => ("arm64", v),
        ("armhf", _) => ("arm", Some("v7")),
        ("armel", _) => ("arm", Some("v6")),
        ("arm", None) => ("arm", Some("v7")),
        ("arm", Some(v)) => ("arm", Some(if v.starts_with('v') { v } else { leak_v(v) })),
        ("i386" | "i486" | "i586" | "i686", _) => ("386", None),
        (a, v) => (a, v),
    };
    Platform { os: os.to_ascii_lowercase(), architecture: arch.into(), variant: variant.map(Into::into) }
}

fn leak_v(v: &str) -> &'static str {
    match v {
        "5" => "v5",
        "6" => "v6",
        "8" => "v8",
        _ => "v7",
    }
}

/// How well an image for `have` suits a host `want`: `None` if it cannot run, otherwise
/// a preference (higher is better).
pub fn score(want: &Platform, have: &PlatformSpec) -> Option<u32> {
    let want = normalize(&want.os, &want.architecture, want.variant.as_deref());
    let have = normalize(&have.os, &have.architecture, have.variant.as_deref());
    if want.os != have.os || want.architecture != have.architecture {
        return None;
    }
    let level = |v: Option<&str>| v.and_then(|v| v.strip_prefix('v')).and_then(|n| n.parse::<u32>().ok());
    match want.architecture.as_str() {
        "arm" => {
            let (w, h) = (level(want.variant.as_deref())?, level(have.variant.as_deref())?);
            (h <= w).then_some(h)
        }
        "amd64" => {
            let max = match want.variant.as_deref() {
                Some(v) => level(Some(v)).unwrap_or(1),
                None => amd64_host_level(),
            };
            let h = level(have.variant.as_deref()).unwrap_or(1);
            (h <= max).then_some(h)
        }
        _ => (want.variant == have.variant).then_some(1),
    }
}

/// The x86-64 microarchitecture level of this CPU (psABI v2/v3/v4).
fn amd64_host_level() -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512bw") && has!("avx512cd") && has!("avx512dq") && has!("avx512vl") {
            return 4;
        }
        if has!("avx2") && has!("bmi1") && has!("bmi2") && has!("fma") && has!("lzcnt") && has!("movbe") {
            return 3;
        }
        if has!("sse4.2") && has!("popcnt") && has!("ssse3") && has!("cmpxchg16b") {
            return 2;
        }
    }
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(arch: &str, variant: Option<&str>) -> PlatformSpec {
        PlatformSpec { os: "linux".into(), architecture: arch.into(), variant: variant.map(Into::into) }
    }
    fn plat(arch: &str, variant: Option<&str>) -> Platform {
        Platform { os: "linux".into(), architecture: arch.into(), variant: variant.map(Into::into) }
    }

    #[test]
    fn arm_variants() {
        let v7 = plat("arm", Some("v7"));
        assert!(score(&v7, &spec("arm", Some("v7"))) > score(&v7, &spec("arm", Some("v6"))));
        assert!(score(&v7, &spec("arm", Some("v6"))).is_some());
        assert!(score(&plat("arm", Some("v6")), &spec("arm", Some("v7"))).is_none());
        assert!(score(&plat("arm64", Some("v8")), &spec("arm64", None)).is_some());
        assert!(score(&plat("arm64", None), &spec("arm64", Some("v8"))).is_some());
        assert!(score(&v7, &spec("arm64", Some("v8"))).is_none());
    }

    #[test]
    fn amd64_levels() {
        let v2 = plat("amd64", Some("v2"));
        assert!(score(&v2, &spec("amd64", None)).is_some());
        assert!(score(&v2, &spec("amd64", Some("v2"))) > score(&v2, &spec("amd64", None)));
        assert!(score(&v2, &spec("amd64", Some("v3"))).is_none());
        assert!(score(&plat("amd64", None), &spec("x86_64", None)).is_some());
        assert!(score(&plat("amd64", None), &spec("arm64", None)).is_none());
        let mut win = spec("amd64", None);
        win.os = "windows".into();
        assert!(score(&plat("amd64", None), &win).is_none());
    }
}
