//! What a run sends: keys, values, their distribution and the read/write mix.

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution as _, Zipf};

/// How keys are picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    /// Every key equally likely.
    Uniform,
    /// A few keys take most operations (exponent 0.99, as YCSB).
    Zipfian,
}

/// The workload shape shared by every client.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Workload {
    /// Distinct keys.
    pub keys: u64,
    /// Bytes per key.
    pub key_size: usize,
    /// Bytes per value.
    pub value_size: usize,
    /// How keys are picked.
    pub distribution: Distribution,
    /// Fraction of operations that are reads (the rest are writes).
    pub read_ratio: f64,
}

impl Workload {
    /// Checks that keys of `key_size` bytes can number `keys`.
    ///
    /// # Errors
    /// The sizes or ratio do not fit.
    pub fn validate(&self) -> anyhow::Result<()> {
        let digits = self.keys.max(1).to_string().len();
        anyhow::ensure!(self.keys > 0, "--keys must be at least 1");
        anyhow::ensure!(
            self.key_size > digits,
            "--key-size {} is too small for {} keys (needs at least {})",
            self.key_size,
            self.keys,
            digits + 1
        );
        anyhow::ensure!((0.0..=1.0).contains(&self.read_ratio), "--reads must be between 0 and 1");
        Ok(())
    }

    /// The key with number `index`: `k` and the zero-padded number, `key_size` bytes.
    pub fn key(&self, index: u64) -> Bytes {
        Bytes::from(format!("k{index:0width$}", width = self.key_size - 1))
    }

    /// The value written (the same bytes every time: the servers store it, nobody checks it).
    pub fn value(&self) -> Bytes {
        Bytes::from((0..self.value_size).map(|i| b'a' + (i % 26) as u8).collect::<Vec<u8>>())
    }
}

/// One operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Read a key.
    Get(Bytes),
    /// Write a key.
    Set(Bytes, Bytes),
}

/// Makes one client's operations.
pub struct OpGen {
    workload: Workload,
    rng: StdRng,
    zipf: Option<Zipf<f64>>,
    value: Bytes,
}

impl OpGen {
    /// A generator seeded for client `client`.
    pub fn new(workload: &Workload, client: u64) -> Self {
        let zipf = (workload.distribution == Distribution::Zipfian)
            .then(|| Zipf::new(workload.keys, 0.99).expect("keys >= 1 and a positive exponent"));
        Self {
            workload: workload.clone(),
            rng: StdRng::seed_from_u64(0x5eed ^ client),
            zipf,
            value: workload.value(),
        }
    }

    /// The next operation.
    pub fn next_op(&mut self) -> Op {
        let index = match &self.zipf {
            Some(zipf) => zipf.sample(&mut self.rng) as u64 - 1,
            None => self.rng.gen_range(0..self.workload.keys),
        };
        let key = self.workload.key(index);
        if self.rng.gen_bool(self.workload.read_ratio) {
            Op::Get(key)
        } else {
            Op::Set(key, self.value.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(distribution: Distribution, read_ratio: f64) -> Workload {
        Workload { keys: 1000, key_size: 16, value_size: 100, distribution, read_ratio }
    }

    #[test]
    fn keys_and_values_have_the_asked_sizes() {
        let w = workload(Distribution::Uniform, 0.5);
        w.validate().unwrap();
        assert_eq!(&w.key(42)[..], b"k000000000000042");
        assert_eq!(w.value().len(), 100);
        let tight = Workload { keys: 100_000, key_size: 6, ..w };
        assert!(tight.validate().is_err(), "99999 needs 5 digits plus the prefix");
    }

    #[test]
    fn the_mix_and_the_zipfian_skew_show_in_the_operations() {
        let mut gen = OpGen::new(&workload(Distribution::Zipfian, 0.9), 1);
        let ops: Vec<Op> = (0..20_000).map(|_| gen.next_op()).collect();
        let reads = ops.iter().filter(|o| matches!(o, Op::Get(_))).count();
        assert!((17_500..18_500).contains(&reads), "{reads} reads of 20,000 at 90%");
        let hottest = workload(Distribution::Zipfian, 0.9).key(0);
        let hits = ops.iter().filter(|o| matches!(o, Op::Get(k) | Op::Set(k, _) if *k == hottest)).count();
        // Zipf(1000, 0.99): the first key takes about 13% of the picks; uniform would give 0.1%.
        assert!(hits > 1_500, "the hottest key got {hits} of 20,000");
        let mut uniform = OpGen::new(&workload(Distribution::Uniform, 0.0), 1);
        assert!((0..1000).all(|_| matches!(uniform.next_op(), Op::Set(..))));
    }
}
