//! NodePort allocation from `--service-node-port-range`, as kube-apiserver
//! does it (KEP-3668).
//!
//! ```text
//!  30000 ............ 30085 | 30086 .......................... 32767
//!  |--- static band ------| |------------ dynamic band -------------|
//!   requested ports only,     allocate() picks a random start here and
//!   unless the dynamic band   takes the next free port, wrapping; when
//!   is full                   the band is full, the static band is used
//! ```
//!
//! The static band is `min(max(16, size / 32), 128)` ports at the bottom of
//! the range (none when the range has 16 ports or fewer), so that ports
//! asked for by number rarely collide with ports handed out at random.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::fmt;
use std::str::FromStr;

/// An inclusive range of ports, `30000-32767` (or `30000+2768`: a base
/// and a size, as kube-apiserver also accepts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    /// The first port.
    pub base: u16,
    /// The number of ports (at least 1).
    pub size: u32,
}

impl Default for PortRange {
    /// kube-apiserver's default `--service-node-port-range`, 30000-32767.
    fn default() -> Self {
        PortRange {
            base: 30000,
            size: 2768,
        }
    }
}

impl PortRange {
    /// The range `first..=last`.
    pub fn new(first: u16, last: u16) -> Result<Self, PortRangeError> {
        if last < first {
            return Err(PortRangeError(format!(
                "{first}-{last}: the end is below the start"
            )));
        }
        Ok(PortRange {
            base: first,
            size: u32::from(last - first) + 1,
        })
    }

    /// The last port.
    pub fn last(&self) -> u16 {
        // size >= 1 and base + size - 1 <= 65535 by construction.
        u16::try_from(u32::from(self.base) + self.size - 1).unwrap_or(u16::MAX)
    }

    /// Whether the port is in the range.
    pub fn contains(&self, port: u16) -> bool {
        port >= self.base && u32::from(port - self.base) < self.size
    }

    /// The size of the static band (KEP-3668).
    pub fn static_band(&self) -> u32 {
        if self.size <= 16 {
            0
        } else {
            (self.size / 32).clamp(16, 128)
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.base, self.last())
    }
}

/// A port range that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("port range {0} (expected FIRST-LAST, e.g. 30000-32767)")]
pub struct PortRangeError(String);

impl FromStr for PortRange {
    type Err = PortRangeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let bad = || PortRangeError(format!("{s:?}"));
        let port = |p: &str| p.trim().parse::<u16>().map_err(|_| bad());
        if let Some((first, size)) = s.split_once('+') {
            let first = port(first)?;
            let size: u32 = size.trim().parse().map_err(|_| bad())?;
            let last = size
                .checked_sub(1)
                .and_then(|n| u16::try_from(u32::from(first) + n).ok())
                .ok_or_else(bad)?;
            return PortRange::new(first, last);
        }
        match s.split_once('-') {
            Some((first, last)) => PortRange::new(port(first)?, port(last)?),
            None => {
                let p = port(s)?;
                PortRange::new(p, p)
            }
        }
    }
}

/// Why a port cannot be had.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// The port is outside the range.
    #[error("port {port} is outside the range {range}")]
    OutOfRange {
        /// The port.
        port: u16,
        /// The range.
        range: PortRange,
    },
    /// The port is taken.
    #[error("port {0} is already allocated")]
    Taken(u16),
    /// Every port of the range is taken.
    #[error("no free port left in the range {0}")]
    Full(PortRange),
}

/// The ports of a range and which are taken.
#[derive(Clone, Debug)]
pub struct PortPool {
    range: PortRange,
    bits: Vec<u64>,
    used: u32,
    rng: SmallRng,
}

impl PortPool {
    /// A pool with every port free.
    pub fn new(range: PortRange) -> Self {
        PortPool {
            range,
            bits: vec![0; range.size.div_ceil(64) as usize],
            used: 0,
            rng: SmallRng::from_os_rng(),
        }
    }

