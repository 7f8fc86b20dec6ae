//! A private network namespace for the load: its own loopback, ephemeral
//! ports, TIME_WAIT table and sysctls, so the benchmark's millions of
//! connections never touch the host's (or other tests') port space, and
//! deleting it frees everything at once.

use std::{
    fs::File,
    os::{fd::AsRawFd, unix::process::CommandExt},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

pub struct NetNs {
    name: String,
    fd: File,
}

fn ip(args: &[&str]) -> Result<()> {
    let o = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (iproute2)")?;
    if !o.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(())
}

impl NetNs {
    /// Create `name` (replacing a leftover of a crashed run) with loopback up.
    pub fn create(name: &str) -> Result<NetNs> {
        let _ = ip(&["netns", "del", name]);
        ip(&["netns", "add", name])?;
        let ns = NetNs {
            name: name.to_string(),
            fd: File::open(format!("/run/netns/{name}"))
                .with_context(|| format!("/run/netns/{name}"))?,
        };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's fd (for setns).
    pub fn fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// The namespace's inode (the tracer's `netns` in its rows).
    pub fn inode(&self) -> Result<u64> {
        use std::os::unix::fs::MetadataExt as _;
        Ok(self.fd.metadata()?.ino())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Set a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let o = self
            .command("sysctl")
            .args(["-qw", &format!("{key}={value}")])
            .output()
            .context("running sysctl")?;
        if !o.status.success() {
            bail!(
                "sysctl {key}={value} in {}: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Ok(())
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        let fd = self.fd.as_raw_fd();
        // SAFETY: only setns (async-signal-safe) runs between fork and exec;
        // `fd` stays open in the parent until the child has exec'd.
        unsafe {
            c.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        c
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}
