//! Kernel field offsets from the running kernel's BTF.
//!
//! aya applies no CO-RE relocations to objects built from Rust, so the eBPF
//! program reads `struct sock`/`tcp_sock` fields at offsets computed here from
//! /sys/kernel/btf/vmlinux and handed over as a load-time global.

use btf_rs::{Btf, Type};
use tracer_common::Offsets;

#[derive(Debug, thiserror::Error)]
pub enum OffsetError {
    // `cause`, not `source`: the message already says it, once.
    #[error("cannot read kernel BTF at {path}: {cause}")]
    Read { path: String, cause: btf_rs::Error },
    #[error("kernel BTF has no struct `{0}`")]
    NoStruct(String),
    #[error("kernel BTF: struct `{0}` has no field `{1}`")]
    NoField(String, String),
    #[error("kernel BTF: `{0}.{1}` is a bitfield, which the programs cannot read")]
    Bitfield(String, String),
}

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Offsets of every field the programs read, from the running kernel.
pub fn from_kernel() -> Result<Offsets, OffsetError> {
    from_file(std::path::Path::new(VMLINUX_BTF))
}

/// The same from the BTF at `path` (`--btf`).
pub fn from_file(path: &std::path::Path) -> Result<Offsets, OffsetError> {
    // mmap and read on demand: parsing the whole ~5 MB vmlinux BTF into the
    // cache took ~0.3 s and ~25 MB of peak RSS for the dozen fields we need
    // (benchmarks, docs/BENCHMARKS.md). Kernels whose sysfs BTF file cannot
    // be mmapped fall back to reading it.
    let btf = Btf::from_file_with_backend(path, btf_rs::Backend::Mmap)
        .or_else(|_| Btf::from_file(path))
        .map_err(|cause| OffsetError::Read {
            path: path.display().to_string(),
            cause,
        })?;
    compute(&btf)
}

pub fn compute(btf: &Btf) -> Result<Offsets, OffsetError> {
    let sk = |field: &str| offset_of(btf, "sock", &["__sk_common", field]);
    Ok(Offsets {
        skc_daddr: sk("skc_daddr")?,
        skc_rcv_saddr: sk("skc_rcv_saddr")?,
        skc_dport: sk("skc_dport")?,
        skc_num: sk("skc_num")?,
        skc_family: sk("skc_family")?,
        skc_v6_daddr: sk("skc_v6_daddr")?,
        skc_v6_rcv_saddr: sk("skc_v6_rcv_saddr")?,
        skc_net: sk("skc_net")?,
        net_ns_inum: offset_of(btf, "net", &["ns", "inum"])?,
        sk_protocol: offset_of(btf, "sock", &["sk_protocol"])?,
        sk_err: offset_of(btf, "sock", &["sk_err"])?,
        // Linux 6.18 moved it into sock_common (`#define sk_flags __sk_common.skc_flags`).
        sk_flags: offset_of(btf, "sock", &["sk_flags"])
            .or_else(|_| offset_of(btf, "sock", &["__sk_common", "skc_flags"]))?,
        srtt_us: offset_of(btf, "tcp_sock", &["srtt_us"])?,
        total_retrans: offset_of(btf, "tcp_sock", &["total_retrans"])?,
        bytes_received: offset_of(btf, "tcp_sock", &["bytes_received"])?,
        bytes_acked: offset_of(btf, "tcp_sock", &["bytes_acked"])?,
        inet_sport: offset_of(btf, "inet_sock", &["inet_sport"])?,
        skb_head: offset_of(btf, "sk_buff", &["head"])?,
        skb_network_header: offset_of(btf, "sk_buff", &["network_header"])?,
        skb_transport_header: offset_of(btf, "sk_buff", &["transport_header"])?,
        listen_overflow_reason: listen_overflow_reason(btf).unwrap_or(0),
        unspecified_reason: drop_reason(btf, "SKB_DROP_REASON_NOT_SPECIFIED").unwrap_or(0),
        skc_state: sk("skc_state")?,
        valid: 1,
    })
}

