//! Shell completions (clap_complete) and man pages (clap_mangen), generated
//! from the same clap definitions as the parser (`cli::Cli`), so they cannot
//! drift from the flags the binary accepts.

use std::{io, path::Path};

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

/// The completion script for `shell`.
pub fn completions(shell: Shell, out: &mut dyn io::Write) {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "tracer", out);
}

/// The man pages, as (file name, roff): `tracer.1` and one page per visible
/// subcommand (`tracer-summary.1`, ...), git style.
pub fn man_pages() -> io::Result<Vec<(String, Vec<u8>)>> {
    // Without the target: one set of pages serves every architecture.
    let mut cmd = Cli::command()
        .version(crate::cli::SOURCE_VERSION)
        .disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    let subs: Vec<clap::Command> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .cloned()
        .collect();
    for c in std::iter::once(cmd).chain(subs) {
        let man = clap_mangen::Man::new(c);
        let mut roff = Vec::new();
        man.render(&mut roff)?;
        pages.push((man.get_filename(), roff));
    }
    Ok(pages)
}

/// Write `man_pages()` into `dir` (created if missing); returns the paths.
pub fn write_man_pages(dir: &Path) -> io::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for (name, roff) in man_pages()? {
        let path = dir.join(name);
        std::fs::write(&path, roff)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(shell: Shell) -> String {
        let mut out = Vec::new();
        completions(shell, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn completions_name_every_subcommand_and_flag() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let s = script(shell);
            for word in [
                "summary",
                "serve",
                "events",
                "completions",
                "close-wait-age",
                "rport",
            ] {
                assert!(s.contains(word), "{shell}: no {word}");
            }
        }
    }

    #[test]
    fn bash_completion_is_valid_bash() {
        let path =
            std::env::temp_dir().join(format!("tracer-completion-{}.bash", std::process::id()));
        std::fs::write(&path, script(Shell::Bash)).unwrap();
        let out = std::process::Command::new("bash")
            .arg("-n")
            .arg(&path)
            .output()
            .expect("bash is installed");
        std::fs::remove_file(&path).unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn man_pages_cover_each_subcommand_and_its_options() {
        let pages = man_pages().unwrap();
        let names: Vec<&str> = pages.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "tracer.1",
                "tracer-events.1",
                "tracer-summary.1",
                "tracer-serve.1",
                "tracer-check.1",
                "tracer-top.1",
                "tracer-record.1",
                "tracer-report.1",
                "tracer-completions.1"
            ]
        );
        let page = |n: &str| {
            let (_, roff) = pages.iter().find(|(name, _)| name == n).unwrap();
            String::from_utf8(roff.clone()).unwrap()
        };
        let top = page("tracer.1");
        assert!(top.starts_with(".ie \\n(.g .ds Aq"), "roff preamble");
        assert!(top.contains(".TH tracer 1"), "{top}");
        assert!(
            top.contains(crate::cli::SOURCE_VERSION),
            "version in the page"
        );
        assert!(
            !top.contains(env!("TRACER_TARGET")),
            "no target in the page"
        );
        assert!(top.contains("CAP_BPF"), "privileges in the description");
        // roff escapes '-' as '\-'.
        assert!(page("tracer-summary.1").contains("\\-\\-close\\-wait\\-age"));
        assert!(page("tracer-serve.1").contains("\\-\\-listen"));
        assert!(page("tracer-events.1").contains("\\-\\-ring\\-kib"));
    }
}
