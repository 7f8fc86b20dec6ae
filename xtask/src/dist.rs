//! `cargo xtask dist`: statically linked (musl) `tracer` binaries for x86_64
//! and aarch64, each in a tarball with the man pages, shell completions, the
//! systemd unit, a README and a SHA-256 file; a .deb per architecture; and the
//! checks CI runs on all of them (static ELF of the right machine, contents,
//! checksums, `--version`).
//!
//! Layout of `target/dist/`:
//!
//! ```text
//! linux-amd64/tracer, linux-arm64/tracer     the static binaries (stable paths;
//!                                             the Containerfile copies these)
//! tracer-VERSION-TRIPLE.tar.gz (+ .sha256)   one tarball per architecture
//! tcp-tracer_VERSION_DEBARCH.deb (+ .sha256) one package per architecture
//! SHA256SUMS                                 all of the above
//! ```

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, ensure, Context as _, Result};

use super::{cargo, output, status};

pub mod elf;
pub mod package;

/// One architecture the release is built for.
#[derive(Debug)]
pub struct Arch {
    /// `uname -m` / Rust's `target_arch`.
    pub name: &'static str,
    /// The Rust target (musl: static, no libc on the host needed).
    pub triple: &'static str,
    /// Debian's and the OCI image's name for it.
    pub deb: &'static str,
    /// ELF `e_machine`.
    pub elf_machine: u16,
}

pub const ARCHES: [Arch; 2] = [
    Arch {
        name: "x86_64",
        triple: "x86_64-unknown-linux-musl",
        deb: "amd64",
        elf_machine: elf::EM_X86_64,
    },
    Arch {
        name: "aarch64",
        triple: "aarch64-unknown-linux-musl",
        deb: "arm64",
        elf_machine: elf::EM_AARCH64,
    },
];

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

impl Arch {
    pub fn by_name(name: &str) -> Result<&'static Arch> {
        ARCHES
            .iter()
            .find(|a| a.name == name || a.deb == name)
            .with_context(|| format!("unknown architecture {name:?} (x86_64, aarch64)"))
    }

    /// The architecture of the machine xtask runs on.
    pub fn host() -> Result<&'static Arch> {
        Arch::by_name(std::env::consts::ARCH)
    }

    /// `target/dist/linux-amd64/tracer`: where the static binary is kept.
    pub fn binary(&self, root: &Path) -> PathBuf {
        dist_dir(root)
            .join(format!("linux-{}", self.deb))
            .join("tracer")
    }

    pub fn tarball_stem(&self) -> String {
        format!("tracer-{VERSION}-{}", self.triple)
    }

    pub fn deb_name(&self) -> String {
        format!("tcp-tracer_{VERSION}_{}.deb", self.deb)
    }

    /// What `tracer --version` prints for this build.
    pub fn version_line(&self, commit: &str) -> String {
        format!("tracer {VERSION} (commit {commit}, {})", self.triple)
    }
}

pub fn dist_dir(root: &Path) -> PathBuf {
    root.join("target/dist")
}

/// The commit `tracer/build.rs` stamps into the binary (same command).
pub fn git_commit(root: &Path) -> String {
    output(
        Command::new("git")
            .current_dir(root)
            .args(["rev-parse", "--short=12", "HEAD"]),
    )
    .map(|s| s.trim().to_string())
    .unwrap_or_else(|_| "unknown".into())
}

