//! A long-lived `nft -i`: small transactions without starting nft each
//! time.
//!
//! nft runs each line it reads as one batch, and a line cut short runs
//! too, when its writer dies (what arrived before the end of the input):
//! a transaction's commands on one line would commit up to the last whole
//! one. So a transaction is a complete [`Script`] and the line that names
//! it, `include "/proc/<pid>/fd/<n>"`, is written at once: shorter than a
//! pipe's atomic write (`PIPE_BUF`, 4,096 bytes), it is in the pipe whole
//! or not at all, and nft refuses any shorter part of it (a cut word, a
//! string without its closing quote). nft also parses an included script
//! faster than a long line (10 ms where the line took 25, at 70 KB).

use super::script::Script;
use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The session, and how often one broke.
#[derive(Debug, Default)]
pub(super) struct SessionState {
    pub(super) session: Option<Session>,
    pub(super) failures: u32,
}

/// After this many broken sessions (an nft built without its interactive
/// mode, say), every transaction runs a fresh `nft -f -`.
pub(super) const SESSION_MAX_FAILURES: u32 = 3;

/// Transactions up to this size go through the session.
pub(super) const SESSION_MAX_BYTES: usize = 64 << 10;

/// How long a session may take to answer one transaction.
const SESSION_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `nft -i`.
pub(super) struct Session {
    child: Child,
    stdin: ChildStdin,
    stderr: mpsc::Receiver<String>,
    seq: u64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Session(pid {})", self.child.id())
    }
}

impl Session {
    pub(super) fn spawn(mut cmd: Command) -> std::io::Result<Session> {
        let mut child = cmd
            .arg("-i")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::other("nft -i without pipes"));
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Nothing useful is printed on stdout; keep the pipe from filling.
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut BufReader::new(stdout), &mut std::io::sink());
        });
        Ok(Session {
            child,
            stdin,
            stderr: rx,
            seq: 0,
        })
    }

    /// Runs a script as one batch; `Ok(Err(..))` is nft's refusal (its
    /// error lines), `Err(..)` a broken session.
    pub(super) fn apply(
        &mut self,
        script: &str,
    ) -> std::io::Result<std::result::Result<(), String>> {
        self.seq += 1;
        let marker = format!("portico-sync-marker n{}", self.seq);
        // Held until nft answers, so that the path stays valid.
        let script = Script::new(script)?;
        self.stdin
            .write_all(include_line(&script, &marker).as_bytes())?;
        self.stdin.flush()?;
        let mut lines: Vec<String> = Vec::new();
        loop {
            match self.stderr.recv_timeout(SESSION_TIMEOUT) {
                Ok(l) if l.contains(&marker) => break,
                Ok(l) => {
                    // Carets under an echoed command carry nothing.
                    if !l.trim().is_empty() && !l.trim().chars().all(|c| matches!(c, '^' | '~')) {
                        lines.push(l);
                    }
                }
                Err(e) => return Err(std::io::Error::other(format!("nft -i: {e}"))),
            }
        }
        // The marker's own error precedes its echo.
        if lines.last().is_some_and(|l| l.contains("Error:")) {
            lines.pop();
        }
        if lines.iter().any(|l| l.contains("Error:")) {
            Ok(Err(lines.join("\n")))
        } else {
            Ok(Ok(()))
        }
    }
}

/// What a transaction is to the session: one write of two lines, the
/// script and the marker command whose error ends its answer.
fn include_line(script: &Script, marker: &str) -> String {
    format!("include \"{}\"\nlist set ip {marker}\n", script.path())
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transaction_is_one_short_line_naming_its_whole_script() {
        let text = "add table ip portico\n".repeat(3000);
        let script = Script::new(&text).unwrap();
        let written = include_line(&script, "portico-sync-marker n1");
        let (first, marker) = written.split_once('\n').unwrap();
        assert_eq!(marker, "list set ip portico-sync-marker n1\n");
        // One write(2) of at most PIPE_BUF bytes reaches a pipe whole.
        assert!(written.len() <= 4096, "{written}");
        let path = first
            .strip_prefix("include \"")
            .and_then(|p| p.strip_suffix('"'))
            .unwrap();
        assert!(!path.contains('"'));
        assert_eq!(std::fs::read_to_string(path).unwrap(), text);
    }
}
