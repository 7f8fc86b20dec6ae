//! What booting the guest needs, found on the machine or installed from
//! Debian's registry: the 6.1 kernel and its modules, busybox, qemu.
//! The kernel and busybox packages are downloaded and unpacked into a cache
//! folder (never installed: that would run initramfs-tools on the host and
//! add a boot entry); qemu is installed with apt-get.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

/// Debian 12's kernel: `linux-image-6.1.0-N-cloud-amd64` (the cloud flavour
/// is the smallest; it has BTF, BPF and the JIT built in).
pub const KERNEL_PREFIX: &str = "6.1.0-";
pub const KERNEL_FLAVOUR: &str = "-cloud-amd64";
/// The sock_diag modules the tracer's population report needs, in load order.
pub const DIAG_MODULES: [&str; 2] = ["inet_diag.ko", "tcp_diag.ko"];
const DIAG_DIR: &str = "kernel/net/ipv4";

/// A kernel image and its module tree.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// `uname -r`, e.g. 6.1.0-47-cloud-amd64.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// `.../lib/modules/RELEASE`.
    pub modules: PathBuf,
}

impl Kernel {
    /// Paths of [`DIAG_MODULES`], each as shipped: `.ko`, or compressed
    /// `.ko.xz` / `.ko.zst` (newer Debian kernels).
    pub fn diag_modules(&self) -> Vec<PathBuf> {
        DIAG_MODULES
            .iter()
            .map(|m| {
                let plain = self.modules.join(DIAG_DIR).join(m);
                ["xz", "zst"]
                    .iter()
                    .map(|ext| plain.with_extension(format!("ko.{ext}")))
                    .find(|p| p.is_file())
                    .unwrap_or(plain)
            })
            .collect()
    }

    /// The module's bytes, decompressed (busybox insmod loads plain ELF).
    pub fn read_module(path: &Path) -> Result<Vec<u8>> {
        let tool = match path.extension().and_then(|e| e.to_str()) {
            Some("xz") => "xz",
            Some("zst") => "zstd",
            _ => return std::fs::read(path).with_context(|| format!("reading {}", path.display())),
        };
        let out = Command::new(tool)
            .arg("-dc")
            .arg(path)
            .output()
            .with_context(|| format!("running {tool} -dc (apt-get install {tool})"))?;
        if !out.status.success() {
            bail!(
                "{tool} -dc {} failed: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out.stdout)
    }

    fn at(root: &Path, release: &str) -> Option<Kernel> {
        let k = Kernel {
            release: release.to_string(),
            vmlinuz: root.join(format!("boot/vmlinuz-{release}")),
            modules: root.join(format!("lib/modules/{release}")),
        };
        (k.vmlinuz.is_file() && k.diag_modules().iter().all(|m| m.is_file())).then_some(k)
    }
}

/// The N of `6.1.0-N-cloud-amd64` (or of a package name holding it).
pub fn abi_number(name: &str) -> Option<u32> {
    let rest = &name[name.find(KERNEL_PREFIX)? + KERNEL_PREFIX.len()..];
    let n = rest.strip_suffix(KERNEL_FLAVOUR).unwrap_or(rest);
    n.parse().ok()
}

fn release_of(n: u32) -> String {
    format!("{KERNEL_PREFIX}{n}{KERNEL_FLAVOUR}")
}

/// The newest 6.1 kernel in `root`'s /boot with its diag modules.
fn newest_in(root: &Path) -> Option<Kernel> {
    let mut found: Vec<u32> = std::fs::read_dir(root.join("boot"))
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            abi_number(name.strip_prefix("vmlinuz-")?)
        })
        .collect();
    found.sort_unstable();
    found
        .into_iter()
        .rev()
        .find_map(|n| Kernel::at(root, &release_of(n)))
}

/// A 6.1 kernel: installed in /boot, else unpacked in `cache`, else the
/// newest `linux-image-6.1.0-N-cloud-amd64` the registry offers, downloaded
/// and unpacked into `cache`. With `release` (e.g. `6.12.117+deb12-cloud-amd64`),
/// that kernel instead, found or downloaded the same way.
pub fn kernel(cache: &Path, release: Option<&str>) -> Result<Kernel> {
    let root = cache.join("linux");
    let release = match release {
        Some(r) => {
            if let Some(k) = Kernel::at(Path::new("/"), r).or_else(|| Kernel::at(&root, r)) {
                return Ok(k);
            }
            r.to_string()
        }
        None => {
            if let Some(k) = newest_in(Path::new("/")).or_else(|| newest_in(&root)) {
                return Ok(k);
            }
            release_of(newest_package()?)
        }
    };
    let pkg = format!("linux-image-{release}");
    eprintln!("guest: downloading {pkg} into {}", root.display());
    unpack(&download(&pkg, cache)?, &root)?;
    Kernel::at(&root, &release).with_context(|| {
        format!(
            "{pkg} unpacked into {} has no vmlinuz or diag modules",
            root.display()
        )
    })
}

/// The highest N among `linux-image-6.1.0-N-cloud-amd64` packages apt knows.
pub fn newest_package() -> Result<u32> {
    let search = || -> Result<Option<u32>> {
        let pattern = format!(
            "^linux-image-{}[0-9]+{}$",
            KERNEL_PREFIX.replace('.', "\\."),
            KERNEL_FLAVOUR
        );
        let out = output(Command::new("apt-cache").args(["search", "--names-only", &pattern]))?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter_map(abi_number)
            .max())
    };
    if let Some(n) = search()? {
        return Ok(n);
    }
    apt_update()?;
    search()?.context(
        "apt-cache knows no linux-image-6.1.0-*-cloud-amd64 package (is Debian 12's archive in the sources?)",
    )
}

