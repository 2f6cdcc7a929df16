//! A hierarchical bitmap: one bit per address, plus summary levels in which
//! a bit says "the word below is full".
//!
//! Level 0 has one bit per address. Bit `i` of level `k + 1` is set exactly
//! when word `i` of level `k` is all ones. Levels are added until one has at
//! most [`TOP_WORDS`] words, which is scanned linearly. Finding the next
//! clear bit from a position therefore costs O(levels) word operations, not
//! O(distance): full regions are skipped 64, 4096, 262144… bits at a time.
//!
//! For a /12 (2^20 bits): 16384 words (128 KiB), then 256 words (2 KiB),
//! then 4 words.

use std::fmt;

/// Stop adding summary levels once a level has at most this many words.
const TOP_WORDS: usize = 8;

/// A set of `len` bits with a fast "next clear bit" search.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Bitmap {
    len: usize,
    /// `levels[0]` holds the bits; each further level summarises full words.
    /// Bits past the end of a level are kept set, so they look full.
    levels: Vec<Vec<u64>>,
}

impl fmt::Debug for Bitmap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bitmap")
            .field("len", &self.len)
            .field("levels", &self.levels.len())
            .field("ones", &self.count_ones())
            .finish()
    }
}

/// A word with bits `n..64` set (the padding after `n` real bits).
fn padding(n: usize) -> u64 {
    if n.is_multiple_of(64) {
        0
    } else {
        u64::MAX << (n % 64)
    }
}

impl Bitmap {
    /// A bitmap of `len` clear bits (`len >= 1`).
    pub(crate) fn new(len: usize) -> Bitmap {
        let words = len.div_ceil(64).max(1);
        let mut bits = vec![0u64; words];
        if let Some(last) = bits.last_mut() {
            *last |= padding(len);
        }
        let mut bm = Bitmap {
            len,
            levels: vec![bits],
        };
        bm.rebuild_summaries();
        bm
    }

    /// Recomputes every summary level from level 0.
    pub(crate) fn rebuild_summaries(&mut self) {
        self.levels.truncate(1);
        while let Some(below) = self.levels.last() {
            if below.len() <= TOP_WORDS {
                break;
            }
            let n = below.len();
            let mut level = vec![0u64; n.div_ceil(64)];
            for (i, w) in below.iter().enumerate() {
                if *w == u64::MAX {
                    level[i / 64] |= 1 << (i % 64);
                }
            }
            if let Some(last) = level.last_mut() {
                *last |= padding(n);
            }
            self.levels.push(level);
        }
    }

    /// The number of bits.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether bit `i` is set.
    pub(crate) fn get(&self, i: usize) -> bool {
        i < self.len && self.levels[0][i / 64] & (1 << (i % 64)) != 0
    }

    /// Sets bit `i`; returns false when it was already set.
    pub(crate) fn set(&mut self, i: usize) -> bool {
        if i >= self.len {
            return false;
        }
        let mut idx = i;
        for (level, words) in self.levels.iter_mut().enumerate() {
            let bit = 1u64 << (idx % 64);
            let word = &mut words[idx / 64];
            if level == 0 && *word & bit != 0 {
                return false;
            }
            *word |= bit;
            if *word != u64::MAX {
                break;
            }
            idx /= 64;
        }
        true
    }

    /// Clears bit `i`; returns false when it was already clear.
    pub(crate) fn clear(&mut self, i: usize) -> bool {
        if i >= self.len {
            return false;
        }
        let mut idx = i;
        for (level, words) in self.levels.iter_mut().enumerate() {
            let bit = 1u64 << (idx % 64);
            let word = &mut words[idx / 64];
            if level == 0 && *word & bit == 0 {
                return false;
            }
            let was_full = *word == u64::MAX;
            *word &= !bit;
            if !was_full {
                break;
            }
            idx /= 64;
        }
        true
    }

    /// The first clear bit at or after `from`, if any.
    pub(crate) fn next_clear(&self, from: usize) -> Option<usize> {
        if from >= self.len {
            return None;
        }
        self.next_clear_at(0, from)
    }

    /// The first clear bit of `level` at or after position `from`.
    fn next_clear_at(&self, level: usize, from: usize) -> Option<usize> {
        let words = &self.levels[level];
        let w = from / 64;
        if w >= words.len() {
            return None;
        }
        let m = !words[w] & (u64::MAX << (from % 64));
        if m != 0 {
            return Some(w * 64 + m.trailing_zeros() as usize);
        }
        // The next word of this level that is not full.
        let next = if level + 1 < self.levels.len() {
            self.next_clear_at(level + 1, w + 1)?
        } else {
            (w + 1..words.len()).find(|&i| words[i] != u64::MAX)?
        };
        let m = !words[next];
        // `next` is not full according to the summary, so `m != 0`; padding
        // bits are set, so the result is a real bit.
        (m != 0).then(|| next * 64 + m.trailing_zeros() as usize)
    }

