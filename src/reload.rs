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

/// Reloads on SIGHUP and whenever a watched file changes (polled every
/// `server.watch_interval`, "0s" = SIGHUP only, as the running configuration says: a reload
/// that changes it applies at once). Polling also works on bind mounts and editors'
/// rename-on-save, where inotify misses changes. A change is loaded once the files have stayed
/// the same for a whole interval, so that a file caught while being written is not. `hup` is
/// the SIGHUP stream, created before ucgate announces its listeners: from then on a SIGHUP must
/// reload, not meet its default action (ending the process). See [`hangup`].
pub async fn watch(gateway: Gateway, config_file: PathBuf, hup: std::io::Result<Signal>) {
    let mut hup = match hup {
        Ok(hup) => hup,
        Err(e) => {
            tracing::error!(error = %e, "cannot install the SIGHUP handler; reload by signal is off");
            return;
        }
    };
    let mut files = gateway.state().config.watched_files();
    let mut seen = fingerprint(&files);
    // A change seen at the last poll, loaded if the next poll sees the same.
    let mut settling: Option<Fingerprint> = None;
    let mut interval = gateway.state().config.server.watch_interval;
    let mut tick = ticker(interval);
    loop {
        let cause = tokio::select! {
            _ = hup.recv() => "SIGHUP",
            _ = tick.tick(), if !interval.is_zero() => {
                let now = fingerprint(&files);
                if now == seen {
                    settling = None;
                    continue;
                }
                if settling.as_ref() != Some(&now) {
                    settling = Some(now);
                    continue;
                }
                seen = now;
                "file change"
            }
        };
        settling = None;
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
                for warning in state.warnings() {
                    tracing::warn!("{warning}");
                }
                files = state.config.watched_files();
                seen = fingerprint(&files);
                if state.config.server.watch_interval != interval {
                    interval = state.config.server.watch_interval;
                    tick = ticker(interval);
                }
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

/// Polls every `interval` (its first tick one interval from now); never for "0s".
fn ticker(interval: Duration) -> tokio::time::Interval {
    let period = if interval.is_zero() {
        Duration::from_secs(3600)
    } else {
        interval
    };
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}
