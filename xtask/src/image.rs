//! `cargo xtask image`: the container image from `Containerfile` (the static
//! binary on an empty base), one per architecture plus a manifest list,
//! built with podman; then each image's root filesystem is checked (it holds
//! only /tracer, byte for byte the dist binary) and, for the host's
//! architecture and as root, that binary runs the live exact-count check.
//!
//! podman uses the vfs storage driver here: it works on every machine
//! (nested containers, no fuse), and the image is one 7 MB layer.

use std::{fs, path::Path, process::Command};

use anyhow::{ensure, Context as _, Result};

use super::{dist, is_root, output, status};
use crate::dist::Arch;

pub const NAME: &str = "tcp-tracer";

fn podman() -> Command {
    let mut c = Command::new("podman");
    c.args(["--storage-driver", "vfs"]);
    c
}

fn ensure_podman() -> Result<()> {
    if Command::new("podman").arg("--version").output().is_ok() {
        return Ok(());
    }
    eprintln!("xtask: installing podman (apt-get)");
    status(Command::new("apt-get").arg("update"))?;
    status(
        Command::new("apt-get")
            .args([
                "install",
                "-y",
                "--no-install-recommends",
                "podman",
                "buildah",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

pub fn tag(arch: Option<&Arch>) -> String {
    match arch {
        Some(a) => format!("localhost/{NAME}:{}-{}", dist::VERSION, a.deb),
        None => format!("localhost/{NAME}:{}", dist::VERSION),
    }
}

pub fn image(root: &Path, arches: &[&'static Arch], push: Option<&str>) -> Result<()> {
    ensure_podman()?;
    let mut want = arches.to_vec();
    want.push(Arch::host()?);
    dist::dist(root, &want)?;
    let commit = dist::git_commit(root);
    let list = tag(None);
    // A previous list would keep the previous images in it.
    let _ = podman().args(["manifest", "rm", &list]).output();
    status(podman().args(["manifest", "create", &list]))?;
    for arch in arches {
        let t = tag(Some(arch));
        status(
            podman()
                .current_dir(root)
                .args(["build", "--platform", &format!("linux/{}", arch.deb)])
                .args(["--build-arg", &format!("VERSION={}", dist::VERSION)])
                .args(["--build-arg", &format!("REVISION={commit}")])
                .args(["-t", &t, "-f", "Containerfile", "."]),
        )?;
        status(podman().args(["manifest", "add", &list, &format!("containers-storage:{t}")]))?;
        check(root, arch, &t)?;
    }
    if let Some(dest) = push {
        status(podman().args(["manifest", "push", "--all", &list, dest]))?;
        eprintln!("xtask: pushed {list} to {dest}");
    }
    eprintln!(
        "xtask: image {list} ({})",
        arches.iter().map(|a| a.deb).collect::<Vec<_>>().join(", ")
    );
    Ok(())
}

/// The image's root filesystem, mounted: exactly /tracer, the dist binary;
/// for the host's architecture, it passes the live check (as root).
fn check(root: &Path, arch: &Arch, tag: &str) -> Result<()> {
    let inspect = output(podman().args([
        "image",
        "inspect",
        "--format",
        "{{.Architecture}} {{.Os}}",
        tag,
    ]))?;
    ensure!(
        inspect.trim() == format!("{} linux", arch.deb),
        "{tag}: platform {inspect:?}"
    );
    let mnt = output(podman().args(["image", "mount", tag]))?;
    let rootfs = Path::new(mnt.trim()).to_path_buf();
    let result = (|| -> Result<()> {
        let entries: Vec<String> = fs::read_dir(&rootfs)?
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_>>()?;
        ensure!(
            entries == ["tracer"],
            "{tag}: root filesystem holds {entries:?}"
        );
        let bin = rootfs.join("tracer");
        let bytes = fs::read(&bin)?;
        ensure!(
            bytes == fs::read(arch.binary(root))?,
            "{tag}: /tracer is not the dist binary"
        );
        dist::elf::check_static(&bytes, arch.elf_machine)?;
        if arch.name == Arch::host()?.name {
            let v = output(Command::new(&bin).arg("--version"))?;
            ensure!(
                v.trim() == arch.version_line(&dist::git_commit(root)),
                "{tag}: --version {v:?}"
            );
            if is_root() {
                super::live::check(&bin).with_context(|| format!("{tag}: the image's binary"))?;
            }
        }
        Ok(())
    })();
    let _ = podman().args(["image", "unmount", tag]).output();
    result?;
    eprintln!("xtask: {tag}: root filesystem checked");
    Ok(())
}
