//! Builds the eBPF object (tracer-ebpf, nightly + bpf-linker) and leaves it in
//! OUT_DIR for `include_bytes_aligned!`. `cargo xtask setup` installs what this
//! needs into target/tools; without bpf-linker the build still succeeds with an
//! empty object (so `cargo check`/clippy/unit tests need no nightly), and the
//! binary then refuses to trace with a message saying how to build it.
use std::{env, fs, path::PathBuf};

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest.parent().context("workspace root")?.to_path_buf();
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let tools = root.join("target/tools/bin");
    println!(
        "cargo:rerun-if-changed={}",
        root.join("tracer-common/src").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        tools.join("bpf-linker").display()
    );
    println!("cargo:rerun-if-env-changed=TRACER_SKIP_EBPF");

    // Let the nested nightly cargo find the project's own bpf-linker.
    let path = env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = vec![tools.clone()];
    dirs.extend(env::split_paths(&path));
    let joined = env::join_paths(dirs)?;
    // SAFETY (edition 2021: safe): build scripts are single-threaded here.
    env::set_var("PATH", &joined);

    let have_linker = env::split_paths(&joined).any(|d| d.join("bpf-linker").is_file());
    let skip = env::var("TRACER_SKIP_EBPF").is_ok_and(|v| v == "1");
    if skip || !have_linker {
        println!(
            "cargo:warning=eBPF object not built ({}); run `cargo xtask build` for a tracer that can trace",
            if skip { "TRACER_SKIP_EBPF=1" } else { "bpf-linker not found" }
        );
        fs::write(out_dir.join("tracer"), b"")?;
        return Ok(());
    }
    let ebpf_dir = root.join("tracer-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "tracer-ebpf",
            root_dir: ebpf_dir.to_str().context("utf-8 path")?,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