/// `SKB_DROP_REASON_TCP_LISTEN_OVERFLOW`, when the kernel has that drop
/// reason and its `kfree_skb` tracepoint passes the receiving socket
/// (`rx_sk`, Linux 6.12+: five parameters with the leading `void *`).
/// Without both the queue-drop program is not attached.
pub fn listen_overflow_reason(btf: &Btf) -> Option<u32> {
    let proto = btf
        .resolve_types_by_name("btf_trace_kfree_skb")
        .ok()?
        .into_iter()
        .find_map(|t| match resolve(btf, t) {
            Type::Ptr(p) => match btf.resolve_chained_type(&p).ok()? {
                Type::FuncProto(f) => Some(f),
                _ => None,
            },
            _ => None,
        })?;
    if proto.parameters.len() < 5 {
        return None;
    }
    drop_reason(btf, "SKB_DROP_REASON_TCP_LISTEN_OVERFLOW")
}

/// The value of `name` in this kernel's `enum skb_drop_reason`.
fn drop_reason(btf: &Btf, name: &str) -> Option<u32> {
    btf.resolve_types_by_name("skb_drop_reason")
        .ok()?
        .into_iter()
        .find_map(|t| match t {
            Type::Enum(e) => e
                .members
                .iter()
                .find_map(|m| (btf.resolve_name(m).ok()? == name).then(|| m.val())),
            _ => None,
        })
}

/// Byte offset of `path` (nested member names; anonymous structs/unions on
/// the way are searched transparently) inside `struct name`.
pub fn offset_of(btf: &Btf, name: &str, path: &[&str]) -> Result<u32, OffsetError> {
    let mut ty = btf
        .resolve_types_by_name(name)
        .map_err(|_| OffsetError::NoStruct(name.into()))?
        .into_iter()
        .find(|t| matches!(t, Type::Struct(_)))
        .ok_or_else(|| OffsetError::NoStruct(name.into()))?;
    let mut bits = 0u32;
    for field in path {
        let (off, next) = find_member(btf, &ty, field)
            .ok_or_else(|| OffsetError::NoField(name.into(), path.join(".")))?;
        bits += off;
        ty = next;
    }
    if !bits.is_multiple_of(8) {
        return Err(OffsetError::Bitfield(name.into(), path.join(".")));
    }
    Ok(bits / 8)
}

/// Strip typedefs and qualifiers.
fn resolve(btf: &Btf, mut ty: Type) -> Type {
    for _ in 0..32 {
        let next = match &ty {
            Type::Typedef(t) => btf.resolve_chained_type(t),
            Type::Const(t) => btf.resolve_chained_type(t),
            Type::Volatile(t) => btf.resolve_chained_type(t),
            Type::Restrict(t) => btf.resolve_chained_type(t),
            Type::TypeTag(t) => btf.resolve_chained_type(t),
            _ => return ty,
        };
        match next {
            Ok(n) => ty = n,
            Err(_) => return ty,
        }
    }
    ty
}

/// Find `field` in a struct/union, descending into anonymous members; returns
/// its bit offset from the start of `ty` and its (resolved) type.
fn find_member(btf: &Btf, ty: &Type, field: &str) -> Option<(u32, Type)> {
    let members = match ty {
        Type::Struct(s) | Type::Union(s) => &s.members,
        _ => return None,
    };
    for m in members {
        let name = btf.resolve_name(m).unwrap_or_default();
        let mty = resolve(btf, btf.resolve_chained_type(m).ok()?);
        if name == field {
            if m.bitfield_size().unwrap_or(0) != 0 {
                return None;
            }
            return Some((m.bit_offset(), mty));
        }
        if name.is_empty() {
            if let Some((off, t)) = find_member(btf, &mty, field) {
                return Some((m.bit_offset() + off, t));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the build machine's own BTF when it has one (no root needed).
    #[test]
    fn kernel_offsets_are_plausible() {
        if !std::path::Path::new(VMLINUX_BTF).exists() {
            eprintln!("no {VMLINUX_BTF}; skipping");
            return;
        }
        let o = from_kernel().expect("offsets");
        // struct sock_common starts struct sock; its v4 addresses come first.
        assert_eq!(o.skc_daddr, 0);
        assert_eq!(o.skc_rcv_saddr, 4);
        assert!(o.skc_v6_daddr > o.skc_family);
        assert_eq!(o.skc_state, o.skc_family + 2, "skc_family, then skc_state");
        assert!(o.srtt_us > o.sk_err);
        assert!(o.skc_net > o.skc_family && o.net_ns_inum > 0);
        assert_eq!(o.valid, 1);
        assert!(o.skb_network_header > 0 && o.skb_transport_header > 0 && o.skb_head > 0);
    }
}
