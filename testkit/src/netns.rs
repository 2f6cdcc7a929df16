//! Network namespaces for real-packet tests: created with unique names,
//! deleted on drop, entered by a thread, joined by veth pairs.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Runs a command that must succeed; panics with its stderr otherwise.
pub fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace with `lo` up, deleted (with its links) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// A fresh namespace `<prefix><pid>x<n><suffix>`: unique across the
    /// tests of every process running at once.
    pub fn new(prefix: &str, suffix: &str) -> Netns {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "{prefix}{}x{}{suffix}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        Netns::named(name)
    }

    /// A namespace of this exact name.
    pub fn named(name: String) -> Netns {
        run(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        run(&["ip", "-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// Its name (`ip netns exec NAME …`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command run inside the namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Sets sysctls (`key=value`) inside the namespace.
    pub fn sysctl(&self, settings: &[&str]) {
        for kv in settings {
            run(&["ip", "netns", "exec", &self.name, "sysctl", "-qw", kv]);
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Runs `f` on a fresh thread that has entered the network namespace `ns`;
/// sockets it opens stay in that namespace.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    use nix::sched::{CloneFlags, setns};
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        setns(&file, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}
