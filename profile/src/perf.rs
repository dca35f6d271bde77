//! The kernel side: one `perf_event_open` software clock event per sampled thread, its ring buffer, and the
//! records read from it. All of this crate's `unsafe` is here.
//!
//! # One event ([`ThreadEvent::open`])
//! 1. `perf_event_open(attr, tid, cpu = -1)`: `PERF_TYPE_SOFTWARE`/`PERF_COUNT_SW_TASK_CLOCK` (it advances only
//!    while the thread runs, so an idle shard gives few samples: this is a CPU profile), frequency mode at
//!    [`crate::SAMPLE_FREQUENCY_HZ`], `sample_type = IP | TID | CALLCHAIN`, user space only
//!    (`exclude_kernel`, `exclude_hv`, `exclude_callchain_kernel`: that is what `perf_event_paranoid` 2 allows an
//!    unprivileged process), opened disabled.
//! 2. `mmap` one metadata page plus [`RING_PAGES`] data pages, read-write so the reader can move `data_tail`
//!    (the kernel then never overwrites unread records; when the buffer is full it drops samples and writes a
//!    `PERF_RECORD_LOST` with their number).
//! 3. `ioctl(PERF_EVENT_IOC_ENABLE)` once every thread's event is open, so they start together.
//!
//! # Reading ([`ThreadEvent::drain`])
//! Load `data_head` (acquire), copy each record between `data_tail` and the head out of the ring (a record may
//! wrap around its end), then store the new `data_tail` (release) — the protocol of
//! `include/uapi/linux/perf_event.h`.
//!
//! # Limits
//! | limit | value | why |
//! |---|---|---|
//! | [`RING_PAGES`] | 64 pages (256 KiB) a thread | a sample is at most ~1 KiB (127 frames); at 997 Hz the reader, which wakes at least every 100 ms, needs ~100 KiB |
//! | frames a sample | the kernel's `perf_event_max_stack` (127 by default) | |
//!
//! The kernel walks user stacks by frame pointers: frames compiled without them are skipped or cut the chain
//! (see the crate docs for what that means for debug and release builds).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

/// Data pages of each thread's ring buffer (a power of two, as the kernel requires).
pub const RING_PAGES: usize = 64;

const PERF_TYPE_SOFTWARE: u32 = 1;
const PERF_COUNT_SW_TASK_CLOCK: u64 = 1;
const PERF_SAMPLE_IP: u64 = 1 << 0;
const PERF_SAMPLE_TID: u64 = 1 << 1;
const PERF_SAMPLE_CALLCHAIN: u64 = 1 << 5;
// `perf_event_attr` flag bits, in the order of the C bit field.
const FLAG_DISABLED: u64 = 1 << 0;
const FLAG_EXCLUDE_KERNEL: u64 = 1 << 5;
const FLAG_EXCLUDE_HV: u64 = 1 << 6;
const FLAG_FREQ: u64 = 1 << 10;
const FLAG_EXCLUDE_CALLCHAIN_KERNEL: u64 = 1 << 21;
const PERF_RECORD_LOST: u32 = 2;
const PERF_RECORD_SAMPLE: u32 = 9;
/// Callchain entries at or above this are context markers (`PERF_CONTEXT_USER` and the like), not addresses.
const PERF_CONTEXT_MAX: u64 = -4095i64 as u64;
/// `PERF_FLAG_FD_CLOEXEC` (libc does not define it).
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
const PERF_EVENT_IOC_DISABLE: libc::c_ulong = 0x2401;
/// Offsets of `data_head` and `data_tail` in `struct perf_event_mmap_page`.
const DATA_HEAD_OFFSET: usize = 1024;
const DATA_TAIL_OFFSET: usize = 1032;

/// `struct perf_event_attr` up to `PERF_ATTR_SIZE_VER5` (112 bytes), the fields this crate sets by name.
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_freq: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
    config2: u64,
    branch_sample_type: u64,
    sample_regs_user: u64,
    sample_stack_user: u32,
    clockid: i32,
    sample_regs_intr: u64,
    aux_watermark: u32,
    sample_max_stack: u16,
    reserved: u16,
}

const _: () = assert!(std::mem::size_of::<PerfEventAttr>() == 112);

/// What one ring buffer held.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Drained {
    /// User-space call chains, innermost address first (markers removed).
    pub chains: Vec<Vec<u64>>,
    /// Samples the kernel dropped because the ring was full.
    pub lost: u64,
}

