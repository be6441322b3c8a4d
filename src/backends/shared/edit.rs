//! Read-modify-write of shared values by compare-and-swap, retried on conflict: what Surging
//! does with blind puts (and so loses concurrent writers' addresses), done so nothing is lost.

use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{stream, StreamExt};

use super::{SharedStore, Versioned, Write};
use crate::error::{Error, ErrorKind, Result};
use crate::route::{holds_any, without, Address, Edit};

/// Conditional writes one edit has in flight at once (Consul takes 200 connections per client
/// address by default, and many registrations may edit at once).
const CONCURRENT_WRITES: usize = 2;

/// Rounds in a row that may fail for a passing reason before an edit gives up.
const MAX_FAILED_ROUNDS: usize = 5;

/// Rounds of conflicts before an edit gives up (each re-reads what conflicted and writes it
/// alone, so every round lets at least one of the writers of a key through).
const MAX_ROUNDS: usize = 200;

/// Edits the values of `keys`: `change` gives each key's edit from its current value and how
/// many addresses that edit moves. Conflicting writes are read again and retried, one key per
/// request after the first round, until they go through; a round that fails for a passing
/// reason (an overloaded agent, a timeout) is tried again too, since every edit is computed
/// afresh from what it reads. With `guard`, every write is made only while that key does not
/// exist, and an edit stops (without error) once it does. Returns the addresses moved.
pub(crate) async fn edit_values<S: SharedStore>(
    store: &S,
    keys: &[String],
    guard: Option<&str>,
    change: impl Fn(usize, Option<&[u8]>) -> Result<(Edit, usize)>,
) -> Result<usize> {
    let mut pending: Vec<usize> = (0..keys.len()).collect();
    let mut moved = 0;
    let mut failed_rounds = 0;
    for round in 0..MAX_ROUNDS {
        match edit_round(store, keys, &pending, guard, &change, round == 0).await {
            Ok((done, conflicted)) => {
                moved += done;
                failed_rounds = 0;
                if conflicted.is_empty() {
                    return Ok(moved);
                }
                pending = conflicted;
            }
            Err(err) if err.is_temporary() && failed_rounds < MAX_FAILED_ROUNDS => {
                failed_rounds += 1;
                tracing::debug!(error = %err, "editing shared values failed; trying again");
            }
            Err(err) => return Err(err),
        }
        if let Some(guard) = guard {
            if store.read(&[guard.to_owned()]).await?[0].is_some() {
                return Ok(moved);
            }
        }
        tokio::time::sleep(contention_delay(round)).await;
    }
    Err(Error::new(
        ErrorKind::Unavailable,
        format!(
            "{}: {} shared values kept changing under {MAX_ROUNDS} attempts to edit them",
            S::BACKEND,
            pending.len()
        ),
    ))
}

/// One round: reads the `pending` keys, writes their edits (batched in the first round, else
/// one key per request), and returns the addresses moved and the keys that conflicted.
async fn edit_round<S: SharedStore>(
    store: &S,
    keys: &[String],
    pending: &[usize],
    guard: Option<&str>,
    change: &impl Fn(usize, Option<&[u8]>) -> Result<(Edit, usize)>,
    first: bool,
) -> Result<(usize, Vec<usize>)> {
    let wanted: Vec<String> = pending.iter().map(|&i| keys[i].clone()).collect();
    let current = store.read(&wanted).await?;
    let mut writes = Vec::new();
    for (&i, value) in pending.iter().zip(&current) {
        let (edit, count) = change(i, value.as_ref().map(|v| v.value.as_slice()))?;
        if let Some(write) = write_for(&keys[i], value.as_ref(), edit) {
            writes.push((i, write, count));
        }
    }
    // Later rounds write each key alone, a few at once, so one busy key does not hold back
    // the others.
    let per_request = if first { S::MAX_WRITES } else { 1 };
    let batches = batched(&writes, per_request);
    let mut requests: Vec<BoxFuture<'_, Result<bool>>> = Vec::with_capacity(batches.len());
    for batch in &batches {
        let ops: Vec<Write> = batch.iter().map(|(_, w, _)| w.clone()).collect();
        requests.push(Box::pin(async move { store.write_if(&ops, guard).await }));
    }
    let outcomes: Vec<Result<bool>> = stream::iter(requests)
        .buffered(CONCURRENT_WRITES)
        .collect()
        .await;
    let (mut moved, mut conflicted) = (0, Vec::new());
    for (batch, outcome) in batches.iter().zip(outcomes) {
        if outcome? {
            moved += batch.iter().map(|(_, _, count)| count).sum::<usize>();
        } else {
            conflicted.extend(batch.iter().map(|(i, _, _)| *i));
        }
    }
    Ok((moved, conflicted))
}

