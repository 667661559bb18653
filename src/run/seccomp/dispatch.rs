//! A filter that finds a syscall's verdict by binary search over its number.
//!
//! seccompiler compiles each syscall's argument rules (the error-prone part: 64-bit
//! comparisons split into 32-bit halves, masks, chains of rules), but it dispatches on
//! the syscall number with a linear chain of comparisons: five instructions per listed
//! call, about 1,500 for the default allow-list. The kernel pays for that length twice:
//! once when the filter is installed (it converts, JIT-compiles and then emulates the
//! program for every syscall number to fill its cache of always-allowed calls: ~1.2 ms
//! here, the largest single cost of `coracle run`), and again on every syscall the app
//! makes that the cache does not cover (a walk of hundreds of instructions).
//!
//! This module keeps seccompiler for the rules and replaces only the dispatch: the
//! numbers are cut into ranges that share one verdict, and a balanced tree of `JGE`
//! comparisons finds the range in log2(ranges) steps (about 170 instructions for the
//! default profile, 8 comparisons deep). The tree is assembled from blocks whose jumps
//! are computed from the lengths of the blocks they skip, never written by hand, and
//! `tests` checks the result against seccompiler's own linear filters by running both
//! in a BPF interpreter for every syscall number, architecture and argument of interest.

use seccompiler::{sock_filter, BpfProgram, SeccompAction, SeccompRule};

/// What one syscall number gets.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// The same action whatever the arguments.
    Always(SeccompAction),
    /// The first rule whose conditions hold gives its action; `otherwise` when none does.
    Rules { rules: Vec<(SeccompRule, SeccompAction)>, otherwise: SeccompAction },
}

/// Classic BPF opcodes (linux/bpf_common.h) this module emits.
/// BPF_LD | BPF_W | BPF_ABS (0x00 | 0x00 | 0x20).
const LD_W_ABS: u16 = 0x20;
const JMP_JA: u16 = 0x05;
const JMP_JEQ_K: u16 = 0x05 | 0x10;
const JMP_JGE_K: u16 = 0x05 | 0x30;
const RET_K: u16 = 0x06;

/// Offsets in `struct seccomp_data`.
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;

/// The kernel's limit on a filter's length (BPF_MAXINSNS).
const MAX_LEN: usize = 4096;

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter { code, jt: 0, jf: 0, k }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// A run of syscall numbers `lo..` (up to the next range's `lo`) sharing a verdict.
struct Range<'a> {
    lo: u32,
    verdict: Leaf<'a>,
}

#[derive(Clone, Copy)]
enum Leaf<'a> {
    Action(u32),
    Rules(&'a [(SeccompRule, SeccompAction)], u32),
}

impl PartialEq for Leaf<'_> {
    /// Only plain actions merge into one range; a number with rules stays alone.
    fn eq(&self, other: &Self) -> bool {
        matches!((self, other), (Leaf::Action(a), Leaf::Action(b)) if a == b)
    }
}

/// Compiles `table` (verdicts by syscall number, in ascending order; every number not in
/// it, including the x32 ones with bit 30 set, gets `other`) into one filter for
/// `audit_arch`. A call made
/// through another architecture's entry point kills the process, as seccompiler's
/// filters do.
pub fn compile<'a>(
    table: impl IntoIterator<Item = (u32, &'a Verdict)>,
    other: SeccompAction,
    audit_arch: u32,
) -> Result<BpfProgram, String> {
    let other = u32::from(other);
    let mut ranges: Vec<Range> = Vec::new();
    // The first number no range covers yet.
    let mut next = 0u64;
    for (nr, verdict) in table {
        if u64::from(nr) < next {
            return Err(format!("syscall {nr} is out of order or twice in the table"));
        }
        if u64::from(nr) > next {
            push_range(&mut ranges, next as u32, Leaf::Action(other));
        }
        let leaf = match verdict {
            Verdict::Always(a) => Leaf::Action(u32::from(a.clone())),
            Verdict::Rules { rules, otherwise } => Leaf::Rules(rules, u32::from(otherwise.clone())),
        };
        push_range(&mut ranges, nr, leaf);
        next = u64::from(nr) + 1;
    }
    if let Ok(lo) = u32::try_from(next) {
        push_range(&mut ranges, lo, Leaf::Action(other));
    }
    let mut prog = vec![
        stmt(LD_W_ABS, ARCH_OFFSET),
        jump(JMP_JEQ_K, audit_arch, 1, 0),
        stmt(RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(LD_W_ABS, NR_OFFSET),
    ];
    prog.extend(tree(&ranges));
    if prog.len() > MAX_LEN {
        return Err(format!("the filter has {} instructions, more than the kernel's {MAX_LEN}", prog.len()));
    }
    Ok(prog)
}

fn push_range<'a>(ranges: &mut Vec<Range<'a>>, lo: u32, verdict: Leaf<'a>) {
    if ranges.last().is_some_and(|r| r.verdict == verdict) {
        return; // the same action as the numbers below: the range grows
    }
    ranges.push(Range { lo, verdict });
}

