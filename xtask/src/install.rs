//! `cargo xtask install`: the host's static binary (built by `dist`), its man
//! pages and completions under a prefix (/usr/local), and with `--systemd`
//! the unit into /etc/systemd/system. `--destdir` stages instead of
//! installing (the paths inside stay those of the real install).

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use super::{dist, status};
use crate::dist::{package, Arch};

/// Where each completion goes below the prefix (bash-completion, zsh and
/// fish look in these for locally installed commands).
const COMPLETION_DIRS: [(&str, &str); 3] = [
    ("tracer.bash", "share/bash-completion/completions/tracer"),
    ("_tracer", "share/zsh/site-functions/_tracer"),
    ("tracer.fish", "share/fish/vendor_completions.d/tracer.fish"),
];

pub fn install(root: &Path, prefix: &Path, destdir: Option<&Path>, systemd: bool) -> Result<()> {
    let host = Arch::host()?;
    let bin = dist::static_binary(root, host)?;
    let assets = root.join("target/dist/assets");
    let staged = |p: &Path| -> PathBuf {
        match destdir {
            Some(d) => d.join(p.strip_prefix("/").unwrap_or(p)),
            None => p.to_path_buf(),
        }
    };
    let put = |from: &Path, to: &Path, mode: u32| -> Result<()> {
        let to = staged(to);
        fs::create_dir_all(to.parent().context("parent")?)?;
        fs::copy(from, &to).with_context(|| format!("installing {}", to.display()))?;
        fs::set_permissions(&to, fs::Permissions::from_mode(mode))?;
        println!("{}", to.display());
        Ok(())
    };
    let installed_bin = prefix.join("bin/tracer");
    put(&bin, &installed_bin, 0o755)?;
    for entry in fs::read_dir(assets.join("man"))? {
        let page = entry?.path();
        let name = page.file_name().context("man page name")?;
        put(&page, &prefix.join("share/man/man1").join(name), 0o644)?;
    }
    for (name, dest) in COMPLETION_DIRS {
        put(
            &assets.join("completions").join(name),
            &prefix.join(dest),
            0o644,
        )?;
    }
    if systemd {
        let unit = fs::read_to_string(root.join(package::UNIT))?
            .replace("/usr/local/bin/tracer", &installed_bin.to_string_lossy());
        let tmp = root.join("target/dist/assets/tcp-tracer.service");
        fs::write(&tmp, unit)?;
        put(
            &tmp,
            Path::new("/etc/systemd/system/tcp-tracer.service"),
            0o644,
        )?;
        if destdir.is_none() && Path::new("/run/systemd/system").exists() {
            status(Command::new("systemctl").arg("daemon-reload"))?;
            eprintln!("xtask: start it with `systemctl enable --now tcp-tracer`");
        }
    }
    Ok(())
}
