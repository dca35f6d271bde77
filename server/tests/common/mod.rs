//! Helpers shared by the server's integration tests.

use std::fs;
use std::path::Path;

/// Pages of `path` resident in the page cache (mincore over a mapping of the file).
pub fn resident_pages(path: &Path) -> usize {
    use std::os::fd::AsRawFd;
    let file = fs::File::open(path).unwrap();
    let length = file.metadata().unwrap().len() as usize;
    let page = 4096;
    let pages = length.div_ceil(page);
    // SAFETY: a private read-only mapping of an open file, unmapped below; mincore writes `pages` bytes.
    unsafe {
        let address = libc::mmap(
            std::ptr::null_mut(),
            length,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        assert_ne!(address, libc::MAP_FAILED, "mmap failed");
        let mut residency = vec![0u8; pages];
        assert_eq!(
            libc::mincore(address, length, residency.as_mut_ptr()),
            0,
            "mincore failed"
        );
        libc::munmap(address, length);
        residency.iter().filter(|byte| **byte & 1 == 1).count()
    }
}
