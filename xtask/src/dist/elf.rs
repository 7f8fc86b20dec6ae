//! Just enough ELF64 to tell a static executable from a dynamic one: no
//! `PT_INTERP` (no program loader asked for) and no `DT_NEEDED` entry (no
//! shared library), so it starts on a root filesystem with no libc at all.
//! A static-pie binary (what Rust's musl targets make) has a `PT_DYNAMIC`
//! segment for its own relocations, but nothing in it names a library.

use anyhow::{bail, ensure, Context as _, Result};

pub const EM_X86_64: u16 = 62;
pub const EM_AARCH64: u16 = 183;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;

fn u16_at(b: &[u8], off: usize) -> Result<u16> {
    let s = b.get(off..off + 2).context("truncated ELF")?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], off: usize) -> Result<u32> {
    let s = b.get(off..off + 4).context("truncated ELF")?;
    Ok(u32::from_le_bytes(s.try_into()?))
}

fn u64_at(b: &[u8], off: usize) -> Result<u64> {
    let s = b.get(off..off + 8).context("truncated ELF")?;
    Ok(u64::from_le_bytes(s.try_into()?))
}

/// `Ok` when `bytes` is a little-endian ELF64 executable for `machine` that
/// needs no program interpreter and no shared library.
pub fn check_static(bytes: &[u8], machine: u16) -> Result<()> {
    ensure!(bytes.starts_with(b"\x7fELF"), "not an ELF file");
    ensure!(
        bytes.get(4) == Some(&2) && bytes.get(5) == Some(&1),
        "not a little-endian ELF64 file"
    );
    let got = u16_at(bytes, 18)?;
    ensure!(got == machine, "e_machine {got}, expected {machine}");
    let phoff = usize::try_from(u64_at(bytes, 32)?)?;
    let phentsize = usize::from(u16_at(bytes, 54)?);
    let phnum = usize::from(u16_at(bytes, 56)?);
    ensure!(phnum > 0 && phentsize >= 56, "no program headers");
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        match u32_at(bytes, ph)? {
            PT_INTERP => bail!("has a PT_INTERP segment (dynamically linked)"),
            PT_DYNAMIC => {
                let off = usize::try_from(u64_at(bytes, ph + 8)?)?;
                let len = usize::try_from(u64_at(bytes, ph + 32)?)?;
                for entry in (off..off + len).step_by(16) {
                    match u64_at(bytes, entry)? {
                        DT_NULL => break,
                        DT_NEEDED => bail!("needs a shared library (DT_NEEDED)"),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ELF64 header with `phdrs` program headers (type, offset, size) and
    /// `tail` appended after them.
    fn elf(machine: u16, phdrs: &[(u32, u64, u64)], tail: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..6].copy_from_slice(b"\x7fELF\x02\x01");
        b[18..20].copy_from_slice(&machine.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
        for &(ty, off, size) in phdrs {
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&ty.to_le_bytes());
            ph[8..16].copy_from_slice(&off.to_le_bytes());
            ph[32..40].copy_from_slice(&size.to_le_bytes());
            b.extend(ph);
        }
        b.extend_from_slice(tail);
        b
    }

    fn dyn_entries(entries: &[(u64, u64)]) -> Vec<u8> {
        entries
            .iter()
            .flat_map(|(t, v)| t.to_le_bytes().into_iter().chain(v.to_le_bytes()))
            .collect()
    }

    #[test]
    fn static_pie_without_needed_passes() {
        let tail = dyn_entries(&[(0x6ffffffb, 8), (DT_NULL, 0)]); // DT_FLAGS_1, then end
        let b = elf(
            EM_X86_64,
            &[(1, 0, 0), (PT_DYNAMIC, 64 + 2 * 56, tail.len() as u64)],
            &tail,
        );
        check_static(&b, EM_X86_64).unwrap();
    }

    #[test]
    fn interpreter_or_needed_library_or_wrong_machine_fails() {
        let b = elf(EM_X86_64, &[(PT_INTERP, 0, 0)], &[]);
        assert!(check_static(&b, EM_X86_64).is_err());
        let tail = dyn_entries(&[(DT_NEEDED, 1), (DT_NULL, 0)]);
        let b = elf(
            EM_AARCH64,
            &[(PT_DYNAMIC, 64 + 56, tail.len() as u64)],
            &tail,
        );
        assert!(check_static(&b, EM_AARCH64).is_err());
        let b = elf(EM_AARCH64, &[(1, 0, 0)], &[]);
        assert!(check_static(&b, EM_X86_64).is_err());
        assert!(check_static(b"#!/bin/sh\n", EM_X86_64).is_err());
        assert!(check_static(&b[..40], EM_AARCH64).is_err());
    }

    #[test]
    fn this_dynamically_linked_xtask_fails() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let machine = if cfg!(target_arch = "aarch64") {
            EM_AARCH64
        } else {
            EM_X86_64
        };
        let err = check_static(&me, machine).unwrap_err().to_string();
        assert!(err.contains("PT_INTERP"), "{err}");
    }
}
