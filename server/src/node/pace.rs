//! Pacing one response to its container's `send_rate_bytes_per_second` (nginx's `limit_rate`: the limit is per
//! request, so a keep-alive connection's responses are each paced from their own start).
//!
//! # What this module owns
//! [`Pacer`], the arithmetic of a paced send: the response leaves in chunks of [`Pacer::chunk_bytes`] (the bytes
//! the rate allows in [`PACE_INTERVAL_NS`], clamped to [`PACE_CHUNK_BYTES_MIN`]..=[`PACE_CHUNK_BYTES_MAX`]), and
//! chunk `k` may leave once the clock reaches `start + bytes sent before it / rate`. The connection waits for that
//! time on the shard's timer wheel (50 µs ticks), whose due timers the container scheduler fires at every loop
//! turn (soft timers: a busy shard needs no timer interrupt, an idle one is woken by the wheel's timerfd). A
//! paced connection costs one wheel entry while it waits and nothing else.
//!
//! # Invariants
//! - The bytes sent by time `t` never exceed `rate × (t − start) + chunk_bytes` (one chunk of burst).
//! - The first chunk leaves at once; a response of `B` bytes takes `(B − last chunk) / rate` plus the send time.
//!
//! # Limits
//! | limit | value | why |
//! |---|---|---|
//! | [`PACE_INTERVAL_NS`] | 10 ms of the rate per chunk | 100 sends a second per paced connection |
//! | [`PACE_CHUNK_BYTES_MIN`] | 1 KiB | a very low rate still sends whole packets, less often |
//! | [`PACE_CHUNK_BYTES_MAX`] | 256 KiB | a high rate still paces in bounded writes |

/// The time one chunk's worth of the rate covers.
pub(crate) const PACE_INTERVAL_NS: u64 = 10_000_000;
/// Smallest chunk of a paced send.
pub(crate) const PACE_CHUNK_BYTES_MIN: usize = 1024;
/// Largest chunk of a paced send.
pub(crate) const PACE_CHUNK_BYTES_MAX: usize = 256 * 1024;

/// The schedule of one paced response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pacer {
    rate_bytes_per_second: u64,
    start_ns: u64,
    sent_bytes: u64,
    chunk_bytes: usize,
}

impl Pacer {
    /// A schedule starting at `now_ns` (shard clock) for a rate of at least 1 byte/s.
    pub(crate) fn new(rate_bytes_per_second: u64, now_ns: u64) -> Pacer {
        let rate_bytes_per_second = rate_bytes_per_second.max(1);
        let per_interval = (u128::from(rate_bytes_per_second) * u128::from(PACE_INTERVAL_NS)
            / 1_000_000_000) as u64;
        Pacer {
            rate_bytes_per_second,
            start_ns: now_ns,
            sent_bytes: 0,
            chunk_bytes: (per_interval as usize).clamp(PACE_CHUNK_BYTES_MIN, PACE_CHUNK_BYTES_MAX),
        }
    }

    /// The most bytes the next write may carry.
    pub(crate) fn chunk_bytes(&self) -> usize {
        self.chunk_bytes
    }

    /// The shard-clock time at which the next chunk may leave.
    pub(crate) fn due_ns(&self) -> u64 {
        let offset_ns =
            u128::from(self.sent_bytes) * 1_000_000_000 / u128::from(self.rate_bytes_per_second);
        self.start_ns
            .saturating_add(u64::try_from(offset_ns).unwrap_or(u64::MAX))
    }

    /// Records `bytes` sent.
    pub(crate) fn sent(&mut self, bytes: usize) {
        self.sent_bytes += bytes as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_mebibyte_per_second_sends_ten_mebibytes_in_ten_seconds() {
        let rate = 1 << 20;
        let mut pacer = Pacer::new(rate, 5_000);
        assert_eq!(pacer.chunk_bytes(), 10_485, "10 ms of 1 MiB/s");
        assert_eq!(pacer.due_ns(), 5_000, "the first chunk leaves at once");
        let total = 10 << 20;
        let mut sent = 0;
        let mut last_due = 0;
        while sent < total {
            last_due = pacer.due_ns();
            let chunk = pacer.chunk_bytes().min(total - sent);
            pacer.sent(chunk);
            sent += chunk;
        }
        // The last chunk (what is left after whole chunks) leaves when all but it are sent.
        let last_chunk = total % 10_485;
        let expected_ns =
            5_000 + ((total - last_chunk) as u128 * 1_000_000_000 / rate as u128) as u64;
        assert!(
            last_due.abs_diff(expected_ns) <= 1,
            "{last_due} vs {expected_ns}"
        );
        assert_eq!(pacer.due_ns(), 5_000 + 10_000_000_000, "all 10 MiB by 10 s");
    }

    #[test]
    fn chunks_are_clamped() {
        assert_eq!(Pacer::new(1, 0).chunk_bytes(), PACE_CHUNK_BYTES_MIN);
        assert_eq!(
            Pacer::new(0, 0).chunk_bytes(),
            PACE_CHUNK_BYTES_MIN,
            "0 is read as 1 byte/s"
        );
        assert_eq!(
            Pacer::new(10_000_000_000, 0).chunk_bytes(),
            PACE_CHUNK_BYTES_MAX
        );
    }

    #[test]
    fn sends_never_run_ahead_of_the_rate_by_more_than_a_chunk() {
        let rate = 123_457;
        let mut pacer = Pacer::new(rate, 0);
        for _ in 0..1_000 {
            let due = pacer.due_ns();
            // Bytes already sent when the next chunk is allowed, against what the rate allows by then.
            let allowed = (u128::from(rate) * u128::from(due) / 1_000_000_000) as usize;
            let chunk = pacer.chunk_bytes();
            pacer.sent(chunk);
            let sent = (pacer.sent_bytes) as usize;
            assert!(
                sent <= allowed + chunk + 1,
                "sent {sent}, allowed {allowed} + {chunk}"
            );
        }
    }
}
