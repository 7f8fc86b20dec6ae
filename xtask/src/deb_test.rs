//! `cargo xtask deb-test`: the host's .deb on a fresh machine — a minimal
//! Debian root filesystem made by debootstrap (cached in target/deb-chroot)
//! — installed with `dpkg -i`, its files and `tracer --version` checked
//! inside it, the installed binary run through the live exact-count check
//! (as root on this kernel), then `dpkg -r` and the files gone again.

use std::{path::Path, process::Command};

use anyhow::{ensure, Context as _, Result};

use super::{is_root, output, status};
use crate::dist::{self, Arch};

const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";

fn chroot(dir: &Path) -> Command {
    let mut c = Command::new("chroot");
    c.arg(dir).env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    c
}

pub fn run(root: &Path) -> Result<()> {
    ensure!(
        is_root(),
        "debootstrap, chroot and the live check need root"
    );
    let host = Arch::host()?;
    dist::dist(root, &[host])?;
    let dir = root.join("target/deb-chroot");
    if !dir.join("var/lib/dpkg/status").is_file() {
        if Command::new("debootstrap")
            .arg("--version")
            .output()
            .is_err()
        {
            status(
                Command::new("apt-get")
                    .args(["install", "-y", "--no-install-recommends", "debootstrap"])
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            )?;
        }
        eprintln!(
            "xtask: debootstrap {SUITE} (minbase) into {}",
            dir.display()
        );
        status(
            Command::new("debootstrap")
                .args(["--variant=minbase", SUITE])
                .arg(&dir)
                .arg(MIRROR),
        )?;
    }
    let deb = host.deb_name();
    std::fs::copy(dist::dist_dir(root).join(&deb), dir.join("tmp").join(&deb))?;
    status(chroot(&dir).args(["dpkg", "-i", &format!("/tmp/{deb}")]))?;
    let files = output(chroot(&dir).args(["dpkg", "-L", "tcp-tracer"]))?;
    for f in [
        "/usr/bin/tracer",
        "/usr/share/man/man1/tracer.1.gz",
        "/usr/share/bash-completion/completions/tracer",
        "/usr/lib/systemd/system/tcp-tracer.service",
    ] {
        ensure!(
            files.lines().any(|l| l == f),
            "dpkg -L tcp-tracer lacks {f}"
        );
    }
    let version = output(chroot(&dir).args(["tracer", "--version"]))?;
    ensure!(
        version.trim() == host.version_line(&dist::git_commit(root)),
        "--version: {version:?}"
    );
    println!(
        "installed in a fresh {SUITE} root filesystem; there: {}",
        version.trim()
    );
    super::live::check(&dir.join("usr/bin/tracer")).context("the installed binary")?;
    status(chroot(&dir).args(["dpkg", "-r", "tcp-tracer"]))?;
    ensure!(
        !dir.join("usr/bin/tracer").exists(),
        "dpkg -r left /usr/bin/tracer"
    );
    std::fs::remove_file(dir.join("tmp").join(&deb))?;
    println!("deb-test passed: dpkg -i, --version, the live check, dpkg -r");
    Ok(())
}
