//! The reader side of the Consul backend: one recursive blocking query on the prefix.
//!
//! Index rules (Consul's blocking-query guidance): an index that goes backwards resets to 0 (a
//! fresh read); an index below 1 becomes 1; a return whose index did not move is not a change.
//! Every answer is the whole prefix, so the hub diffs it against the last one; an answer filtered
//! by ACLs is partial and never taken as deletions. Errors (and 429s) back off with jitter and
//! leave the last good routes in place.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::{entries_of, Agents, Listing};
use crate::error::Result;
use crate::watch::WatchHub;

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Reads once (an error here is returned), then follows the prefix in the background.
pub(crate) async fn start(agents: Agents, hub: Arc<WatchHub>) -> Result<JoinHandle<()>> {
    let first = agents.list(0).await?;
    let mut follower = Follower {
        agents,
        hub,
        index: 0,
    };
    follower.publish(first);
    Ok(tokio::spawn(follower.run()))
}

struct Follower {
    agents: Agents,
    hub: Arc<WatchHub>,
    index: u64,
}

impl Follower {
    fn publish(&mut self, listing: Listing) {
        let layout = &self.agents.config.layout;
        let routes = entries_of(layout, &listing.pairs).into_merged();
        if listing.filtered {
            // Partial: update what we can see, remove nothing.
            tracing::warn!("consul filtered the listing by ACLs; keeping routes it did not show");
            for (id, route) in routes {
                self.hub.set(&id, Some(route));
            }
            self.hub.mark_good();
        } else {
            self.hub.replace_all(routes);
        }
        self.index = listing.index.max(1);
    }

    async fn run(mut self) {
        let mut delay = BACKOFF_FIRST;
        loop {
            match self.agents.list(self.index).await {
                Ok(listing) => {
                    delay = BACKOFF_FIRST;
                    if listing.index < self.index {
                        tracing::info!(
                            from = self.index,
                            to = listing.index,
                            "consul index went backwards; reading afresh"
                        );
                        self.index = 0;
                        continue;
                    }
                    if listing.index == self.index {
                        // The wait ran out: not a change.
                        self.hub.mark_good();
                        continue;
                    }
                    self.publish(listing);
                }
                Err(err) => {
                    tracing::warn!(error = %err, retry_in = ?delay, "consul watch failed; keeping the last good routes");
                    self.hub.mark_error(&err);
                    tokio::time::sleep(delay.mul_f64(0.8 + 0.4 * fastrand::f64())).await;
                    delay = (delay * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}