/// One thread's sampling event and its mapped ring buffer.
pub struct ThreadEvent {
    fd: OwnedFd,
    /// The mapping: one metadata page, then `RING_PAGES` data pages.
    base: NonNull<u8>,
    page_bytes: usize,
}

// SAFETY: the mapping is owned by this value alone (never aliased outside it) and is only read or written
// through `&mut self` or `&self` methods that use atomics for the two shared words.
unsafe impl Send for ThreadEvent {}

fn page_bytes() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

impl ThreadEvent {
    /// Steps 1 and 2 of the module docs for thread `tid` of this process; the event starts disabled.
    pub fn open(tid: u32, frequency_hz: u64) -> io::Result<ThreadEvent> {
        let attr = PerfEventAttr {
            kind: PERF_TYPE_SOFTWARE,
            size: std::mem::size_of::<PerfEventAttr>() as u32,
            config: PERF_COUNT_SW_TASK_CLOCK,
            sample_freq: frequency_hz,
            sample_type: PERF_SAMPLE_IP | PERF_SAMPLE_TID | PERF_SAMPLE_CALLCHAIN,
            flags: FLAG_DISABLED
                | FLAG_EXCLUDE_KERNEL
                | FLAG_EXCLUDE_HV
                | FLAG_FREQ
                | FLAG_EXCLUDE_CALLCHAIN_KERNEL,
            wakeup_events: 1,
            ..PerfEventAttr::default()
        };
        let tid = libc::pid_t::try_from(tid)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "thread id out of range"))?;
        // SAFETY: `attr` is a valid perf_event_attr of the size it declares and outlives the call; the other
        // arguments are plain integers (cpu -1: any CPU, group -1: none, flags: close on exec).
        let raw = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                &attr as *const PerfEventAttr,
                tid,
                -1 as libc::c_int,
                -1 as libc::c_int,
                PERF_FLAG_FD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the syscall succeeded, so `raw` is a new file descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw as libc::c_int) };
        let page_bytes = page_bytes();
        let length = page_bytes * (1 + RING_PAGES);
        // SAFETY: a fresh shared mapping of the event's fd at offset 0, of the size the kernel expects
        // (1 + 2^n pages); the result is checked before use.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                length,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(base.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        Ok(ThreadEvent {
            fd,
            base,
            page_bytes,
        })
    }

    /// Starts (`true`) or stops (`false`) sampling.
    pub fn set_enabled(&self, enabled: bool) -> io::Result<()> {
        let request = if enabled {
            PERF_EVENT_IOC_ENABLE
        } else {
            PERF_EVENT_IOC_DISABLE
        };
        // SAFETY: a perf ioctl without an argument on an fd this value owns.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), request as _, 0) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The event's fd, to `poll` for readable data.
    pub fn raw_fd(&self) -> libc::c_int {
        self.fd.as_raw_fd()
    }

    fn shared_word(&self, offset: usize) -> &AtomicU64 {
        // SAFETY: `offset` is DATA_HEAD_OFFSET or DATA_TAIL_OFFSET, 8-aligned words inside the metadata page
        // that live as long as the mapping (as long as `self`); the kernel writes the head and reads the tail
        // concurrently, hence atomics.
        unsafe { &*self.base.as_ptr().add(offset).cast::<AtomicU64>() }
    }

    /// Copies out every record written since the last drain (module docs, "Reading").
    pub fn drain(&mut self, into: &mut Drained) {
        let data_bytes = (self.page_bytes * RING_PAGES) as u64;
        let head = self.shared_word(DATA_HEAD_OFFSET).load(Ordering::Acquire);
        let mut tail = self.shared_word(DATA_TAIL_OFFSET).load(Ordering::Relaxed);
        // SAFETY: the data area starts one page after the base and is `data_bytes` long, inside the mapping.
        let data = unsafe {
            std::slice::from_raw_parts(self.base.as_ptr().add(self.page_bytes), data_bytes as usize)
        };
        let mut record = Vec::new();
        while tail + 8 <= head {
            let header = copy_out(data, tail, 8);
            let kind = u32::from_ne_bytes(header[0..4].try_into().expect("4 bytes"));
            let size = u64::from(u16::from_ne_bytes(
                header[6..8].try_into().expect("2 bytes"),
            ));
            if size < 8 || tail + size > head {
                break; // a torn record cannot be: the kernel publishes whole records; stop rather than misread
            }
            record.clear();
            record.extend_from_slice(&copy_out(data, tail, size as usize));
            parse_record(kind, &record, into);
            tail += size;
        }
        self.shared_word(DATA_TAIL_OFFSET)
            .store(tail, Ordering::Release);
    }
}

