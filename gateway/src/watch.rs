//! File watching for `outpost dev`: a change anywhere under the watched paths becomes one
//! signal on a channel of capacity one, so bursts of events (an editor's save) coalesce.

use std::path::PathBuf;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Watches every path in `paths` (recursively) and signals on the returned channel after
/// changes. Keep the watcher alive as long as signals are wanted.
pub fn watch(
    paths: &[PathBuf],
) -> notify::Result<(notify::RecommendedWatcher, mpsc::Receiver<()>)> {
    let (tx, rx) = mpsc::channel(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = match event {
            Ok(event) => matches!(
                event.kind,
                EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) | EventKind::Any
            ),
            Err(_) => true,
        };
        if relevant {
            // Full means a signal is already pending: this change is covered by it.
            let _ = tx.try_send(());
        }
    })?;
    for path in paths {
        watcher.watch(path, RecursiveMode::Recursive)?;
    }
    Ok((watcher, rx))
}
