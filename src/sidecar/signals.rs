//! The stop signals: SIGTERM and SIGINT (ctrl-c) on Unix, ctrl-c and
//! ctrl-break on Windows. Listening starts when [`Signals::listen`] is
//! called, not when first awaited, so a parent's SIGTERM sent right after
//! the ready line is a graceful stop, not the default (immediate) death.

/// Listeners for the stop signals.
pub struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
    #[cfg(windows)]
    ctrl_c: Option<tokio::signal::windows::CtrlC>,
    #[cfg(windows)]
    ctrl_break: Option<tokio::signal::windows::CtrlBreak>,
}

impl Signals {
    /// Starts listening (inside a tokio runtime). A signal that cannot be
    /// listened for is logged and never resolves.
    pub fn listen() -> Signals {
        fn ok<T>(what: &str, listener: std::io::Result<T>) -> Option<T> {
            listener
                .inspect_err(|e| tracing::warn!(error = %e, "cannot listen for {what}"))
                .ok()
        }
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Signals {
                term: ok("SIGTERM", signal(SignalKind::terminate())),
                int: ok("SIGINT", signal(SignalKind::interrupt())),
            }
        }
        #[cfg(windows)]
        {
            use tokio::signal::windows::{ctrl_break, ctrl_c};
            Signals {
                ctrl_c: ok("ctrl-c", ctrl_c()),
                ctrl_break: ok("ctrl-break", ctrl_break()),
            }
        }
    }

    /// Resolves on the next stop signal.
    pub async fn recv(&mut self) {
        async fn next<S, F>(signal: Option<&mut S>, recv: F)
        where
            F: AsyncFnOnce(&mut S) -> Option<()>,
        {
            match signal {
                Some(signal) => {
                    recv(signal).await;
                }
                None => std::future::pending().await,
            }
        }
        #[cfg(unix)]
        tokio::select! {
            () = next(self.term.as_mut(), async |s| s.recv().await) => {}
            () = next(self.int.as_mut(), async |s| s.recv().await) => {}
        }
        #[cfg(windows)]
        tokio::select! {
            () = next(self.ctrl_c.as_mut(), async |s| s.recv().await) => {}
            () = next(self.ctrl_break.as_mut(), async |s| s.recv().await) => {}
        }
    }
}