/// Build the static binaries for `arches` (the host's first: its build makes
/// the eBPF object the others embed), then the tarballs and packages, then
/// check them all. Returns the artifacts.
pub fn dist(root: &Path, arches: &[&'static Arch]) -> Result<Vec<PathBuf>> {
    super::setup(root)?;
    let host = Arch::host()?;
    let mut order: Vec<&Arch> = arches.to_vec();
    order.sort_by_key(|a| a.name != host.name);
    order.dedup_by_key(|a| a.name);
    ensure!(
        order.first().map(|a| a.name) == Some(host.name),
        "the host's architecture ({}) must be among those built: its binary writes the man pages and completions",
        host.name
    );
    if !output(
        Command::new("git")
            .current_dir(root)
            .args(["status", "--porcelain"]),
    )
    .unwrap_or_default()
    .trim()
    .is_empty()
    {
        eprintln!("xtask: warning: the work tree has uncommitted changes; --version names HEAD");
    }
    let dir = dist_dir(root);
    fs::create_dir_all(&dir)?;
    let mut object = None;
    for arch in &order {
        let built = build_static(root, arch, object.as_deref())?;
        object.get_or_insert(built.object);
        let dest = arch.binary(root);
        fs::create_dir_all(dest.parent().context("parent")?)?;
        fs::copy(&built.binary, &dest)?;
    }
    let assets = package::Assets::generate(root, &host.binary(root))?;
    let mut artifacts = Vec::new();
    for arch in &order {
        artifacts.push(package::tarball(root, arch, &assets)?);
        artifacts.push(package::deb(root, arch, &assets)?);
    }
    write_checksums(&dir, &artifacts)?;
    check(root, &order)?;
    for a in &artifacts {
        println!("{:>10}  {}", fs::metadata(a)?.len(), a.display());
    }
    Ok(artifacts)
}

struct Built {
    binary: PathBuf,
    /// The eBPF object the binary embeds (the build script's OUT_DIR/tracer).
    object: PathBuf,
}

/// `cargo build --release --target TRIPLE` of the tracer binary, linked by
/// rust-lld against the musl libc that ships with Rust's target (no C
/// cross toolchain needed). ring (rustls' cryptography, for serve's TLS)
/// has C and assembly: clang compiles them for either target without a
/// sysroot. With `object`, the build script embeds it instead of building
/// the eBPF object again.
fn build_static(root: &Path, arch: &Arch, object: Option<&Path>) -> Result<Built> {
    ensure_target(arch.triple)?;
    // clang and llvm-ar compile ring's C for the musl targets.
    super::ensure_tools(&[("clang", "clang"), ("llvm-ar", "llvm")])?;
    if object.is_some() {
        ensure_object_is_arch_independent(root)?;
    }
    let linker_var = format!(
        "CARGO_TARGET_{}_LINKER",
        arch.triple.to_uppercase().replace('-', "_")
    );
    let mut cmd = cargo(root);
    cmd.args([
        "build",
        "--release",
        "--package",
        "tracer",
        "--bin",
        "tracer",
    ])
    .args([
        "--target",
        arch.triple,
        "--message-format=json-render-diagnostics",
    ])
    .env(linker_var, "rust-lld")
    .env(format!("CC_{}", arch.triple.replace('-', "_")), "clang")
    .env(format!("AR_{}", arch.triple.replace('-', "_")), "llvm-ar")
    // Symbols stay (readable backtraces, `perf`); debug info was never there.
    .env_remove("TRACER_SKIP_EBPF");
    match object {
        Some(o) => cmd.env("TRACER_EBPF_OBJECT", o),
        None => cmd.env_remove("TRACER_EBPF_OBJECT"),
    };
    eprintln!("xtask: building the static tracer for {}", arch.triple);
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo build")?;
    let (mut binary, mut out_dir) = (None, None);
    for line in BufReader::new(child.stdout.take().context("stdout")?).lines() {
        let msg: serde_json::Value = serde_json::from_str(&line?).unwrap_or_default();
        let is_tracer = msg["package_id"]
            .as_str()
            .is_some_and(|id| id.contains("/tracer#") || id.starts_with("tracer "));
        match msg["reason"].as_str() {
            Some("build-script-executed") if is_tracer => {
                out_dir = msg["out_dir"].as_str().map(PathBuf::from);
            }
            Some("compiler-artifact") if is_tracer => {
                if let Some(exe) = msg["executable"].as_str() {
                    binary = Some(PathBuf::from(exe));
                }
            }
            _ => {}
        }
    }
    ensure!(
        child.wait()?.success(),
        "cargo build --target {} failed",
        arch.triple
    );
    let object = out_dir
        .context("cargo reported no build script run for tracer")?
        .join("tracer");
    let object_len = fs::metadata(&object).map(|m| m.len()).unwrap_or(0);
    ensure!(
        object_len > 0,
        "{} has no eBPF object embedded (bpf-linker missing?): run `cargo xtask setup`",
        arch.triple
    );
    Ok(Built {
        binary: binary.context("cargo reported no tracer executable")?,
        object,
    })
}

/// `rustup target add` when the target's standard library is missing.
fn ensure_target(triple: &str) -> Result<()> {
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    if installed.lines().any(|l| l.trim() == triple) {
        return Ok(());
    }
    eprintln!("xtask: installing the Rust standard library for {triple}");
    status(Command::new("rustup").args(["target", "add", triple]))
}

/// The object is BPF bytecode and only `cfg(bpf_target_arch)` code (pt_regs
/// access in kprobes) would make it differ per host architecture. The kernel
/// side has none, so one object serves every architecture; refuse to reuse
/// it the day that changes.
fn ensure_object_is_arch_independent(root: &Path) -> Result<()> {
    let src = root.join("tracer-ebpf/src");
    for entry in fs::read_dir(&src)? {
        let path = entry?.path();
        let text = fs::read_to_string(&path).unwrap_or_default();
        ensure!(
            !text.contains("bpf_target_arch"),
            "{} has architecture-specific code (bpf_target_arch): build the eBPF object per architecture",
            path.display()
        );
    }
    Ok(())
}

/// `NAME.sha256` for each new artifact; `SHA256SUMS` for every tarball and
/// package in `dir` (also those of architectures not rebuilt this time).
fn write_checksums(dir: &Path, artifacts: &[PathBuf]) -> Result<()> {
    for a in artifacts {
        fs::write(
            a.with_file_name(format!("{}.sha256", file_name(a)?)),
            sha256_line(a)?,
        )?;
    }
    let mut present: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| file_name(p).is_ok_and(|n| n.ends_with(".tar.gz") || n.ends_with(".deb")))
        .collect();
    present.sort();
    let mut all = String::new();
    for p in &present {
        all.push_str(&sha256_line(p)?);
    }
    fs::write(dir.join("SHA256SUMS"), all)?;
    Ok(())
}