/// Bytes of values in one conditional request: well under etcd's default request limit
/// (1.5 MiB) and Consul's default `txn_max_req_len` (512 KiB, with values base64-encoded).
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// The writes in order, cut into requests of at most `count` writes and, past the first write
/// of each, [`MAX_BATCH_BYTES`] of values.
fn batched(writes: &[(usize, Write, usize)], count: usize) -> Vec<&[(usize, Write, usize)]> {
    let mut batches = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (_, write, _)) in writes.iter().enumerate() {
        let size = match write {
            Write::Put { key, value, .. } => key.len() + value.len(),
            Write::Delete { key, .. } => key.len(),
        };
        if i > start && (i - start == count || bytes + size > MAX_BATCH_BYTES) {
            batches.push(&writes[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < writes.len() {
        batches.push(&writes[start..]);
    }
    batches
}

/// A pause after a round of conflicts: anywhere up to a cap that doubles from 2 ms to 64 ms
/// ("full jitter"), so writers that collided spread out instead of colliding again.
fn contention_delay(round: usize) -> Duration {
    let cap = Duration::from_millis(2) * (1 << round.min(5));
    cap.mul_f64(fastrand::f64())
}

fn write_for(key: &str, current: Option<&Versioned>, edit: Edit) -> Option<Write> {
    let version = Some(current.map_or(0, |v| v.version));
    match edit {
        Edit::Unchanged => None,
        Edit::Put(value) => Some(Write::Put {
            key: key.to_owned(),
            value,
            version,
        }),
        Edit::Delete if current.is_none() => None,
        Edit::Delete => Some(Write::Delete {
            key: key.to_owned(),
            version,
        }),
    }
}

/// Takes the addresses `doomed` picks out of every shared value under the prefix (a value whose
/// last address goes is deleted), each write only while `guard` does not exist; returns how many
/// it took out.
pub(crate) async fn take_out_everywhere<S: SharedStore>(
    store: &S,
    doomed: impl Fn(&Address) -> bool,
    guard: Option<&str>,
) -> Result<usize> {
    let layout = store.layout();
    let listing = store.read_prefix(layout.prefix()).await?;
    let keys: Vec<String> = listing
        .into_iter()
        .filter(|(key, value)| {
            layout.parse(key).is_some_and(|k| k.instance_id.is_none())
                && holds_any(&value.value, &doomed)
        })
        .map(|(key, _)| key)
        .collect();
    if keys.is_empty() {
        return Ok(0);
    }
    edit_values(store, &keys, guard, |_, current| match current {
        Some(bytes) => without(bytes, &doomed),
        None => Ok((Edit::Unchanged, 0)),
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(size: usize) -> (usize, Write, usize) {
        let write = Write::Put {
            key: String::new(),
            value: vec![0; size],
            version: None,
        };
        (0, write, 1)
    }

    #[test]
    fn requests_are_cut_by_count_and_by_bytes() {
        let small: Vec<_> = (0..5).map(|_| put(10)).collect();
        let sizes: Vec<usize> = batched(&small, 2).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [2, 2, 1]);
        let big: Vec<_> = (0..5).map(|_| put(MAX_BATCH_BYTES / 2)).collect();
        let sizes: Vec<usize> = batched(&big, 100).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [2, 2, 1]);
        let huge = vec![put(MAX_BATCH_BYTES * 2), put(1)];
        let sizes: Vec<usize> = batched(&huge, 100).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [1, 1]);
        assert!(batched(&[], 3).is_empty());
    }
}