/// The code that finds the range of the number in the accumulator among `ranges`
/// (sorted, the first one's `lo` at or below the number) and applies its verdict.
fn tree(ranges: &[Range]) -> BpfProgram {
    if let [only] = ranges {
        return leaf(only.verdict);
    }
    let mid = ranges.len() / 2;
    let below = tree(&ranges[..mid]);
    let above = tree(&ranges[mid..]);
    let k = ranges[mid].lo;
    let mut out = Vec::with_capacity(2 + below.len() + above.len());
    match u8::try_from(below.len()) {
        // number >= k: skip the code for the lower half.
        Ok(skip) => out.push(jump(JMP_JGE_K, k, skip, 0)),
        Err(_) => {
            // Too far for a conditional jump: >= k falls through to an unconditional
            // jump over the lower half; < k skips that jump.
            out.push(jump(JMP_JGE_K, k, 0, 1));
            out.push(stmt(JMP_JA, u32::try_from(below.len()).expect("a filter is shorter than 4096")));
        }
    }
    out.extend(below);
    out.extend(above);
    out
}

/// A verdict's code. seccompiler's code for a rule falls through when every condition
/// holds and otherwise jumps one instruction past its end: each rule is followed by its
/// action, and the last by the number's `otherwise`.
fn leaf(verdict: Leaf) -> BpfProgram {
    match verdict {
        Leaf::Action(a) => vec![stmt(RET_K, a)],
        Leaf::Rules(rules, otherwise) => {
            let mut out = Vec::new();
            for (rule, action) in rules {
                out.extend(BpfProgram::from(rule.clone()));
                out.push(stmt(RET_K, u32::from(action.clone())));
            }
            out.push(stmt(RET_K, otherwise));
            out
        }
    }
}

/// A classic-BPF interpreter for seccomp filters, for tests: it refuses what the kernel's
/// checker refuses (jumps out of the program, a last instruction that is not a return,
/// loads outside `struct seccomp_data`) and every opcode seccomp filters here do not use.
#[cfg(test)]
pub(crate) mod interp {
    use seccompiler::sock_filter;

    /// `struct seccomp_data`.
    #[derive(Debug, Clone, Copy)]
    pub struct Data {
        pub nr: u32,
        pub arch: u32,
        pub ip: u64,
        pub args: [u64; 6],
    }

    impl Data {
        fn word(&self, k: u32) -> u32 {
            assert!(k.is_multiple_of(4) && k < 64, "load at offset {k}");
            let mut bytes = Vec::with_capacity(64);
            bytes.extend(self.nr.to_le_bytes());
            bytes.extend(self.arch.to_le_bytes());
            bytes.extend(self.ip.to_le_bytes());
            for a in self.args {
                bytes.extend(a.to_le_bytes());
            }
            let k = k as usize;
            u32::from_le_bytes(bytes[k..k + 4].try_into().unwrap())
        }
    }

    /// What the kernel checks before it accepts a filter.
    pub fn check(prog: &[sock_filter]) {
        assert!(!prog.is_empty() && prog.len() <= super::MAX_LEN, "length {}", prog.len());
        assert_eq!(prog.last().unwrap().code, super::RET_K, "the last instruction returns");
        for (pc, i) in prog.iter().enumerate() {
            let targets: Vec<usize> = match i.code {
                0x05 => vec![pc + 1 + i.k as usize],
                0x15 | 0x25 | 0x35 | 0x45 => vec![pc + 1 + usize::from(i.jt), pc + 1 + usize::from(i.jf)],
                _ => vec![],
            };
            for t in targets {
                assert!(t < prog.len(), "instruction {pc} jumps to {t}, past the end ({})", prog.len());
            }
        }
    }

    /// Runs one filter; its return value.
    pub fn run(prog: &[sock_filter], d: &Data) -> u32 {
        let mut a = 0u32;
        let mut pc = 0usize;
        loop {
            let i = prog.get(pc).unwrap_or_else(|| panic!("ran off the end at {pc}"));
            let skip = |cond: bool| usize::from(if cond { i.jt } else { i.jf });
            pc += 1 + match i.code {
                0x20 => {
                    a = d.word(i.k);
                    0
                }
                0x54 => {
                    a &= i.k;
                    0
                }
                0x05 => i.k as usize,
                0x15 => skip(a == i.k),
                0x25 => skip(a > i.k),
                0x35 => skip(a >= i.k),
                0x45 => skip(a & i.k != 0),
                0x06 => return i.k,
                other => panic!("opcode {other:#x} at {}", pc),
            };
        }
    }

    /// Runs filters as the kernel does (seccomp(2), "multiple filters"): all of them,
    /// the most recently installed first; the action of highest precedence wins, and
    /// among equal actions the first seen, with its data.
    pub fn run_all(progs: &[Vec<sock_filter>], d: &Data) -> u32 {
        let mut ret = u32::MAX;
        let mut first = true;
        for p in progs.iter().rev() {
            let r = run(p, d);
            let action = |v: u32| (v & libc::SECCOMP_RET_ACTION_FULL) as i32;
            if first || action(r) < action(ret) {
                ret = r;
                first = false;
            }
        }
        ret
    }
}

