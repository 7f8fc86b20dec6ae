//! `tracer check`: does the kernel side load here, and how close is it to
//! the verifier's limits? Loads the program in summary and in events mode
//! (each verified separately: the filters and the event switch are
//! load-time constants), reports the instructions the verifier processed
//! (of its 1 000 000 limit) and the stack the deepest call chain uses (of
//! 512 bytes), then detaches.

use std::collections::HashMap;

use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget, SymbolKind};
use serde::Serialize;

use crate::probe::{Probe, ProbeOptions, OBJECT_BYTES};

/// The verifier's limits (kernel/bpf/verifier.c: BPF_COMPLEXITY_LIMIT_INSNS,
/// MAX_BPF_STACK).
pub const INSN_LIMIT: u32 = 1_000_000;
pub const STACK_LIMIT: u32 = 512;

#[derive(Clone, Debug, Serialize)]
pub struct ModeCheck {
    pub mode: &'static str,
    pub loaded: bool,
    /// Instructions the verifier processed (Linux ≥ 5.16 reports it).
    pub verified_insns: Option<u32>,
    /// The same for the listener-side program (`probe::SYNACK_PROGRAM`).
    pub synack_verified_insns: Option<u32>,
    /// The same for `probe::QUEUE_DROP_PROGRAM` (events mode, Linux 6.12+).
    pub queue_drop_verified_insns: Option<u32>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub kernel: String,
    pub modes: Vec<ModeCheck>,
    /// Stack of the deepest call chain from the program's entry, each frame
    /// rounded as Linux 6.1+ charges it (to 32 bytes), and its frames.
    pub stack_bytes: u32,
    pub stack_frames: Vec<u32>,
}

/// Load, report, detach, for both modes.
pub fn run() -> anyhow::Result<Check> {
    let modes = [("summary", false), ("events", true)]
        .into_iter()
        .map(|(mode, emit_events)| {
            let opts = ProbeOptions {
                emit_events,
                ..Default::default()
            };
            let stats = Probe::attach(&opts).and_then(|p| {
                Ok((
                    p.run_stats()?,
                    p.synack_run_stats()?,
                    p.queue_drop_run_stats()?,
                ))
            });
            match stats {
                Ok((s, l, q)) => ModeCheck {
                    mode,
                    loaded: true,
                    verified_insns: s.verified_insns,
                    synack_verified_insns: l.verified_insns,
                    queue_drop_verified_insns: q.and_then(|q| q.verified_insns),
                    error: None,
                },
                Err(e) => ModeCheck {
                    mode,
                    loaded: false,
                    verified_insns: None,
                    synack_verified_insns: None,
                    queue_drop_verified_insns: None,
                    error: Some(format!("{e:#}")),
                },
            }
        })
        .collect();
    let frames = stack_chain(OBJECT_BYTES, crate::probe::PROGRAM).unwrap_or_default();
    Ok(Check {
        kernel: kernel_release(),
        modes,
        stack_bytes: frames.iter().sum(),
        stack_frames: frames,
    })
}

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

pub fn render(c: &Check) -> String {
    let mut o = format!("kernel {}\n", c.kernel);
    for m in &c.modes {
        match (&m.error, m.verified_insns) {
            (Some(e), _) => o += &format!("{:<8} REJECTED: {e}\n", m.mode),
            (None, Some(n)) => {
                o += &format!(
                    "{:<8} loaded: {n} instructions verified ({:.1}% of {INSN_LIMIT})\n",
                    m.mode,
                    100.0 * n as f64 / INSN_LIMIT as f64
                );
                let others = [
                    (crate::probe::SYNACK_PROGRAM, m.synack_verified_insns),
                    (
                        crate::probe::QUEUE_DROP_PROGRAM,
                        m.queue_drop_verified_insns,
                    ),
                ];
                for (program, insns) in others {
                    if let Some(l) = insns {
                        o += &format!("{:<8} {program}: {l} instructions verified\n", "");
                    }
                }
            }
            (None, None) => {
                o += &format!(
                    "{:<8} loaded (the kernel does not report verified instructions)\n",
                    m.mode
                )
            }
        }
    }
    o += &format!(
        "stack    {} bytes on the deepest call chain (frames {:?}; limit {STACK_LIMIT})\n",
        c.stack_bytes, c.stack_frames
    );
    o
}

/// The frames (rounded up to 32 bytes each) of the deepest stack chain that
/// starts at the function `entry`, read from the object itself: a frame is
/// the lowest r10-relative access of the function; calls are BPF-to-BPF
/// calls, by relocation or by relative offset.
pub fn stack_chain(obj: &[u8], entry: &str) -> Option<Vec<u32>> {
    let file = object::File::parse(obj).ok()?;
    let funcs = functions(&file);
    let mut best = HashMap::new();
    Some(deepest(entry, &funcs, &mut best, 0))
}

/// A call site's target: a named function, or an instruction offset of a
/// section (against a section symbol, the call's immediate gives the offset).
enum Target {
    Named(String),
    At(usize),
}