/// `sha256sum NAME` output (run in the file's directory, so the file
/// verifies with `sha256sum -c` next to it).
fn sha256_line(path: &Path) -> Result<String> {
    output(
        Command::new("sha256sum")
            .current_dir(path.parent().context("parent")?)
            .arg(file_name(path)?),
    )
}

fn file_name(p: &Path) -> Result<&str> {
    p.file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no UTF-8 file name", p.display()))
}

/// What CI checks on `target/dist/`: static ELF of the right machine, the
/// version and commit, the tarballs' and packages' contents, the checksums.
pub fn check(root: &Path, arches: &[&Arch]) -> Result<()> {
    let commit = git_commit(root);
    let host = Arch::host()?;
    for arch in arches {
        let bin = arch.binary(root);
        let bytes = fs::read(&bin).with_context(|| format!("reading {}", bin.display()))?;
        elf::check_static(&bytes, arch.elf_machine)
            .with_context(|| format!("{} is not a static {} binary", bin.display(), arch.name))?;
        let expected = arch.version_line(&commit);
        if arch.name == host.name {
            let got = output(Command::new(&bin).arg("--version"))?;
            ensure!(
                got.trim() == expected,
                "{} --version: {got:?}, expected {expected:?}",
                bin.display()
            );
        } else {
            // Cannot run it here: the version string must be in the binary.
            let needle = expected.trim_start_matches("tracer ").as_bytes();
            ensure!(
                bytes.windows(needle.len()).any(|w| w == needle),
                "{} does not carry the version {expected:?}",
                bin.display()
            );
        }
        package::check_tarball(root, arch, &bytes)?;
        package::check_deb(root, arch, &bytes)?;
    }
    status(Command::new("sha256sum").current_dir(dist_dir(root)).args([
        "--check",
        "--quiet",
        "SHA256SUMS",
    ]))
    .context("SHA256SUMS does not match the artifacts")?;
    eprintln!(
        "xtask: dist check passed ({})",
        arches.iter().map(|a| a.name).collect::<Vec<_>>().join(", ")
    );
    Ok(())
}

/// The static binary for `arch` (`target/dist/linux-DEBARCH/tracer`), after
/// `dist` for it and the host's architecture (cargo rebuilds only what
/// changed). For the guest runs, the image and `install`.
pub fn static_binary(root: &Path, arch: &'static Arch) -> Result<PathBuf> {
    dist(root, &[Arch::host()?, arch])?;
    let bin = arch.binary(root);
    if !bin.is_file() {
        bail!("{} was not built", bin.display());
    }
    Ok(bin)
}
