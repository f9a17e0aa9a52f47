//! Hot reload: on SIGHUP, and when a watched file changes, the configuration is loaded anew and
//! swapped in as one piece. In-flight requests finish on the state they started with; a bad
//! configuration is refused and the running one stays.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::gateway::Gateway;
use crate::metrics::{OutcomeLabels, metrics};

/// Installs the SIGHUP handler (inside the runtime). Call it before serving.
pub fn hangup() -> std::io::Result<Signal> {
    signal(SignalKind::hangup())
}

/// What identifies a file's version without reading it: modification time and length (or absence).
type Fingerprint = Vec<Option<(SystemTime, u64)>>;

fn fingerprint(files: &[PathBuf]) -> Fingerprint {
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .ok()
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
        })
        .collect()
}

/// Reloads on SIGHUP and whenever a watched file changes (polled every `interval`, if any:
/// polling also works on bind mounts and editors' rename-on-save, where inotify misses changes).
/// `hup` is the SIGHUP stream, created before ucgate announces its listeners: from then on a
/// SIGHUP must reload, not meet its default action (ending the process). See [`hangup`].
pub async fn watch(
    gateway: Gateway,
    config_file: PathBuf,
    interval: Option<Duration>,
    hup: std::io::Result<Signal>,
) {
    let mut hup = match hup {
        Ok(hup) => hup,
        Err(e) => {
            tracing::error!(error = %e, "cannot install the SIGHUP handler; reload by signal is off");
            return;
        }
    };
    let mut files = gateway.state().config.watched_files();
    let mut seen = fingerprint(&files);
    let polling = interval.is_some();
    let mut tick = tokio::time::interval(interval.unwrap_or(Duration::from_secs(3600)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let cause = tokio::select! {
            _ = hup.recv() => "SIGHUP",
            _ = tick.tick(), if polling => {
                let now = fingerprint(&files);
                if now == seen {
                    continue;
                }
                seen = now;
                "file change"
            }
        };
        let outcome = gateway.reload(&config_file);
        let label = OutcomeLabels {
            outcome: if outcome.is_ok() {
                "success"
            } else {
                "failure"
            },
        };
        metrics().reloads.get_or_create(&label).inc();
        match outcome {
            Ok(()) => {
                let state = gateway.state();
                tracing::info!(
                    cause,
                    routes = state.config.routes.len(),
                    "configuration reloaded"
                );
                files = state.config.watched_files();
                seen = fingerprint(&files);
            }
            Err(e) => {
                tracing::error!(
                    cause,
                    "reload refused, the running configuration stays: {e}"
                );
            }
        }
    }
}
