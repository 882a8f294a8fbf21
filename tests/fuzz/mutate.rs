//! Mutations of valid inputs: byte flips, truncation, huge counts and
//! lengths, overlong varints, inserted and deleted bytes, splices.

use super::rng::Rng;

/// Mutants are kept below this size (seeds are far smaller).
pub const MAX_MUTANT_BYTES: usize = 64 * 1024;

/// 32-bit counts and lengths that break decoders: the largest, -1 (null),
/// -2 (the first invalid negative), the smallest, a plausible large one.
const HUGE_I32: [i32; 6] = [0x7fff_ffff, -1, -2, i32::MIN, 0x0100_0000, 0x0000_ffff];
const HUGE_I16: [i16; 5] = [0x7fff, -1, -2, i16::MIN, 0x4000];
/// Varints: u32::MAX (a compact count of 0xfffffffe), 0x7fffffff + 1,
/// overlong forms (ten 0xff, a sixth byte, a zero padded to six bytes),
/// bits past 32 in the fifth byte.
const VARINTS: [&[u8]; 6] = [
    &[0xff, 0xff, 0xff, 0xff, 0x0f],
    &[0x80, 0x80, 0x80, 0x80, 0x08],
    &[0xff; 10],
    &[0x80, 0x80, 0x80, 0x80, 0x80, 0x01],
    &[0x80, 0x80, 0x80, 0x80, 0x80, 0x00],
    &[0xff, 0xff, 0xff, 0xff, 0x7f],
];
const INTERESTING_BYTES: [u8; 6] = [0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff];

/// One mutant: a seed with one to four mutations stacked.
pub fn mutant(seeds: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
    let mut data = rng.pick(seeds).clone();
    for _ in 0..1 + rng.below(4) {
        mutate_once(&mut data, seeds, rng);
    }
    data.truncate(MAX_MUTANT_BYTES);
    data
}

fn mutate_once(data: &mut Vec<u8>, seeds: &[Vec<u8>], rng: &mut Rng) {
    if data.is_empty() {
        let n = 1 + rng.below(8);
        data.extend(rng.bytes(n));
        return;
    }
    let at = rng.below(data.len());
    match rng.below(11) {
        0 => data[at] ^= 1 << rng.below(8),
        1 => data[at] = *rng.pick(&INTERESTING_BYTES),
        2 => data[at] = rng.next_u64() as u8,
        3 => data.truncate(at),
        4 => overwrite(data, at, &rng.pick(&HUGE_I32).to_be_bytes()),
        5 => overwrite(data, at, &rng.pick(&HUGE_I16).to_be_bytes()),
        6 => {
            let varint: &[u8] = VARINTS[rng.below(VARINTS.len())];
            overwrite(data, at, varint);
        }
        7 => {
            let varint = rng.pick(&VARINTS);
            data.splice(at..at, varint.iter().copied());
        }
        8 => {
            let n = 1 + rng.below(16);
            let bytes = rng.bytes(n);
            data.splice(at..at, bytes);
        }
        9 => {
            let end = (at + 1 + rng.below(16)).min(data.len());
            data.drain(at..end);
        }
        _ => splice(data, at, seeds, rng),
    }
}

fn overwrite(data: &mut [u8], at: usize, bytes: &[u8]) {
    let end = (at + bytes.len()).min(data.len());
    data[at..end].copy_from_slice(&bytes[..end - at]);
}

/// This input up to `at`, then another seed from a random point on.
fn splice(data: &mut Vec<u8>, at: usize, seeds: &[Vec<u8>], rng: &mut Rng) {
    let other = rng.pick(seeds);
    if other.is_empty() {
        return;
    }
    let from = rng.below(other.len());
    data.truncate(at);
    data.extend_from_slice(&other[from..]);
}
