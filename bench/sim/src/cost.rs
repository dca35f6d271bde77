//! The back-end cost model of the LARD paper (Pai et al., ASPLOS '98, section 4.1), in integer microseconds.
//!
//! CPU: 145 µs per connection (establishment and teardown) + 40 µs per 512 bytes sent.
//! Disk: 28 ms (two seeks and rotational latency) + 410 µs per 4 KB transferred, plus 14 ms for each 44 KB of the
//! file beyond the first 44 KB (another seek). KB = 1024 bytes; partial blocks round up. Every number is a field
//! of [`CostModel`] so the CLI can change it.

/// Cost parameters; [`CostModel::default`] is the paper's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CostModel {
    pub cpu_connection_us: u64,
    pub cpu_per_block_us: u64,
    /// Send block for `cpu_per_block_us` (512 bytes).
    pub cpu_block_bytes: u64,
    pub disk_access_us: u64,
    pub disk_per_block_us: u64,
    /// Disk transfer block (4 KB).
    pub disk_block_bytes: u64,
    pub disk_extra_seek_us: u64,
    /// Each this many bytes beyond the first chunk cost one `disk_extra_seek_us` (44 KB).
    pub disk_chunk_bytes: u64,
}

impl Default for CostModel {
    fn default() -> Self {
        Self {
            cpu_connection_us: 145,
            cpu_per_block_us: 40,
            cpu_block_bytes: 512,
            disk_access_us: 28_000,
            disk_per_block_us: 410,
            disk_block_bytes: 4 << 10,
            disk_extra_seek_us: 14_000,
            disk_chunk_bytes: 44 << 10,
        }
    }
}

impl CostModel {
    /// CPU time to serve `size_bytes` from memory.
    pub fn cpu_us(&self, size_bytes: u64) -> u64 {
        self.cpu_connection_us + self.cpu_per_block_us * size_bytes.div_ceil(self.cpu_block_bytes)
    }

    /// Disk time to read `size_bytes`.
    pub fn disk_us(&self, size_bytes: u64) -> u64 {
        let beyond_first_chunk = size_bytes.saturating_sub(self.disk_chunk_bytes);
        self.disk_access_us
            + self.disk_per_block_us * size_bytes.div_ceil(self.disk_block_bytes)
            + self.disk_extra_seek_us * beyond_first_chunk.div_ceil(self.disk_chunk_bytes)
    }

    /// Rejects block sizes of zero (they would divide by zero).
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.cpu_block_bytes == 0 {
            return Err("cpu block bytes must be at least 1");
        }
        if self.disk_block_bytes == 0 {
            return Err("disk block bytes must be at least 1");
        }
        if self.disk_chunk_bytes == 0 {
            return Err("disk chunk bytes must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_costs() {
        let cost = CostModel::default();
        assert_eq!(cost.cpu_us(0), 145);
        assert_eq!(cost.cpu_us(512), 185);
        assert_eq!(cost.cpu_us(513), 225);
        assert_eq!(cost.disk_us(4096), 28_410);
        // 44 KB = 11 blocks, no extra seek.
        assert_eq!(cost.disk_us(44 << 10), 28_000 + 11 * 410);
        // 100 KB = 25 blocks, 56 KB beyond the first 44 KB = 2 extra seeks.
        assert_eq!(cost.disk_us(100 << 10), 28_000 + 25 * 410 + 2 * 14_000);
    }
}
