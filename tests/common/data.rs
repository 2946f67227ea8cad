//! Test data: distinct pseudo-random payloads and a digest to compare them by.

use std::io::Read;

/// Deterministic pseudo-random bytes (xorshift), distinct per seed.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = vec![0u8; len.div_ceil(8) * 8];
    for chunk in out.chunks_exact_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// FNV-1a 64: a hash good enough to tell payloads apart in assertions.
pub fn hash(data: &[u8]) -> u64 {
    Digest::new().update(data).hash
}

/// Length and FNV-1a hash of a byte stream, computed as it goes by, so
/// large streams need not be kept in memory.
#[derive(Debug, Clone, Copy)]
pub struct Digest {
    pub len: u64,
    pub hash: u64,
}

impl Digest {
    /// The digest of the empty stream.
    pub fn new() -> Digest {
        Digest {
            len: 0,
            hash: 0xcbf2_9ce4_8422_2325,
        }
    }

    /// Adds `data` to the stream.
    pub fn update(mut self, data: &[u8]) -> Digest {
        self.len += data.len() as u64;
        self.hash = data.iter().fold(self.hash, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        self
    }

    /// Reads `reader` until EOF (or an error: the digest then covers what
    /// arrived before it).
    pub fn of_stream(reader: &mut dyn Read) -> Digest {
        let mut digest = Digest::new();
        let mut buffer = vec![0u8; 65536];
        loop {
            match reader.read(&mut buffer) {
                Ok(0) | Err(_) => return digest,
                Ok(n) => digest = digest.update(&buffer[..n]),
            }
        }
    }

    /// `LEN HASH\n`, the line the `digest` backend answers with.
    pub fn line(&self) -> String {
        format!("{} {:016x}\n", self.len, self.hash)
    }
}

/// The reply the `digest` backend gives for `data`.
pub fn digest_of(data: &[u8]) -> String {
    Digest::new().update(data).line()
}
