//! Decoding off the async threads, written once for every backend: a batch of raw values is split
//! in two halves, each decoded on a blocking thread (decoding is most of a cold load's work, and
//! these machines have two cores), and the results come back in order.

use tokio::task::JoinHandle;

use crate::error::{Error, ErrorKind, Result};

/// The two halves of a batch being decoded.
pub(crate) struct Decoding<R> {
    halves: [JoinHandle<Vec<R>>; 2],
}

/// Starts decoding `items` in two halves on blocking threads with `decode`.
pub(crate) fn decode_in_halves<T, R, F>(mut items: Vec<T>, decode: F) -> Decoding<R>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(Vec<T>) -> Vec<R> + Clone + Send + 'static,
{
    let second = items.split_off(items.len() / 2);
    Decoding {
        halves: [items, second].map(|half| {
            let decode = decode.clone();
            tokio::task::spawn_blocking(move || decode(half))
        }),
    }
}

impl<R> Decoding<R> {
    /// The decoded values, in the batch's order; `what` names the batch in the error of a
    /// decoding thread that ended abnormally.
    pub(crate) async fn join(self, what: &str) -> Result<Vec<R>> {
        let mut decoded = Vec::new();
        for half in self.halves {
            decoded.extend(half.await.map_err(|e| {
                Error::new(
                    ErrorKind::Closed,
                    format!("{what} decoding ended abnormally"),
                )
                .with_source(e)
            })?);
        }
        Ok(decoded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn halves_come_back_in_order() {
        let items: Vec<u32> = (0..101).collect();
        let decoded = decode_in_halves(items, |half| half.into_iter().map(|i| i * 2).collect())
            .join("numbers")
            .await
            .unwrap();
        assert_eq!(decoded, (0..101).map(|i| i * 2).collect::<Vec<_>>());
        let empty = decode_in_halves(Vec::<u32>::new(), |half| half)
            .join("nothing")
            .await;
        assert!(empty.unwrap().is_empty());
    }
}
