//! Column-at-a-time work spread over the machine's cores: the lake writer's gathers and
//! Parquet column encoding, which are independent per column.

use std::sync::Mutex;

use crate::{Error, Result};

/// Worker threads for per-column work: the machine's cores, at most `jobs`.
pub(crate) fn threads_for(jobs: usize) -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(jobs)
        .max(1)
}

/// Runs `f` on every item on up to `threads` scoped threads (the caller's thread alone when
/// `threads` is 1) and returns the results in item order; the first error wins.
pub(crate) fn map<T: Send, R: Send>(
    items: Vec<T>,
    threads: usize,
    f: impl Fn(T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let n = items.len();
    if threads <= 1 || n <= 1 {
        return items.into_iter().map(f).collect();
    }
    let queue = Mutex::new(items.into_iter().enumerate().collect::<Vec<_>>());
    let done: Mutex<Vec<Option<R>>> = Mutex::new((0..n).map(|_| None).collect());
    let worker = || -> Result<()> {
        loop {
            // A poisoned lock means another worker panicked; the join below reports it.
            let job = queue.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let Some((i, item)) = job else {
                return Ok(());
            };
            let r = f(item)?;
            done.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(r);
        }
    };
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.min(n)).map(|_| s.spawn(worker)).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| Error::Config("a lake worker thread panicked".into()))?
            })
            .collect::<Result<Vec<()>>>()
    })?;
    done.into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.ok_or_else(|| Error::Config(format!("lake worker job {i} did not run"))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_order_and_errors_propagate() -> Result<()> {
        for threads in [1, 2, 4] {
            let out = map((0..100).collect(), threads, |x: i32| Ok(x * 2))?;
            assert_eq!(out, (0..100).map(|x| x * 2).collect::<Vec<_>>());
            let err = map((0..10).collect(), threads, |x: i32| {
                if x == 7 {
                    Err(Error::Config("seven".into()))
                } else {
                    Ok(x)
                }
            });
            assert!(matches!(err, Err(Error::Config(m)) if m == "seven"));
        }
        Ok(())
    }
}
