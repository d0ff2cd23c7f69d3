//! Deterministic structured mutation of seed inputs: the fuzzing that runs without AFL++.
//!
//! Contract: [`Mutants::new`] with the same seeds and the same `rng_seed` yields the same
//! sequence, so a mutant that crashes a target is reproduced by rerunning the same command.
//! Each mutant applies one to four edits to one seed (occasionally spliced with another):
//! bit flips, bytes with a meaning in the formats fuzzed here (`<`, `"`, `=`, newline, digits,
//! `#`, 0x00, 0xff), deletions, duplications of a range (deeper nesting, repeated keys),
//! insertions, truncation, and long digit runs at a digit (overflowing numbers). It is blind
//! (no coverage feedback), so it complements AFL++ rather than replacing it.

/// Bytes that mean something in XML, JSON, `KEY=VALUE` files, command lines and env blocks.
const INTERESTING: &[u8] = b"<>/\"'=&;\n\r\t #{}[]:,.-+0123456789abcdefx\x00\x7f\x80\xff";

/// Numbers that overflow `u32`, `u64` or `f64` durations, or are otherwise edgy.
const LONG_NUMBERS: &[&[u8]] = &[
    b"4294967296",
    b"18446744073709551616",
    b"99999999999999999999999999999",
    b"0000000000000000000001",
    b"-1",
    b"1e999",
    b"340282366920938463463374607431768211456",
];

/// An endless, deterministic stream of mutants of `seeds`.
#[derive(Debug, Clone)]
pub struct Mutants {
    seeds: Vec<Vec<u8>>,
    state: u64,
}

impl Mutants {
    /// Mutants of `seeds` (an empty list mutates the empty input), in the order fixed by
    /// `rng_seed`.
    pub fn new(seeds: Vec<Vec<u8>>, rng_seed: u64) -> Self {
        let seeds = if seeds.is_empty() {
            vec![Vec::new()]
        } else {
            seeds
        };
        Self {
            seeds,
            state: rng_seed,
        }
    }

    /// splitmix64: small, fast, and good enough to pick edits.
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// A position in `0..=len`.
    fn position(&mut self, len: usize) -> usize {
        self.below(len + 1)
    }

    /// A range `start..end` inside `0..len`, at most `max` long.
    fn range(&mut self, len: usize, max: usize) -> (usize, usize) {
        let start = self.position(len);
        let end = start + self.below((len - start).min(max) + 1);
        (start, end)
    }

    fn edit(&mut self, input: &mut Vec<u8>) {
        let len = input.len();
        match self.below(9) {
            0 if len > 0 => {
                let at = self.below(len);
                input[at] ^= 1 << self.below(8);
            }
            1 if len > 0 => {
                let at = self.below(len);
                input[at] = INTERESTING[self.below(INTERESTING.len())];
            }
            2 => {
                let (start, end) = self.range(len, 64);
                input.drain(start..end);
            }
            3 => {
                // Duplicate a range, sometimes many times: nesting depth, repeated keys.
                let (start, end) = self.range(len, 128);
                let copies = if self.below(8) == 0 {
                    1 + self.below(200)
                } else {
                    1
                };
                let chunk = input[start..end].repeat(copies);
                let at = self.position(len);
                input.splice(at..at, chunk);
            }
            4 => {
                let count = 1 + self.below(8);
                let bytes: Vec<u8> = (0..count)
                    .map(|_| INTERESTING[self.below(INTERESTING.len())])
                    .collect();
                let at = self.position(len);
                input.splice(at..at, bytes);
            }
            5 => {
                let at = self.position(len);
                input.truncate(at);
            }
            6 => {
                let other = self.below(self.seeds.len());
                let other_len = self.seeds[other].len();
                let from = self.position(other_len);
                let at = self.position(len);
                input.truncate(at);
                input.extend_from_slice(&self.seeds[other][from..]);
            }
            7 if len > 0 => {
                // A long number where a digit is.
                let start = self.below(len);
                if let Some(at) = (start..len)
                    .chain(0..start)
                    .find(|&i| input[i].is_ascii_digit())
                {
                    let number = LONG_NUMBERS[self.below(LONG_NUMBERS.len())];
                    input.splice(at..at + 1, number.iter().copied());
                }
            }
            _ if len > 0 => {
                let at = self.below(len);
                input[at] = self.next_u64() as u8;
            }
            _ => input.push(self.next_u64() as u8),
        }
    }
}

impl Iterator for Mutants {
    /// The index of the seed mutated and the mutant.
    type Item = (usize, Vec<u8>);

    fn next(&mut self) -> Option<Self::Item> {
        let index = self.below(self.seeds.len());
        let mut input = self.seeds[index].clone();
        for _ in 0..1 + self.below(4) {
            self.edit(&mut input);
        }
        Some((index, input))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_mutants_and_they_differ_from_the_seeds() {
        let seeds = vec![b"KEY=VALUE\nOTHER=12\n".to_vec(), b"<a b=\"1\"/>".to_vec()];
        let first: Vec<_> = Mutants::new(seeds.clone(), 7).take(200).collect();
        let again: Vec<_> = Mutants::new(seeds.clone(), 7).take(200).collect();
        let other: Vec<_> = Mutants::new(seeds.clone(), 8).take(200).collect();
        assert_eq!(first, again);
        assert_ne!(first, other);
        let changed = first.iter().filter(|(i, m)| *m != seeds[*i]).count();
        assert!(changed > 150, "only {changed} of 200 mutants differ");
        assert!(first.iter().any(|(i, _)| *i == 0) && first.iter().any(|(i, _)| *i == 1));
    }

    #[test]
    fn no_seeds_mutates_the_empty_input() {
        let mutants: Vec<_> = Mutants::new(Vec::new(), 1).take(50).collect();
        assert!(mutants.iter().any(|(_, m)| !m.is_empty()));
    }
}
