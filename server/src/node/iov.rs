//! `ResponseBufs`: one response (or several pipelined ones) as a list of byte
//! segments handed to `writev` in one call — head bytes from a reused
//! `Vec<u8>`, body bytes as `Bytes` slices of cached objects. The body is
//! never copied in user space.
//!
//! Invariants: `iov` is rebuilt by [`ResponseBufs::seal`] after the last
//! segment is added and before the buffer is written; while the runtime owns
//! the value (during `writev`), neither `head` nor `bodies` nor `iov` is
//! touched, and their heap storage does not move when the value moves.
//!
//! Limits: [`SEGMENTS_MAX`] segments (below the kernel's IOV_MAX of 1024);
//! the head and body vectors keep their capacity across requests, so a
//! keep-alive connection allocates nothing per response once warm.

use std::ops::Range;

use bytes::Bytes;

/// Most segments one write carries (a 16-range multipart response needs 2·16 + 2).
pub const SEGMENTS_MAX: usize = 256;

#[derive(Clone, Debug)]
enum Segment {
    Head(Range<usize>),
    Body(usize),
}

/// The bytes of the responses waiting to be written on one connection.
#[derive(Debug, Default)]
pub struct ResponseBufs {
    head: Vec<u8>,
    head_sealed: usize,
    bodies: Vec<Bytes>,
    segments: Vec<Segment>,
    iov: Vec<libc::iovec>,
    /// First iovec not completely written.
    iov_start: usize,
    bytes_total: usize,
}

impl ResponseBufs {
    pub fn new() -> Self {
        ResponseBufs {
            head: Vec::with_capacity(1024),
            ..ResponseBufs::default()
        }
    }

    /// Forgets everything written (keeps the capacity).
    pub fn clear(&mut self) {
        self.head.clear();
        self.head_sealed = 0;
        self.bodies.clear();
        self.segments.clear();
        self.iov.clear();
        self.iov_start = 0;
        self.bytes_total = 0;
    }

    /// The head buffer to append head bytes to (after the last body added).
    pub fn head_mut(&mut self) -> &mut Vec<u8> {
        &mut self.head
    }

    /// Segments added so far (a caller batching pipelined responses checks this against [`SEGMENTS_MAX`]).
    pub fn segments(&self) -> usize {
        self.segments.len() + usize::from(self.head.len() > self.head_sealed)
    }

    /// Appends a body slice after the head bytes written so far.
    pub fn push_body(&mut self, body: Bytes) {
        self.close_head_segment();
        if !body.is_empty() {
            self.segments.push(Segment::Body(self.bodies.len()));
            self.bodies.push(body);
        }
    }

    fn close_head_segment(&mut self) {
        if self.head.len() > self.head_sealed {
            self.segments
                .push(Segment::Head(self.head_sealed..self.head.len()));
            self.head_sealed = self.head.len();
        }
    }

    /// Builds the iovec list; call once after the last segment.
    pub fn seal(&mut self) {
        self.close_head_segment();
        self.iov.clear();
        self.iov_start = 0;
        self.bytes_total = 0;
        for segment in &self.segments {
            let bytes: &[u8] = match segment {
                Segment::Head(range) => &self.head[range.clone()],
                Segment::Body(index) => &self.bodies[*index],
            };
            self.bytes_total += bytes.len();
            self.iov.push(libc::iovec {
                iov_base: bytes.as_ptr() as *mut libc::c_void,
                iov_len: bytes.len(),
            });
        }
    }

    /// The sealed segments as byte slices, in order (head bytes copied; bodies shared): for a paced send, which
    /// writes them in chunks instead of one `writev`.
    pub fn segment_bytes(&self) -> Vec<Bytes> {
        self.segments
            .iter()
            .map(|segment| match segment {
                Segment::Head(range) => Bytes::copy_from_slice(&self.head[range.clone()]),
                Segment::Body(index) => self.bodies[*index].clone(),
            })
            .collect()
    }

    /// Bytes not yet written.
    pub fn remaining(&self) -> usize {
        self.iov[self.iov_start..]
            .iter()
            .map(|iov| iov.iov_len)
            .sum()
    }

    /// Total bytes sealed.
    pub fn bytes_total(&self) -> usize {
        self.bytes_total
    }

    /// Marks `written` bytes as sent; returns true when everything is sent.
    pub fn advance(&mut self, mut written: usize) -> bool {
        while written > 0 && self.iov_start < self.iov.len() {
            let iov = &mut self.iov[self.iov_start];
            if written >= iov.iov_len {
                written -= iov.iov_len;
                self.iov_start += 1;
            } else {
                // SAFETY: `written < iov_len`, so the new base stays inside the same segment.
                iov.iov_base =
                    unsafe { (iov.iov_base as *mut u8).add(written) } as *mut libc::c_void;
                iov.iov_len -= written;
                written = 0;
            }
        }
        self.iov_start == self.iov.len()
    }
}

// SAFETY: the iovecs point into `head` and `bodies`, whose heap storage is not
// modified while the runtime holds this value (it is moved into the write
// operation and only given back when the operation completes), and `iov`'s own
// storage is a heap vector that does not move with the value.
unsafe impl monoio::buf::IoVecBuf for ResponseBufs {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iov[self.iov_start..].as_ptr()
    }

    fn read_iovec_len(&self) -> usize {
        (self.iov.len() - self.iov_start).min(SEGMENTS_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(bufs: &ResponseBufs) -> Vec<u8> {
        let mut out = Vec::new();
        for iov in &bufs.iov[bufs.iov_start..] {
            // SAFETY: the test's iovecs point into live buffers of `bufs`.
            out.extend_from_slice(unsafe {
                std::slice::from_raw_parts(iov.iov_base as *const u8, iov.iov_len)
            });
        }
        out
    }

    #[test]
    fn segments_keep_order_and_partial_writes_advance() {
        let body = Bytes::from_static(b"0123456789");
        let mut bufs = ResponseBufs::new();
        bufs.head_mut().extend_from_slice(b"HEAD1|");
        bufs.push_body(body.slice(2..5));
        bufs.head_mut().extend_from_slice(b"|SEP|");
        bufs.push_body(body.slice(7..10));
        bufs.head_mut().extend_from_slice(b"|END");
        bufs.seal();
        assert_eq!(collect(&bufs), b"HEAD1|234|SEP|789|END");
        assert_eq!(bufs.bytes_total(), 21);
        assert!(!bufs.advance(4));
        assert_eq!(collect(&bufs), b"1|234|SEP|789|END");
        assert!(!bufs.advance(5));
        assert_eq!(collect(&bufs), b"|SEP|789|END");
        assert_eq!(bufs.remaining(), 12);
        assert!(bufs.advance(12));
        bufs.clear();
        bufs.head_mut().extend_from_slice(b"x");
        bufs.seal();
        assert_eq!(collect(&bufs), b"x");
    }
}