    /// The same pool with its generator seeded, for reproducible tests.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.rng = SmallRng::seed_from_u64(seed);
        self
    }

    /// The range.
    pub fn range(&self) -> PortRange {
        self.range
    }

    /// How many ports are taken.
    pub fn used(&self) -> u32 {
        self.used
    }

    /// How many ports are free.
    pub fn free(&self) -> u32 {
        self.range.size - self.used
    }

    fn index(&self, port: u16) -> Option<usize> {
        self.range
            .contains(port)
            .then(|| usize::from(port - self.range.base))
    }

    fn get(&self, i: usize) -> bool {
        self.bits[i / 64] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, i: usize, on: bool) {
        if on {
            self.bits[i / 64] |= 1 << (i % 64);
        } else {
            self.bits[i / 64] &= !(1 << (i % 64));
        }
    }

    /// Whether the port is taken.
    pub fn is_allocated(&self, port: u16) -> bool {
        self.index(port).is_some_and(|i| self.get(i))
    }

    /// Takes a port asked for by number.
    pub fn allocate_port(&mut self, port: u16) -> Result<(), PortError> {
        let i = self.index(port).ok_or(PortError::OutOfRange {
            port,
            range: self.range,
        })?;
        if self.get(i) {
            return Err(PortError::Taken(port));
        }
        self.set(i, true);
        self.used += 1;
        Ok(())
    }

    /// Takes a free port at random: from the dynamic band, else from the
    /// static band.
    pub fn allocate(&mut self) -> Result<u16, PortError> {
        let band = self.range.static_band() as usize;
        let size = self.range.size as usize;
        for (lo, hi) in [(band, size), (0, band)] {
            if let Some(i) = self.next_free(lo, hi) {
                self.set(i, true);
                self.used += 1;
                return Ok(self.range.base + u16::try_from(i).unwrap_or(0));
            }
        }
        Err(PortError::Full(self.range))
    }

    /// The next free index in `lo..hi` after a random start, wrapping.
    fn next_free(&mut self, lo: usize, hi: usize) -> Option<usize> {
        if lo >= hi {
            return None;
        }
        let start = self.rng.random_range(lo..hi);
        (start..hi).chain(lo..start).find(|&i| !self.get(i))
    }

    /// Frees a port; whether it was taken.
    pub fn release(&mut self, port: u16) -> bool {
        match self.index(port) {
            Some(i) if self.get(i) => {
                self.set(i, false);
                self.used -= 1;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn range(s: &str) -> PortRange {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_parse_as_kube_apiserver_takes_them() {
        assert_eq!(
            range("30000-32767"),
            PortRange {
                base: 30000,
                size: 2768
            }
        );
        assert_eq!(range("30000+2768"), range("30000-32767"));
        assert_eq!(
            range("8080"),
            PortRange {
                base: 8080,
                size: 1
            }
        );
        for bad in ["", "x", "32767-30000", "30000-70000", "65535+2", "1+0"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad:?}");
        }
        assert_eq!(range("30000-32767").to_string(), "30000-32767");
    }

    #[test]
    fn the_static_band_follows_kep_3668() {
        // min(max(16, size / 32), 128); none for 16 ports or fewer.
        assert_eq!(range("30000-32767").static_band(), 86);
        assert_eq!(range("30000-30015").static_band(), 0);
        assert_eq!(range("30000-30099").static_band(), 16);
        assert_eq!(range("1-65535").static_band(), 128);
    }

    #[test]
    fn random_ports_come_from_the_dynamic_band_until_it_is_full() {
        let r = range("30000-30099"); // band: 30000..=30015
        let mut p = PortPool::new(r).with_seed(7);
        let mut got = Vec::new();
        for _ in 0..84 {
            let port = p.allocate().unwrap();
            assert!(port >= 30016, "{port} is in the static band");
            got.push(port);
        }
        got.sort_unstable();
        got.dedup();
        assert_eq!(got.len(), 84, "never twice");
        for _ in 0..16 {
            assert!(p.allocate().unwrap() < 30016, "then the static band");
        }
        assert_eq!(p.allocate(), Err(PortError::Full(r)));
        assert!(p.release(30050));
        assert_eq!(p.allocate().unwrap(), 30050);
    }

    #[test]
    fn requested_ports_are_taken_once_and_only_in_range() {
        let mut p = PortPool::new(range("30000-32767"));
        p.allocate_port(30000).unwrap();
        assert_eq!(p.allocate_port(30000), Err(PortError::Taken(30000)));
        assert!(matches!(
            p.allocate_port(8080),
            Err(PortError::OutOfRange { port: 8080, .. })
        ));
        assert_eq!(p.used(), 1);
        assert!(p.is_allocated(30000));
        assert!(!p.release(30001));
        assert!(p.release(30000));
        assert_eq!(p.free(), 2768);
    }
}
