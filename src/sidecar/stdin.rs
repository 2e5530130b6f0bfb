//! The parent's pipe: the token secret on its first line (`--secret-stdin`,
//! so it never shows in `ps` or other processes' environments), and its
//! closing as the signal to stop (`--exit-on-stdin-close`).

use std::io::Read;

/// Reads the first line of stdin, without its line ending. Bytes after it
/// stay buffered for [`closed`].
pub fn read_secret_line() -> std::io::Result<String> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let secret = line.trim_end_matches(['\r', '\n']).to_string();
    if secret.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "--secret-stdin: the first line of stdin is empty",
        ));
    }
    Ok(secret)
}

/// Resolves when stdin reaches its end (the parent closed the pipe or
/// died) or cannot be read. What arrives meanwhile is discarded. The read
/// blocks a thread of its own, detached, so it never holds up the exit.
pub async fn closed() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("chanhub-stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin();
            let mut buf = [0u8; 1024];
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 {
                    break;
                }
            }
            let _ = tx.send(());
        });
    match spawned {
        // A dropped sender (the thread panicked) ends the wait too.
        Ok(_) => {
            let _ = rx.await;
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot watch stdin");
            std::future::pending::<()>().await;
        }
    }
}
