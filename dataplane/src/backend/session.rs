//! A long-lived `nft -i`: small transactions without starting nft each
//! time.

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
        let line: Vec<&str> = script.lines().collect();
        writeln!(self.stdin, "{}", line.join(" ; "))?;
        writeln!(self.stdin, "list set ip {marker}")?;
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

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
