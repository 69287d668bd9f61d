//! Deterministic test data: fast to generate, distinct per seed, so every round pushes new
//! content and no registry can answer from deduplication.

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

/// Fills `buf` with pseudo-random bytes from `seed` (xorshift64*, about 5 GB/s).
pub fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

/// One blob held in memory, with its digest.
#[derive(Clone)]
pub struct Blob {
    /// The bytes.
    pub bytes: Bytes,
    /// `sha256:<hex>`.
    pub digest: String,
}

impl Blob {
    /// A blob of `len` bytes from `seed`.
    pub fn generate(len: usize, seed: u64) -> Blob {
        let mut buf = vec![0u8; len];
        fill(&mut buf, seed);
        Blob {
            digest: sha256(&buf),
            bytes: buf.into(),
        }
    }
}

/// `sha256:<hex>` of bytes.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A big blob described by its chunks: chunk `i` is generated from `seed + i` when needed.
#[derive(Clone, Copy)]
pub struct BigBlob {
    /// Total size.
    pub len: u64,
    /// Chunk size.
    pub chunk: usize,
    /// Seed of chunk 0.
    pub seed: u64,
}

impl BigBlob {
    /// Number of chunks.
    pub fn chunks(&self) -> u64 {
        self.len.div_ceil(self.chunk as u64)
    }

    /// Chunk `i`.
    pub fn chunk(&self, i: u64) -> Bytes {
        let start = i * self.chunk as u64;
        let len = (self.len - start).min(self.chunk as u64) as usize;
        let mut buf = vec![0u8; len];
        fill(&mut buf, self.seed.wrapping_add(i));
        buf.into()
    }

    /// The digest, computed by generating every chunk once (before timing starts).
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        for i in 0..self.chunks() {
            h.update(self.chunk(i));
        }
        format!("sha256:{}", hex::encode(h.finalize()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_distinct() {
        assert_eq!(
            Blob::generate(1000, 1).digest,
            Blob::generate(1000, 1).digest
        );
        assert_ne!(
            Blob::generate(1000, 1).digest,
            Blob::generate(1000, 2).digest
        );
        let big = BigBlob {
            len: 2500,
            chunk: 1000,
            seed: 7,
        };
        assert_eq!(big.chunks(), 3);
        assert_eq!(big.chunk(2).len(), 500);
        let whole: Vec<u8> = (0..3).flat_map(|i| big.chunk(i).to_vec()).collect();
        assert_eq!(big.digest(), sha256(&whole));
    }
}
