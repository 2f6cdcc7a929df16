//! Tests that need root (network namespaces, nftables, raw sockets) or a
//! tool run when they can; with `PORTICO_REQUIRE_ROOT_TESTS=1` (CI) they
//! must, and fail instead of skipping.

/// Whether the environment asks that no test skip.
pub fn required() -> bool {
    std::env::var("PORTICO_REQUIRE_ROOT_TESTS").is_ok_and(|v| v == "1")
}

/// Whether `tool` is on the `PATH`.
pub fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// `true` when this process runs as root and every tool of `tools` is
/// installed; otherwise says why and skips (`false`), or panics when
/// skipping is not allowed.
pub fn ready_or_skip(test: &str, tools: &[&str]) -> bool {
    let reason = if !nix::unistd::geteuid().is_root() {
        Some("it needs root".to_owned())
    } else {
        missing(tools)
    };
    decide(test, reason)
}

/// `true` when every tool of `tools` is installed (no root needed).
pub fn tools_or_skip(test: &str, tools: &[&str]) -> bool {
    decide(test, missing(tools))
}

fn missing(tools: &[&str]) -> Option<String> {
    tools
        .iter()
        .find(|t| !on_path(t))
        .map(|t| format!("`{t}` is not installed (make deps)"))
}

fn decide(test: &str, reason: Option<String>) -> bool {
    match reason {
        None => true,
        Some(r) if required() => panic!("{test}: PORTICO_REQUIRE_ROOT_TESTS=1 but {r}"),
        Some(r) => {
            eprintln!("skipping {test}: {r}");
            false
        }
    }
}