/// `length` bytes of the ring `data` from the running position `at`, unwrapped.
fn copy_out(data: &[u8], at: u64, length: usize) -> Vec<u8> {
    let start = (at % data.len() as u64) as usize;
    let first = length.min(data.len() - start);
    let mut bytes = Vec::with_capacity(length);
    bytes.extend_from_slice(&data[start..start + first]);
    bytes.extend_from_slice(&data[..length - first]);
    bytes
}

fn word(record: &[u8], at: usize) -> Option<u64> {
    record
        .get(at..at + 8)
        .map(|bytes| u64::from_ne_bytes(bytes.try_into().expect("8 bytes")))
}

/// Adds one record (header included) to `into`: a sample's user call chain, or a lost-samples count.
/// Layouts: SAMPLE with IP|TID|CALLCHAIN = header, ip, pid+tid, nr, nr addresses; LOST = header, id, lost.
fn parse_record(kind: u32, record: &[u8], into: &mut Drained) {
    match kind {
        PERF_RECORD_SAMPLE => {
            let Some(nr) = word(record, 24) else { return };
            let chain: Vec<u64> = (0..nr as usize)
                .map_while(|i| word(record, 32 + 8 * i))
                .filter(|&address| address < PERF_CONTEXT_MAX)
                .collect();
            let chain = if chain.is_empty() {
                word(record, 8).into_iter().collect() // no chain: the sampled address alone
            } else {
                chain
            };
            into.chains.push(chain);
        }
        PERF_RECORD_LOST => into.lost += word(record, 16).unwrap_or(0),
        _ => {}
    }
}

impl Drop for ThreadEvent {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `open` made; nothing refers to it after `self` goes.
        unsafe {
            libc::munmap(
                self.base.as_ptr().cast(),
                self.page_bytes * (1 + RING_PAGES),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(chain: &[u64]) -> Vec<u8> {
        let size = 32 + 8 * chain.len();
        let mut record = Vec::new();
        record.extend_from_slice(&PERF_RECORD_SAMPLE.to_ne_bytes());
        record.extend_from_slice(&0u16.to_ne_bytes());
        record.extend_from_slice(&(size as u16).to_ne_bytes());
        record.extend_from_slice(&0x1000u64.to_ne_bytes()); // ip
        record.extend_from_slice(&7u64.to_ne_bytes()); // pid, tid
        record.extend_from_slice(&(chain.len() as u64).to_ne_bytes());
        for address in chain {
            record.extend_from_slice(&address.to_ne_bytes());
        }
        record
    }

    #[test]
    fn a_sample_keeps_its_user_addresses_and_drops_context_markers() {
        let user_marker = -512i64 as u64;
        let mut drained = Drained::default();
        parse_record(
            PERF_RECORD_SAMPLE,
            &sample(&[user_marker, 0x10, 0x20]),
            &mut drained,
        );
        assert_eq!(drained.chains, vec![vec![0x10, 0x20]]);
    }

    #[test]
    fn a_sample_without_a_chain_keeps_its_address() {
        let mut drained = Drained::default();
        parse_record(PERF_RECORD_SAMPLE, &sample(&[]), &mut drained);
        assert_eq!(drained.chains, vec![vec![0x1000]]);
    }

    #[test]
    fn a_record_is_copied_across_the_end_of_the_ring() {
        let data: Vec<u8> = (0..16).collect();
        assert_eq!(copy_out(&data, 14 + 16 * 3, 4), vec![14, 15, 0, 1]);
    }

    #[test]
    fn lost_records_add_up() {
        let mut record = vec![0u8; 24];
        record[16..24].copy_from_slice(&5u64.to_ne_bytes());
        let mut drained = Drained::default();
        parse_record(PERF_RECORD_LOST, &record, &mut drained);
        parse_record(PERF_RECORD_LOST, &record, &mut drained);
        assert_eq!(drained.lost, 10);
    }
}
