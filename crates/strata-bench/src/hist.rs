//! A log-linear latency histogram (HDR style): values in microseconds, exact below 128 us,
//! then 64 sub-buckets per power of two, so a percentile is reported at most 1.6% above
//! the true value (and never below it).

/// Sub-buckets per power of two (2^7).
const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;
/// Powers of two covered above the linear range: up to 2^(SUB_BITS + 40) us.
const GROUPS: usize = 41;

/// Latency histogram in microseconds.
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
    min: u64,
    sum: u128,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    pub fn new() -> Self {
        Self {
            counts: vec![0; GROUPS * SUB as usize],
            total: 0,
            max: 0,
            min: u64::MAX,
            sum: 0,
        }
    }

    fn index(v: u64) -> usize {
        if v < SUB {
            return v as usize;
        }
        // v has `bits` significant bits; keep the top SUB_BITS of them.
        let bits = 64 - v.leading_zeros();
        let shift = bits - SUB_BITS;
        let group = shift as u64; // 1.. for v >= SUB
        let sub = v >> shift; // in [SUB/2, SUB)
        let idx = group * (SUB / 2) + sub;
        (idx as usize).min(GROUPS * SUB as usize - 1)
    }

    /// The highest value that maps to bucket `idx`, so percentiles never under-report.
    fn value_of(idx: usize) -> u64 {
        let idx = idx as u64;
        if idx < SUB {
            return idx;
        }
        let group = (idx - SUB / 2) / (SUB / 2);
        let sub = idx - group * (SUB / 2);
        ((sub + 1) << group) - 1
    }

    /// Records one value (microseconds).
    pub fn record(&mut self, us: u64) {
        self.counts[Self::index(us)] += 1;
        self.total += 1;
        self.max = self.max.max(us);
        self.min = self.min.min(us);
        self.sum += us as u128;
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
        self.min = self.min.min(other.min);
        self.sum += other.sum;
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The value at quantile `q` (0..=1), in microseconds; 0 when empty.
    pub fn percentile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::value_of(i).min(self.max).max(self.min);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::new();
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.percentile(0.5), 50);
        assert_eq!(h.percentile(0.99), 99);
        assert_eq!(h.percentile(1.0), 100);
        assert_eq!(h.count(), 100);
    }

    #[test]
    fn large_values_within_bucket_precision() {
        let mut h = Histogram::new();
        for v in 1..=100_000u64 {
            h.record(v * 10);
        }
        for (q, want) in [(0.5, 500_000.0), (0.99, 990_000.0), (0.999, 999_000.0)] {
            let got = h.percentile(q) as f64;
            assert!(
                (got - want).abs() / want < 0.016,
                "q={q} got={got} want={want}"
            );
            assert!(got >= want, "never under-reports: q={q} got={got}");
        }
        assert_eq!(h.percentile(1.0), 1_000_000);
    }

    #[test]
    fn bucket_bounds_are_monotonic() {
        let mut last = 0;
        for v in [
            0u64,
            1,
            127,
            128,
            129,
            255,
            256,
            1000,
            65_535,
            1 << 30,
            u64::MAX / 2,
        ] {
            let i = Histogram::index(v);
            assert!(i >= last);
            last = i;
            assert!(Histogram::value_of(i) >= v.min(Histogram::value_of(i)));
        }
        for v in [128u64, 300, 5000, 123_456_789] {
            let top = Histogram::value_of(Histogram::index(v));
            assert!(
                top >= v && (top - v) as f64 / v as f64 <= 0.016,
                "v={v} top={top}"
            );
        }
    }

    #[test]
    fn merge_and_empty() {
        let mut a = Histogram::new();
        assert_eq!(a.percentile(0.99), 0);
        let mut b = Histogram::new();
        a.record(10);
        b.record(1000);
        b.record(1000);
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert_eq!(a.percentile(0.5), 1000);
        assert_eq!(a.percentile(0.1), 10);
        assert_eq!(a.max(), 1000);
    }
}
