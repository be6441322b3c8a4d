//! Resolves a route path through wayfinder and calls the chosen instance over HTTP, the way a
//! client of `examples/service.rs` does. The registry comes from configuration only
//! (`WAYFINDER_BACKEND` and the other `WAYFINDER_*` variables, see [`wayfinder::Config`]):
//!
//! ```text
//! WAYFINDER_BACKEND=file://./routes.json cargo run --example client -- api/greeter/hello 5
//! ```
//!
//! Arguments: the route path (default `api/greeter/hello`) and how many calls to make (default
//! 3). Each call prints `<address> <answer>`. A call that fails is reported to the resolver
//! (passive health) and retried on another pick, up to three times.

mod hello;

use std::path::PathBuf;

use tower::BoxError;
use wayfinder::{connect_with, AddressResolver, Config};

const ATTEMPTS: usize = 3;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let path = args.next().unwrap_or_else(|| hello::HELLO_PATH.to_owned());
    let calls: usize = args.next().map_or(Ok(3), |n| n.parse())?;

    let config_file = std::env::var_os("WAYFINDER_CONFIG").map(PathBuf::from);
    let config = Config::load(config_file.as_deref())?;
    let registry = connect_with(&config).await?;
    let resolver = AddressResolver::with_config(registry, config.resolver_config()?).await?;
    let client = hello::http_client();

    for _ in 0..calls {
        let resolved = resolver.resolve_path(&path, None).await?;
        // The chosen address first, then its alternates (no second lookup), up to ATTEMPTS.
        let tries = std::iter::once(resolved.address()).chain(resolved.alternates(None));
        let mut last_error = None;
        for (attempt, address) in tries.take(ATTEMPTS).enumerate() {
            // The chosen address's outcome goes through the resolution (it also feeds the
            // peak_ewma selector the call's time); an alternate's by its address.
            let chosen = attempt == 0;
            match hello::call(&client, address, &path).await {
                Ok(answer) => {
                    if chosen {
                        resolved.succeeded();
                    } else {
                        resolver.report_success(address);
                    }
                    println!("{address} {answer}");
                    last_error = None;
                    break;
                }
                Err(error) => {
                    eprintln!("call to {address} failed ({error}); trying another instance");
                    if chosen {
                        resolved.failed();
                    } else {
                        resolver.report_failure(address);
                    }
                    last_error = Some(error);
                }
            }
        }
        if let Some(error) = last_error {
            return Err(format!("{path}: {error}").into());
        }
    }
    Ok(())
}
