//! Work on a large slice split across the machine's cores, for the loader:
//! a load is the one burst of work a sidecar has that no request waits in.

use std::num::NonZeroUsize;

/// Below this many items per thread, another thread costs more than it saves.
const MIN_PER_THREAD: usize = 2_048;
/// A bound on the threads of one load, whatever the machine.
const MAX_THREADS: usize = 8;

/// The threads a load may use: one per core.
pub(super) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

/// How many of `threads` `items` things are worth.
fn threads_for(items: usize, threads: usize) -> usize {
    threads
        .clamp(1, MAX_THREADS)
        .min(items / MIN_PER_THREAD)
        .max(1)
}

/// `work` over consecutive parts of `items`, on up to `threads` threads (one
/// per part), results in order; `None` for a part whose thread panicked.
pub(super) fn over<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    work: impl Fn(&[T]) -> R + Sync,
) -> Vec<Option<R>> {
    let threads = threads_for(items.len(), threads);
    if threads == 1 {
        return vec![Some(work(items))];
    }
    let work = &work;
    std::thread::scope(|scope| {
        let parts: Vec<_> = items
            .chunks(items.len().div_ceil(threads))
            .map(|part| scope.spawn(move || work(part)))
            .collect();
        parts.into_iter().map(|part| part.join().ok()).collect()
    })
}

/// `work` over consecutive parts of `items`, changed in place, with each
/// part's offset in `items`; `false` when a part's thread panicked.
pub(super) fn over_mut<T: Send>(
    items: &mut [T],
    threads: usize,
    work: impl Fn(usize, &mut [T]) + Sync,
) -> bool {
    let threads = threads_for(items.len(), threads);
    if threads == 1 {
        work(0, items);
        return true;
    }
    let chunk = items.len().div_ceil(threads);
    let work = &work;
    std::thread::scope(|scope| {
        let parts: Vec<_> = items
            .chunks_mut(chunk)
            .enumerate()
            .map(|(i, part)| scope.spawn(move || work(i * chunk, part)))
            .collect();
        parts.into_iter().all(|part| part.join().is_ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_every_item_once_in_order() {
        let items: Vec<usize> = (0..10_000).collect();
        for threads in [1, 2, 3, 8, 64] {
            let parts = over(&items, threads, <[usize]>::to_vec);
            assert_eq!(parts.len(), threads.clamp(1, 8).min(4), "{threads}");
            let joined: Vec<usize> = parts.into_iter().flatten().flatten().collect();
            assert_eq!(joined, items);
        }
        // Too few items for a second thread.
        assert_eq!(over(&items[..3_000], 8, <[usize]>::len), [Some(3_000)]);
    }

    #[test]
    fn a_panicking_part_is_none_and_the_others_finish() {
        let items: Vec<usize> = (0..8_192).collect();
        let parts = over(&items, 2, |part| {
            assert!(part[0] == 0, "second part");
            part.len()
        });
        assert_eq!(parts, [Some(4_096), None]);
    }
}
