//! glibc malloc settings for the operator process, made before any thread
//! starts.
//!
//! What a tenant writes passes through the operator's memory: a grant with
//! 200 KiB of annotations is decoded whole before the cache keeps its few
//! hundred bytes. glibc serves such a buffer from a memory map at first, but
//! after the first is freed it raises its threshold and serves the next ones
//! from the heap, where a small allocation kept after them pins the pages
//! for good. And every thread that allocates at once gets an arena of its
//! own (up to 8 per core), each keeping its own free pages.
//! - `M_MMAP_THRESHOLD` 128 KiB, fixed: large buffers always come from, and
//!   go back to, their own maps.
//! - `M_ARENA_MAX` 2: the cache's objects, made on the runtime's worker
//!   threads, share two arenas' free space rather than spread over many.

/// What [`tune`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tuned {
    Done,
    /// Not glibc: nothing to do.
    Unsupported,
}

/// Large buffers no larger than this stay on the heap.
pub const MMAP_THRESHOLD: i32 = 128 * 1024;
pub const ARENA_MAX: i32 = 2;

/// Sets [`MMAP_THRESHOLD`] and [`ARENA_MAX`]; Err names the setting glibc
/// refused.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn tune() -> Result<Tuned, &'static str> {
    for (param, value, name) in [
        (libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD, "M_MMAP_THRESHOLD"),
        (libc::M_ARENA_MAX, ARENA_MAX, "M_ARENA_MAX"),
    ] {
        // SAFETY: mallopt takes two integers; glibc answers 1 when it took
        // the setting, 0 when not.
        if unsafe { libc::mallopt(param, value) } != 1 {
            return Err(name);
        }
    }
    Ok(Tuned::Done)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune() -> Result<Tuned, &'static str> {
    Ok(Tuned::Unsupported)
}

#[cfg(test)]
mod tests {
    /// glibc takes both settings (they bound memory, not correctness, so
    /// only their acceptance can be checked here; `make bench` measures
    /// what they save).
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_the_settings() {
        assert_eq!(super::tune(), Ok(super::Tuned::Done));
    }
}