#[cfg(test)]
mod tests {
    use super::interp::{check, run, Data};
    use super::*;
    use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition};
    use std::collections::BTreeMap;

    const ARCH: u32 = 0xc000_003e;

    fn ret(a: &SeccompAction) -> u32 {
        u32::from(a.clone())
    }

    fn eq_rule(v: u64) -> SeccompRule {
        SeccompRule::new(vec![SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, v).unwrap()]).unwrap()
    }

    /// A table big enough that the lower half of most splits is more than a conditional
    /// jump (255 instructions) can skip: alternating actions over 900 numbers, with runs,
    /// gaps and numbers with rules among them.
    fn big_table() -> (BTreeMap<u32, Verdict>, Vec<(u32, u64)>) {
        let mut t = BTreeMap::new();
        let mut ruled = Vec::new();
        let mut x = 12345u64;
        for nr in 0..900u32 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let v = match (x >> 33) % 10 {
                0 => continue, // a gap: `other`
                1 => {
                    let value = x >> 40;
                    ruled.push((nr, value));
                    Verdict::Rules {
                        rules: vec![(eq_rule(value), SeccompAction::Allow), (eq_rule(value + 1), SeccompAction::Trap)],
                        otherwise: SeccompAction::Errno(1),
                    }
                }
                2..=5 => Verdict::Always(SeccompAction::Allow),
                6 | 7 => Verdict::Always(SeccompAction::Errno(nr % 4)),
                _ => Verdict::Always(SeccompAction::Log),
            };
            t.insert(nr, v);
        }
        (t, ruled)
    }

    #[test]
    fn long_jumps_and_rules_dispatch_exactly() {
        let (table, ruled) = big_table();
        let other = SeccompAction::Errno(38);
        let prog = compile(table.iter().map(|(n, v)| (*n, v)), other.clone(), ARCH).unwrap();
        check(&prog);
        assert!(prog.len() > 1000, "{}", prog.len());
        assert!(prog.iter().any(|i| i.code == JMP_JA), "the test reaches the long-jump form");
        for nr in (0..1000).chain([u32::MAX, 0x4000_0000]) {
            let value = ruled.iter().find(|(n, _)| *n == nr).map(|(_, v)| *v);
            let mut a0s = vec![0, u64::MAX];
            if let Some(v) = value {
                a0s.extend([v, v + 1, v + 2, v | 1 << 40]);
            }
            for a0 in a0s {
                let d = Data { nr, arch: ARCH, ip: 0, args: [a0, 0, 0, 0, 0, 0] };
                let want = match (table.get(&nr), value) {
                    (Some(Verdict::Rules { .. }), Some(v)) if a0 == v => ret(&SeccompAction::Allow),
                    (Some(Verdict::Rules { .. }), Some(v)) if a0 == v + 1 => ret(&SeccompAction::Trap),
                    (Some(Verdict::Rules { otherwise, .. }), _) => ret(otherwise),
                    (Some(Verdict::Always(a)), _) => ret(a),
                    (None, _) => ret(&other),
                };
                assert_eq!(run(&prog, &d), want, "nr {nr} arg0 {a0:#x}");
            }
        }
        let d = Data { nr: 1, arch: 0x4000_0003, ip: 0, args: [0; 6] };
        assert_eq!(run(&prog, &d), libc::SECCOMP_RET_KILL_PROCESS);
    }

    #[test]
    fn empty_table_and_table_at_the_top_of_the_range() {
        let other = SeccompAction::Errno(38);
        let prog = compile([], other.clone(), ARCH).unwrap();
        check(&prog);
        for nr in [0, 5, u32::MAX] {
            assert_eq!(run(&prog, &Data { nr, arch: ARCH, ip: 0, args: [0; 6] }), ret(&other));
        }
        let table = BTreeMap::from([(u32::MAX, Verdict::Always(SeccompAction::Allow))]);
        let prog = compile(table.iter().map(|(n, v)| (*n, v)), other.clone(), ARCH).unwrap();
        check(&prog);
        assert_eq!(run(&prog, &Data { nr: u32::MAX, arch: ARCH, ip: 0, args: [0; 6] }), libc::SECCOMP_RET_ALLOW);
        assert_eq!(run(&prog, &Data { nr: u32::MAX - 1, arch: ARCH, ip: 0, args: [0; 6] }), ret(&other));
    }

    #[test]
    fn too_long_is_an_error() {
        let table: BTreeMap<u32, Verdict> =
            (0..5000u32).map(|nr| (nr * 2, Verdict::Always(SeccompAction::Allow))).collect();
        assert!(compile(table.iter().map(|(n, v)| (*n, v)), SeccompAction::Errno(38), ARCH)
            .unwrap_err()
            .contains("4096"));
        let allow = Verdict::Always(SeccompAction::Allow);
        let err = compile([(2, &allow), (1, &allow)], SeccompAction::Errno(38), ARCH).unwrap_err();
        assert!(err.contains("out of order"), "{err}");
        let err = compile([(2, &allow), (2, &allow)], SeccompAction::Errno(38), ARCH).unwrap_err();
        assert!(err.contains("twice"), "{err}");
    }
}
