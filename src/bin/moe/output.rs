//! Where `moe` writes: results to stdout through [`stdout`] with `write!`, so that a reader that
//! goes away (`moe generate ... | head -c 1`) ends the command through an error, not a panic;
//! notes to stderr through [`note!`], which a closed stderr cannot break either.

use std::io::{ErrorKind, StdoutLock, Write};

/// The exit status after stdout was closed under us: the one a shell reports for a program
/// that SIGPIPE ended (128 + 13), as `yes | head -1` leaves `yes`.
pub const BROKEN_PIPE_STATUS: u8 = 141;

/// Standard output, locked for as long as the command holds it. Rust's `print!` panics when
/// the reader has gone; `write!` to this returns the error for `?` to carry to `main`.
pub fn stdout() -> StdoutLock<'static> {
    std::io::stdout().lock()
}

/// Whether `e` is, or was caused by, a write to a reader that has gone: the quiet end.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == ErrorKind::BrokenPipe)
    })
}

/// One message on one line: a cause that spans lines (a template error with its source
/// around it) is joined, so every error `moe` reports is the one line scripts read.
pub fn one_line(message: &str) -> String {
    let parts: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    parts.join(" ")
}

/// Writes a note to stderr; a stderr that is closed or gone loses the note, nothing more
/// (`eprintln!` would panic there, as `moe ... 2>&1 | head -1` arranges).
pub fn note_args(args: std::fmt::Arguments) {
    let _ = writeln!(std::io::stderr(), "{args}");
}

/// `eprintln!` that cannot panic: see [`note_args`].
macro_rules! note {
    ($($arg:tt)*) => {
        $crate::output::note_args(format_args!($($arg)*))
    };
}
pub(crate) use note;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_pipe_is_found_under_context() {
        let io = std::io::Error::from(ErrorKind::BrokenPipe);
        let e = anyhow::Error::from(io).context("writing the answer");
        assert!(is_broken_pipe(&e));
        assert!(!is_broken_pipe(&anyhow::anyhow!("no such file")));
    }

    #[test]
    fn messages_over_lines_become_one() {
        assert_eq!(one_line("a: b\n  --> 3\n\n  c"), "a: b --> 3 c");
    }
}
