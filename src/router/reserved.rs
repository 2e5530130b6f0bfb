//! Channels only the hub itself publishes on: task lifecycle events
//! (`task:*`), worker events (`worker:*`) and federation link events
//! (`hub:*`). A client's publish there is `forbidden` whatever its
//! allow-lists say, so a UI can trust what it reads on them.

use crate::channels::ChannelName;
use crate::error::RequestError;

/// The first segments of the reserved channels, as documented
/// (`task:**`, `worker:**`, `hub:**`).
pub(crate) const RESERVED: [&str; 3] = ["task", "worker", "hub"];

/// `Err(forbidden)` when `channel` is one the hub alone publishes on.
pub(crate) fn check_not_reserved(channel: &ChannelName) -> Result<(), RequestError> {
    let first = channel.as_str().split(':').next().unwrap_or_default();
    if RESERVED.contains(&first) {
        return Err(RequestError::forbidden(format!(
            "{:?} is a channel only the hub publishes on ({first}:**)",
            channel.as_str()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::NameLimits;

    #[test]
    fn task_worker_and_hub_channels_are_reserved_and_lookalikes_are_not() {
        let check = |name: &str| {
            check_not_reserved(&ChannelName::parse(name, &NameLimits::UNBOUNDED).expect("name"))
        };
        for name in [
            "task:completed",
            "task:9f1c:progress",
            "worker:3",
            "hub:connected",
            "task",
        ] {
            assert!(check(name).is_err(), "{name} is reserved");
        }
        for name in ["tasks:1", "session:task", "hubs:x", "my-task:1", "demo:hub"] {
            assert!(check(name).is_ok(), "{name} is not reserved");
        }
    }
}