/// busybox-static's binary, unpacked into `cache`.
pub fn busybox(cache: &Path) -> Result<PathBuf> {
    let root = cache.join("busybox-static");
    let bin = root.join("bin/busybox");
    if !bin.is_file() {
        eprintln!("guest: downloading busybox-static into {}", root.display());
        unpack(&download("busybox-static", cache)?, &root)?;
    }
    if !bin.is_file() {
        bail!(
            "busybox-static unpacked into {} has no bin/busybox",
            root.display()
        );
    }
    Ok(bin)
}

/// `qemu-system-x86_64`, installed with apt-get (qemu-system-x86, without
/// recommends: no GUI) when absent.
pub fn qemu() -> Result<PathBuf> {
    const BIN: &str = "qemu-system-x86_64";
    if let Some(p) = which(BIN) {
        return Ok(p);
    }
    eprintln!("guest: installing qemu-system-x86 (apt-get)");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(["-o", "DPkg::Lock::Timeout=600", "qemu-system-x86"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        apt_update()?;
        if !install() {
            bail!("apt-get could not install qemu-system-x86");
        }
    }
    which(BIN).context("qemu-system-x86 installed but qemu-system-x86_64 is not on PATH")
}

/// The shared libraries (and loader) `ldd` lists for `bin`; none for a
/// static binary ("not a dynamic executable").
pub fn shared_libs(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .context("running ldd")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if text.contains("not a dynamic executable") || text.contains("statically linked") {
        return Ok(Vec::new());
    }
    if !out.status.success() {
        bail!("ldd {} failed: {text}", bin.display());
    }
    parse_ldd(&text)
}

/// `libc.so.6 => /lib/.../libc.so.6 (0x...)` and `/lib64/ld-linux... (0x...)`
/// lines; the vDSO has no file.
pub fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("not found") {
            bail!("ldd: {line}");
        }
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

fn apt_update() -> Result<()> {
    eprintln!("guest: apt-get update");
    let s = Command::new("apt-get")
        .args(["update", "-q", "-o", "DPkg::Lock::Timeout=600"])
        .status()
        .context("running apt-get update")?;
    if !s.success() {
        bail!("apt-get update failed: {s}");
    }
    Ok(())
}

/// `apt-get download PKG` into `cache/debs`; returns the .deb.
fn download(pkg: &str, cache: &Path) -> Result<PathBuf> {
    let debs = cache.join("debs");
    std::fs::create_dir_all(&debs)?;
    let fetch = || {
        Command::new("apt-get")
            // Root-owned target folders are not writable by the _apt user.
            .args(["download", "-q", "-o", "APT::Sandbox::User=root", pkg])
            .current_dir(&debs)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !fetch() {
        apt_update()?;
        if !fetch() {
            bail!("apt-get download {pkg} failed");
        }
    }
    let prefix = format!("{pkg}_");
    std::fs::read_dir(&debs)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        })
        .max()
        .with_context(|| format!("apt-get download {pkg} left no {prefix}*.deb"))
}

/// `dpkg-deb -x` into a fresh folder, renamed into place once complete.
fn unpack(deb: &Path, root: &Path) -> Result<()> {
    let tmp = root.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let s = Command::new("dpkg-deb")
        .arg("-x")
        .arg(deb)
        .arg(&tmp)
        .status()?;
    if !s.success() {
        bail!("dpkg-deb -x {} failed: {s}", deb.display());
    }
    // Several packages may share `root` (only the kernel today): merge.
    std::fs::create_dir_all(root)?;
    for e in std::fs::read_dir(&tmp)? {
        let e = e?;
        merge(&e.path(), &root.join(e.file_name()))?;
    }
    std::fs::remove_dir_all(&tmp)?;
    Ok(())
}

fn merge(from: &Path, to: &Path) -> Result<()> {
    if from.is_dir() && to.is_dir() {
        for e in std::fs::read_dir(from)? {
            let e = e?;
            merge(&e.path(), &to.join(e.file_name()))?;
        }
        Ok(())
    } else {
        std::fs::rename(from, to).with_context(|| format!("moving {}", from.display()))
    }
}

fn output(cmd: &mut Command) -> Result<String> {
    let o = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !o.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abi_numbers_from_releases_and_package_names() {
        assert_eq!(abi_number("6.1.0-47-cloud-amd64"), Some(47));
        assert_eq!(abi_number("linux-image-6.1.0-9-cloud-amd64"), Some(9));
        assert_eq!(abi_number("linux-image-6.1.0-47-cloud-amd64-dbg"), None);
        assert_eq!(abi_number("linux-image-6.1.0-47-amd64"), None);
        assert_eq!(abi_number("6.12.0-1-cloud-amd64"), None);
    }

    #[test]
    fn ldd_lines_give_library_paths_and_the_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f27)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f27)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f27)\n";
        let libs = parse_ldd(text).unwrap();
        assert_eq!(
            libs,
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_ldd("\tlibfoo.so => not found\n").is_err());
    }

    #[test]
    fn a_static_binary_needs_no_libraries() {
        // busybox-static when it is unpacked, else any static file ldd rejects.
        let f = std::env::temp_dir().join(format!("guest-ldd-{}", std::process::id()));
        std::fs::write(&f, b"#!/bin/sh\n").unwrap();
        let libs = shared_libs(&f);
        let _ = std::fs::remove_file(&f);
        assert!(libs.unwrap().is_empty());
    }
}
