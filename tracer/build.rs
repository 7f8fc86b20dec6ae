//! Builds the eBPF object (tracer-ebpf, nightly + bpf-linker) and leaves it in
//! OUT_DIR for `include_bytes_aligned!`. `cargo xtask setup` installs what this
//! needs into target/tools; without bpf-linker the build still succeeds with an
//! empty object (so `cargo check`/clippy/unit tests need no nightly), and the
//! binary then refuses to trace with a message saying how to build it.
//!
//! `TRACER_EBPF_OBJECT=PATH` embeds an object built before instead: the object
//! is BPF bytecode (bpfel), the same for every host architecture, so
//! `cargo xtask dist` builds it once and cross builds reuse it.
//!
//! Also sets `TRACER_GIT_COMMIT` (for `tracer --version`): the environment
//! variable of that name if set (builds from a source tarball), else
//! `git rev-parse --short=12 HEAD`, else "unknown".
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest.parent().context("workspace root")?.to_path_buf();
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    git_commit(&root);
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
    println!("cargo:rerun-if-env-changed=TRACER_EBPF_OBJECT");

    if let Some(prebuilt) = env::var_os("TRACER_EBPF_OBJECT") {
        let prebuilt = PathBuf::from(prebuilt);
        println!("cargo:rerun-if-changed={}", prebuilt.display());
        fs::copy(&prebuilt, out_dir.join("tracer"))
            .with_context(|| format!("TRACER_EBPF_OBJECT={}", prebuilt.display()))?;
        return Ok(());
    }

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

/// `cargo:rustc-env=TRACER_GIT_COMMIT=...`, rerun when HEAD moves.
fn git_commit(root: &Path) {
    println!("cargo:rerun-if-env-changed=TRACER_GIT_COMMIT");
    let git = |args: &[&str]| -> Option<String> {
        let o = Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output()
            .ok()?;
        let s = String::from_utf8(o.stdout).ok()?.trim().to_string();
        (o.status.success() && !s.is_empty()).then_some(s)
    };
    let commit = env::var("TRACER_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=TRACER_GIT_COMMIT={commit}");
    let target = env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=TRACER_TARGET={target}");
    // HEAD, the branch it names, and packed-refs (where a ref may live).
    let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
    watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for w in watched {
        // A path that does not exist would make cargo rerun this every build.
        let path = git(&["rev-parse", "--path-format=absolute", "--git-path", &w]);
        if let Some(p) = path.filter(|p| Path::new(p).exists()) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
}
