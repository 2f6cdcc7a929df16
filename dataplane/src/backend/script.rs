//! Handing a script to nft whole. The script is written to an anonymous
//! memory file first, and nft only starts reading once it is complete: an
//! agent that dies while writing leaves nothing nft could run, where a pipe
//! would give nft what arrived so far, and nft commits a prefix that ends
//! on a line break (every chain, and only some of the elements).
//!
//! ```text
//!  script ──write──> memfd (complete) ──> nft -f -      (as standard input)
//!                                    └──> nft -i        (`include "/proc/<pid>/fd/<n>"`)
//! ```

use std::fs::File;
use std::io::{self, Seek as _, SeekFrom, Write as _};
use std::os::fd::AsRawFd as _;
use std::process::Stdio;

/// A complete script in a memory file.
#[derive(Debug)]
pub(super) struct Script {
    file: File,
}

impl Script {
    /// Writes `text` whole.
    pub(super) fn new(text: &str) -> io::Result<Script> {
        use nix::sys::memfd::{MFdFlags, memfd_create};
        let mut file = File::from(memfd_create(c"portico-nft-script", MFdFlags::MFD_CLOEXEC)?);
        file.write_all(text.as_bytes())?;
        file.seek(SeekFrom::Start(0))?;
        Ok(Script { file })
    }

    /// The script as a process's standard input (read once, from the
    /// start: nft 1.0.6 reads all of it before it parses).
    pub(super) fn into_stdin(self) -> Stdio {
        Stdio::from(self.file)
    }

    /// A path by which another process opens the script while this one
    /// holds it (from the start, whatever was read of it before).
    pub(super) fn path(&self) -> String {
        format!("/proc/{}/fd/{}", std::process::id(), self.file.as_raw_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    #[test]
    fn a_script_is_read_whole_from_its_path_and_from_the_start() {
        let text = "add table ip portico\nadd chain ip portico services\n".repeat(1000);
        let script = Script::new(&text).unwrap();
        assert_eq!(std::fs::read_to_string(script.path()).unwrap(), text);
        assert_eq!(std::fs::read_to_string(script.path()).unwrap(), text);
        let mut stdin = script.file.try_clone().unwrap();
        let mut read = String::new();
        stdin.read_to_string(&mut read).unwrap();
        assert_eq!(read, text);
    }
}