    /// The positions of the set bits, ascending.
    pub(crate) fn ones(&self) -> Ones<'_> {
        Ones {
            words: &self.levels[0],
            len: self.len,
            index: 0,
            current: self.levels[0].first().copied().unwrap_or(0),
        }
    }

    /// The number of set bits.
    pub(crate) fn count_ones(&self) -> usize {
        self.ones().count()
    }

    /// Heap memory held, in bytes.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.levels.capacity() * std::mem::size_of::<Vec<u64>>()
            + self
                .levels
                .iter()
                .map(|l| l.capacity() * std::mem::size_of::<u64>())
                .sum::<usize>()
    }
}

/// Iterator over the set bits of a [`Bitmap`].
#[derive(Clone)]
pub(crate) struct Ones<'a> {
    words: &'a [u64],
    len: usize,
    index: usize,
    current: u64,
}

impl Iterator for Ones<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        loop {
            if self.current != 0 {
                let bit = self.current.trailing_zeros() as usize;
                self.current &= self.current - 1;
                let pos = self.index * 64 + bit;
                // Padding bits of the last word are not real bits.
                return (pos < self.len).then_some(pos);
            }
            self.index += 1;
            self.current = *self.words.get(self.index)?;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Checks the summary invariant on every level.
    fn check(bm: &Bitmap) {
        for k in 1..bm.levels.len() {
            let below = &bm.levels[k - 1];
            for (i, w) in below.iter().enumerate() {
                let full = bm.levels[k][i / 64] & (1 << (i % 64)) != 0;
                assert_eq!(full, *w == u64::MAX, "level {k} bit {i}");
            }
        }
    }

    #[test]
    fn levels_of_a_slash12() {
        let bm = Bitmap::new(1 << 20);
        assert_eq!(bm.levels.len(), 3);
        assert_eq!(bm.levels[0].len(), 16384);
        assert_eq!(bm.levels[1].len(), 256);
        assert_eq!(bm.levels[2].len(), 4);
        assert!(bm.heap_bytes() < 131 * 1024);
    }

    #[test]
    fn set_clear_get_and_padding() {
        let mut bm = Bitmap::new(70);
        assert_eq!(bm.len(), 70);
        assert_eq!(bm.next_clear(0), Some(0));
        assert!(bm.set(0));
        assert!(!bm.set(0));
        assert!(bm.get(0));
        assert!(!bm.set(70));
        assert!(!bm.get(70));
        for i in 0..70 {
            bm.set(i);
        }
        assert_eq!(bm.next_clear(0), None);
        assert_eq!(bm.count_ones(), 70);
        assert!(bm.clear(69));
        assert!(!bm.clear(69));
        assert_eq!(bm.next_clear(0), Some(69));
        assert_eq!(bm.next_clear(70), None);
    }

    #[test]
    fn next_clear_skips_full_regions() {
        let n = 1 << 20;
        let mut bm = Bitmap::new(n);
        for i in 0..n - 1 {
            bm.set(i);
        }
        check(&bm);
        assert_eq!(bm.next_clear(0), Some(n - 1));
        assert!(bm.clear(12345));
        check(&bm);
        assert_eq!(bm.next_clear(0), Some(12345));
        assert_eq!(bm.next_clear(12346), Some(n - 1));
        bm.set(n - 1);
        check(&bm);
        assert_eq!(bm.next_clear(12346), None);
        let ones: Vec<usize> = bm.ones().take(3).collect();
        assert_eq!(ones, vec![0, 1, 2]);
        let mut rebuilt = bm.clone();
        rebuilt.rebuild_summaries();
        assert_eq!(rebuilt, bm);
    }

    #[test]
    fn next_clear_matches_naive() {
        let n = 5000;
        let mut bm = Bitmap::new(n);
        let mut naive = vec![false; n];
        let mut x: u64 = 7;
        for _ in 0..20000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let i = (x >> 33) as usize % n;
            // Mostly sets, so that the bitmap gets nearly full.
            if (x >> 20).is_multiple_of(8) {
                assert_eq!(bm.clear(i), naive[i]);
                naive[i] = false;
            } else {
                assert_eq!(bm.set(i), !naive[i]);
                naive[i] = true;
            }
            let from = (x >> 45) as usize % n;
            let expected = (from..n).find(|&j| !naive[j]);
            assert_eq!(bm.next_clear(from), expected);
        }
        check(&bm);
    }
}