fn functions(file: &object::File) -> HashMap<String, Func> {
    let by_addr: HashMap<(usize, u64), String> = file
        .symbols()
        .filter(|s| s.kind() == SymbolKind::Text)
        .filter_map(|s| {
            Some((
                (s.section_index()?.0, s.address()),
                s.name().ok()?.to_string(),
            ))
        })
        .collect();
    let mut out = HashMap::new();
    for sym in file.symbols() {
        if sym.kind() != SymbolKind::Text || sym.size() == 0 {
            continue;
        }
        let (Ok(name), Some(idx)) = (sym.name(), sym.section_index()) else {
            continue;
        };
        let Ok(section) = file.section_by_index(idx) else {
            continue;
        };
        let Ok(data) = section.data() else { continue };
        let relocs: HashMap<u64, Target> = section
            .relocations()
            .filter_map(|(off, r)| match r.target() {
                RelocationTarget::Symbol(i) => {
                    let s = file.symbol_by_index(i).ok()?;
                    Some((
                        off,
                        match s.kind() {
                            SymbolKind::Section => Target::At(s.section_index()?.0),
                            _ => Target::Named(s.name().ok()?.to_string()),
                        },
                    ))
                }
                _ => None,
            })
            .collect();
        let start = sym.address() as usize;
        let end = (start + sym.size() as usize).min(data.len());
        let mut f = scan(&data[start..end], start, idx.0, &relocs);
        f.calls = f
            .calls
            .into_iter()
            .filter_map(|c| by_addr.get(&(c.0, c.1)).cloned().or(c.2))
            .map(|n| (0, 0, Some(n)))
            .collect();
        out.insert(name.to_string(), f);
    }
    out
}

/// One function of the object: the stack it uses and the functions it
/// calls, as (section, address, name) — the name when a relocation gave it.
struct Func {
    stack: u32,
    calls: Vec<(usize, u64, Option<String>)>,
}

/// Stack use and call sites of one function's instructions.
fn scan(code: &[u8], base: usize, section: usize, relocs: &HashMap<u64, Target>) -> Func {
    let mut f = Func {
        stack: 0,
        calls: Vec::new(),
    };
    for (i, ins) in code.chunks_exact(8).enumerate() {
        let (op, regs) = (ins[0], ins[1]);
        let (dst, src) = (regs & 0xf, regs >> 4);
        let off = i16::from_le_bytes([ins[2], ins[3]]) as i32;
        let uses_fp = match op & 0x07 {
            0x01 => src == 10,        // LDX
            0x02 | 0x03 => dst == 10, // ST, STX
            _ => false,
        };
        if uses_fp && off < 0 {
            f.stack = f.stack.max((-off) as u32);
        }
        if op != 0x85 || src != 1 {
            continue;
        }
        let at = (base + i * 8) as u64;
        let imm = i32::from_le_bytes([ins[4], ins[5], ins[6], ins[7]]) as i64;
        f.calls.push(match relocs.get(&at) {
            Some(Target::Named(n)) => (usize::MAX, 0, Some(n.clone())),
            // Against a section symbol, the immediate holds the target's
            // instruction index minus one.
            Some(Target::At(sec)) => (*sec, ((imm + 1) * 8) as u64, None),
            None => (section, (at as i64 + 8 + imm * 8) as u64, None),
        });
    }
    f
}

fn deepest(
    name: &str,
    funcs: &HashMap<String, Func>,
    memo: &mut HashMap<String, Vec<u32>>,
    depth: u32,
) -> Vec<u32> {
    if let Some(v) = memo.get(name) {
        return v.clone();
    }
    let Some(f) = funcs.get(name) else {
        return Vec::new();
    };
    let frame = f.stack.max(1).div_ceil(32) * 32;
    let mut chain = vec![frame];
    if depth < 16 {
        let longest = f
            .calls
            .iter()
            .filter_map(|c| c.2.as_deref())
            .map(|c| deepest(c, funcs, memo, depth + 1))
            .max_by_key(|v| v.iter().sum::<u32>())
            .unwrap_or_default();
        chain.extend(longest);
    }
    memo.insert(name.to_string(), chain.clone());
    chain
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-assembled: `r1 = 0; *(u64 *)(r10 - 40) = r1; call +1; exit`,
    /// then a callee with a 3-byte frame.
    #[test]
    fn scan_finds_frames_and_relative_calls() {
        let ins = |op: u8, regs: u8, off: i16, imm: i32| {
            let mut v = vec![op, regs];
            v.extend_from_slice(&off.to_le_bytes());
            v.extend_from_slice(&imm.to_le_bytes());
            v
        };
        let mut code = Vec::new();
        code.extend(ins(0xb7, 0x01, 0, 0));
        code.extend(ins(0x7b, 0x1a, -40, 0)); // stx dst=r10 src=r1
        code.extend(ins(0x85, 0x10, 0, 1)); // pseudo call +1
        code.extend(ins(0x95, 0, 0, 0));
        let f = scan(&code, 0, 3, &HashMap::new());
        assert_eq!(f.stack, 40);
        assert_eq!(f.calls, vec![(3, 32, None)]);
        let mut funcs = HashMap::new();
        funcs.insert(
            "main".to_string(),
            Func {
                stack: f.stack,
                calls: vec![(3, 32, Some("sub".into()))],
            },
        );
        funcs.insert(
            "sub".into(),
            Func {
                stack: 3,
                calls: vec![],
            },
        );
        assert_eq!(
            deepest("main", &funcs, &mut HashMap::new(), 0),
            vec![64, 32]
        );
    }

    #[test]
    fn the_real_object_fits_the_stack() {
        if OBJECT_BYTES.is_empty() {
            return; // built without bpf-linker
        }
        let frames = stack_chain(OBJECT_BYTES, crate::probe::PROGRAM).expect("parses");
        assert!(!frames.is_empty());
        assert!(frames.iter().sum::<u32>() <= STACK_LIMIT, "{frames:?}");
    }
}
