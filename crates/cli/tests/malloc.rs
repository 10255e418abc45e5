//! The binary's allocator settings (src/malloc.rs), applied as `main` applies them: first, on
//! the main thread, before any other thread exists. Without libtest's harness, whose threads
//! would already hold arenas of their own. Reads the allocator's statistics with `mallinfo2`
//! (glibc 2.33 or later).

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[path = "../src/malloc.rs"]
mod malloc;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn main() {
    if std::env::var_os("GLIBC_TUNABLES").is_some() {
        println!(
            "malloc: skipped, GLIBC_TUNABLES is set, so the binary leaves glibc's settings alone"
        );
        return;
    }
    assert!(malloc::keep_freed_memory(), "mallopt refused a setting");
    a_large_block_comes_from_the_heap_and_stays_after_free("the main thread");
    // Another thread shares the one arena: its large blocks come from the same heap too.
    std::thread::spawn(|| a_large_block_comes_from_the_heap_and_stays_after_free("a new thread"))
        .join()
        .unwrap();
    println!("malloc: ok");
}

/// A block far above glibc's largest mmap threshold (32 MiB) comes from the heap, not from a
/// mapping of its own, and its memory stays with the process, free for reuse, after it is
/// freed. With glibc's defaults (or the mmap threshold alone) it is mapped: `hblkhd` grows by
/// its size, and shrinks back on free.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn a_large_block_comes_from_the_heap_and_stays_after_free(on: &str) {
    const SIZE: usize = 256 << 20;
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let stats = || unsafe { libc::mallinfo2() };
    let before = stats();
    let block = std::hint::black_box(vec![1u8; SIZE]);
    let during = stats();
    assert!(
        during.hblkhd <= before.hblkhd,
        "{on}: the block was mapped on its own ({} → {} bytes in mappings)",
        before.hblkhd,
        during.hblkhd
    );
    assert!(
        during.uordblks >= before.uordblks + SIZE,
        "{on}: the block is not in the heap's allocated bytes ({} → {})",
        before.uordblks,
        during.uordblks
    );
    drop(block);
    let after = stats();
    assert!(
        after.arena >= before.arena.max(SIZE),
        "{on}: the heap was given back ({} bytes before, {} after free)",
        before.arena,
        after.arena
    );
    assert!(
        after.fordblks >= SIZE,
        "{on}: the freed block is not free for reuse ({} free bytes)",
        after.fordblks
    );
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn main() {
    println!("malloc: nothing to test, the settings are glibc's");
}
