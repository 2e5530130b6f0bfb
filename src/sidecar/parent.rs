//! Watching the parent process, so the hub never outlives the app that
//! started it (`--exit-with-parent`, `--parent-pid`).
//!
//! - Linux: a pidfd (`pidfd_open`, Linux 5.3+) becomes readable when the
//!   process exits, whatever killed it (SIGKILL too); no polling. The
//!   parent's *process* is watched, not the thread that forked the hub
//!   (which `PR_SET_PDEATHSIG` would, and Node forks from worker threads).
//! - Other Unix systems, and Linux without pidfds: `kill(pid, 0)` every
//!   250 ms.
//! - Elsewhere (Windows): not available; `--exit-on-stdin-close` is the
//!   way there (a pipe closes when its writer dies, however it dies).

/// Whether this platform can watch a process by pid.
pub const SUPPORTED: bool = cfg!(unix);

/// The pid of this process's parent, where the platform tells it.
pub fn parent_pid() -> Option<u32> {
    #[cfg(unix)]
    {
        rustix::process::getppid().and_then(|pid| u32::try_from(pid.as_raw_nonzero().get()).ok())
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Resolves once process `pid` has exited (at once when it is not
/// running). With `parent`, also once this process's parent is no longer
/// `pid` (it died, and the hub was re-parented, before the watch began).
/// Never resolves where [`SUPPORTED`] is false.
pub async fn exited(pid: u32, parent: bool) {
    let gone = || parent && parent_pid() != Some(pid);
    #[cfg(target_os = "linux")]
    if let Some(fd) = linux::pidfd(pid) {
        if !gone() {
            linux::wait(fd).await;
        }
        return;
    }
    #[cfg(unix)]
    loop {
        if !unix::alive(pid) || gone() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    #[cfg(not(unix))]
    {
        let _ = gone;
        std::future::pending::<()>().await;
    }
}

#[cfg(unix)]
mod unix {
    use rustix::process::{Pid, test_kill_process};

    /// Whether process `pid` exists (signal 0: nothing is sent).
    pub(super) fn alive(pid: u32) -> bool {
        let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
            return false;
        };
        match test_kill_process(pid) {
            Ok(()) => true,
            Err(err) => err == rustix::io::Errno::PERM,
        }
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::os::fd::OwnedFd;

    use rustix::process::{Pid, PidfdFlags, pidfd_open};
    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;

    /// A pidfd of `pid`, or `None` (no such process, or no pidfd support).
    pub(super) fn pidfd(pid: u32) -> Option<OwnedFd> {
        let pid = i32::try_from(pid).ok().and_then(Pid::from_raw)?;
        pidfd_open(pid, PidfdFlags::empty()).ok()
    }

    /// Resolves when the pidfd's process exits.
    pub(super) async fn wait(fd: OwnedFd) {
        // Deprecated because a borrowed raw fd could be closed or reused
        // under the reactor; an `OwnedFd` moved in stays open and the same
        // until the `AsyncFd` drops it, which is what `register` requires.
        #[allow(deprecated)]
        let registered = AsyncFd::with_interest(fd, Interest::READABLE);
        match registered {
            Ok(fd) => {
                let _ = fd.readable().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot watch the parent process");
                std::future::pending::<()>().await;
            }
        }
    }
}
