use which::which;

/// Rebuild when bpf-linker changes: it is part of the toolchain that produced the object.
fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
    // bpf-linker passes LLVM --bpf-expand-memcpy-in-order by default, which
    // also stops LLVM from expanding memset: every zeroed struct became a
    // call to a byte-at-a-time memset subprogram (the `memset` in `perf`
    // and most of the verifier's instructions). Without it, LLVM expands
    // memset/memcpy into plain stores (up to 128 of them).
    println!("cargo:rustc-link-arg-bins=--disable-expand-memcpy-in-order");
}
