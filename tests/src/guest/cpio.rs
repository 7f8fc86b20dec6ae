//! A minimal writer for the cpio "newc" format, the one the kernel unpacks
//! as an initramfs (Documentation/driver-api/early-userspace/buffer-format.rst).
//! Uncompressed on purpose: under TCG, gunzip in the guest costs seconds.

use std::collections::BTreeSet;

/// File type bits of `st_mode`.
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// An archive being built; parent directories are added on demand.
#[derive(Default)]
pub struct Cpio {
    buf: Vec<u8>,
    next_ino: u32,
    dirs: BTreeSet<String>,
    names: BTreeSet<String>,
}

impl Cpio {
    pub fn new() -> Self {
        Self::default()
    }

    /// A directory (and its parents).
    pub fn dir(&mut self, path: &str) {
        let path = path.trim_matches('/');
        if path.is_empty() || self.dirs.contains(path) {
            return;
        }
        self.parents(path);
        self.dirs.insert(path.to_string());
        self.entry(path, S_IFDIR | 0o755, 0, &[]);
    }

    /// A regular file with `mode` permission bits.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.parents(path);
        self.entry(path, S_IFREG | (mode & 0o7777), 0, data);
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.parents(path);
        self.entry(path, S_IFLNK | 0o777, 0, target.as_bytes());
    }

    /// A character device node.
    pub fn char_dev(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        self.parents(path);
        let rdev = (major << 16) | (minor & 0xffff);
        self.entry(path, S_IFCHR | (mode & 0o7777), rdev, &[]);
    }

    /// Whether `path` was added (files added twice would both be unpacked).
    pub fn contains(&self, path: &str) -> bool {
        self.names.contains(path.trim_matches('/'))
    }

    /// The archive with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.header("TRAILER!!!", 0, 0, 0, 0);
        self.pad();
        self.buf
    }

    fn parents(&mut self, path: &str) {
        let path = path.trim_matches('/');
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
    }

    fn entry(&mut self, path: &str, mode: u32, rdev: u32, data: &[u8]) {
        let name = path.trim_matches('/');
        self.names.insert(name.to_string());
        self.next_ino += 1;
        let ino = self.next_ino;
        self.header(name, ino, mode, data.len() as u32, rdev);
        self.buf.extend_from_slice(data);
        self.pad();
    }

    /// `070701`, 13 fields of 8 hex digits, the NUL-terminated name, padded
    /// so that the data starts on a 4-byte boundary.
    fn header(&mut self, name: &str, ino: u32, mode: u32, size: u32, rdev: u32) {
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        let (rmaj, rmin) = (rdev >> 16, rdev & 0xffff);
        let fields = [
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            size,
            0, // dev major
            0, // dev minor
            rmaj,
            rmin,
            name.len() as u32 + 1,
            0, // check (unused by newc)
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parse the archive back: (name, mode, data) of every entry.
    fn parse(mut b: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let total = b.len();
        loop {
            assert_eq!(&b[..6], b"070701");
            let field = |i: usize| {
                let s = std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i]).unwrap();
                u32::from_str_radix(s, 16).unwrap() as usize
            };
            let (mode, size, namesize) = (field(1), field(6), field(11));
            let name = std::str::from_utf8(&b[110..110 + namesize - 1])
                .unwrap()
                .to_string();
            let data_at = (110 + namesize).div_ceil(4) * 4;
            let data = b[data_at..data_at + size].to_vec();
            let next = (data_at + size).div_ceil(4) * 4;
            assert!((total - b.len() + next).is_multiple_of(4));
            b = &b[next..];
            if name == "TRAILER!!!" {
                assert!(b.is_empty());
                return out;
            }
            out.push((name, mode as u32, data));
        }
    }

    #[test]
    fn round_trips_files_links_and_nodes_with_parents_first() {
        let mut c = Cpio::new();
        c.file("/lib/x86_64-linux-gnu/libc.so.6", 0o755, b"elf!!");
        c.symlink("bin/sh", "busybox");
        c.char_dev("dev/console", 0o600, 5, 1);
        c.dir("lib");
        assert!(c.contains("/bin/sh"));
        let entries = parse(&c.finish());
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "lib",
                "lib/x86_64-linux-gnu",
                "lib/x86_64-linux-gnu/libc.so.6",
                "bin",
                "bin/sh",
                "dev",
                "dev/console"
            ]
        );
        assert_eq!(entries[2].1, S_IFREG | 0o755);
        assert_eq!(entries[2].2, b"elf!!");
        assert_eq!(entries[4].1, S_IFLNK | 0o777);
        assert_eq!(entries[4].2, b"busybox");
        assert_eq!(entries[6].1, S_IFCHR | 0o600);
    }
}
