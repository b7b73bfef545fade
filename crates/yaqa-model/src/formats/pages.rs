//! Releasing the pages of a memory-mapped checkpoint once their tensor has been widened.

use memmap2::Mmap;

/// Drops the pages of `mmap[start..end]` from this process's resident set once they have been widened
/// (the page cache keeps them; a later read faults them back in with the same bytes), so that streaming
/// an 8B checkpoint block by block does not leave the whole file counted against the process. Best
/// effort: where the kernel refuses, the pages simply stay.
pub fn release(mmap: &Mmap, start: usize, end: usize) {
    if end > start && end <= mmap.len() {
        // SAFETY: the mapping is read-only and backed by a file nobody writes while it is open (the
        // same assumption as mapping it at all), so dropping the pages cannot lose data: the next access
        // reads the same bytes back from the file.
        let _ = unsafe {
            mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
        };
    }
}
