//! [`Gateway`]: the shared state behind every request, its background tasks, and reloads.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwap;
use tokio::task::AbortHandle;

use crate::config::{ConfigFileError, FileConfig};
use crate::dashboard::Dashboard;
use crate::metrics::GatewayMetrics;
use crate::runtime::Runtime;
use crate::settings::{EXAMPLE_CONFIG, GatewaySettings};
use crate::{health_check, reload};

/// The gateway: settings, the live configuration (swapped whole on reload), metrics.
///
/// Cheap to clone. [`Gateway::start`] also starts the health checks and the file watcher;
/// they stop when the last clone is dropped.
#[derive(Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
}

struct Shared {
    settings: GatewaySettings,
    runtime: ArcSwap<Runtime>,
    metrics: GatewayMetrics,
    /// The dashboard's counters and data.
    dashboard: Arc<Dashboard>,
    /// Whether the dashboard was enabled at start (`[dashboard] enabled` is not reloadable).
    dashboard_enabled: bool,
    /// The text of the configuration file last looked at (applied or refused).
    last_text: Mutex<String>,
    tasks: Mutex<Vec<AbortHandle>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let tasks = match self.tasks.get_mut() {
            Ok(tasks) => tasks,
            Err(poisoned) => poisoned.into_inner(),
        };
        for task in tasks.drain(..) {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("settings", &self.shared.settings)
            .finish_non_exhaustive()
    }
}

/// What a reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    /// The file is unchanged since it was last looked at (or there is no file).
    Unchanged,
    /// A new configuration is live.
    Applied,
}

impl Gateway {
    /// Loads the configuration (the file named by the settings, or the built-in example)
    /// without starting background tasks.
    pub fn new(settings: GatewaySettings) -> Result<Self, ConfigFileError> {
        Self::with_metrics(settings, GatewayMetrics::global())
    }

    /// [`Gateway::new`] recording into `metrics` instead of the global meter.
    pub fn with_metrics(
        settings: GatewaySettings,
        metrics: GatewayMetrics,
    ) -> Result<Self, ConfigFileError> {
        let (file, text) = match &settings.config_path {
            Some(path) => FileConfig::read(path)?,
            None => (
                FileConfig::parse(EXAMPLE_CONFIG)?,
                EXAMPLE_CONFIG.to_owned(),
            ),
        };
        let dashboard_enabled = file.dashboard.enabled;
        let runtime = Runtime::build(file, &settings, None)?;
        Ok(Self {
            shared: Arc::new(Shared {
                settings,
                runtime: ArcSwap::from_pointee(runtime),
                metrics,
                dashboard: Arc::new(Dashboard::new()),
                dashboard_enabled,
                last_text: Mutex::new(text),
                tasks: Mutex::new(Vec::new()),
            }),
        })
    }

    /// [`Gateway::new`], then starts the active health checks, (with a file) the reload
    /// watcher and (when enabled) the dashboard's sampler. Must be called inside a Tokio
    /// runtime.
    pub fn start(settings: GatewaySettings) -> Result<Self, ConfigFileError> {
        Self::start_with_metrics(settings, GatewayMetrics::global())
    }

    /// [`Gateway::start`] recording into `metrics` instead of the global meter.
    pub fn start_with_metrics(
        settings: GatewaySettings,
        metrics: GatewayMetrics,
    ) -> Result<Self, ConfigFileError> {
        let gateway = Self::with_metrics(settings, metrics)?;
        let weak = Arc::downgrade(&gateway.shared);
        let mut handles =
            vec![tokio::spawn(health_check::run(WeakGateway(weak.clone()))).abort_handle()];
        if gateway.shared.dashboard_enabled {
            handles.push(
                tokio::spawn(crate::dashboard::sampler::run(WeakGateway(weak.clone())))
                    .abort_handle(),
            );
        }
        if gateway.shared.settings.config_path.is_some() {
            handles.push(tokio::spawn(reload::run(WeakGateway(weak))).abort_handle());
        }
        match gateway.shared.tasks.lock() {
            Ok(mut tasks) => tasks.extend(handles),
            Err(poisoned) => poisoned.into_inner().extend(handles),
        }
        Ok(gateway)
    }

    /// The live configuration.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.shared.runtime.load_full()
    }

    /// The environment settings.
    pub fn settings(&self) -> &GatewaySettings {
        &self.shared.settings
    }

    /// The instruments.
    pub fn metrics(&self) -> &GatewayMetrics {
        &self.shared.metrics
    }

    /// The dashboard's counters and data.
    pub fn dashboard(&self) -> &Arc<Dashboard> {
        &self.shared.dashboard
    }

    /// Whether `/dashboard` is served and sampled (`[dashboard] enabled` at start).
    pub fn dashboard_enabled(&self) -> bool {
        self.shared.dashboard_enabled
    }

    /// Where to listen: `BIND_ADDR`, else the file's `listen`, else `0.0.0.0:8080`.
    pub fn bind_addr(&self) -> SocketAddr {
        self.settings().bind_addr(self.runtime().file.listen)
    }

    /// Re-reads the configuration file and swaps it in if it changed and is valid. A file
    /// that fails is reported once and remembered, so a poll does not report it again.
    pub async fn reload(&self) -> Result<Reloaded, ConfigFileError> {
        let Some(path) = &self.shared.settings.config_path else {
            return Ok(Reloaded::Unchanged);
        };
        let text =
            tokio::fs::read_to_string(path)
                .await
                .map_err(|source| ConfigFileError::Read {
                    path: path.clone(),
                    source,
                })?;
        {
            let mut last = match self.shared.last_text.lock() {
                Ok(last) => last,
                Err(poisoned) => poisoned.into_inner(),
            };
            if *last == text {
                return Ok(Reloaded::Unchanged);
            }
            last.clone_from(&text);
        }
        let file = FileConfig::parse(&text)?;
        let previous = self.runtime();
        if file.listen != previous.file.listen {
            tracing::warn!(
                "`listen` changed in the configuration file; it applies at the next start"
            );
        }
        if file.dashboard.enabled != self.shared.dashboard_enabled {
            tracing::warn!(
                "`dashboard.enabled` changed in the configuration file; it applies at the next start"
            );
        }
        let runtime = Runtime::build(file, &self.shared.settings, Some(&previous))?;
        self.shared.runtime.store(Arc::new(runtime));
        Ok(Reloaded::Applied)
    }
}

/// A handle the background tasks hold: it does not keep the gateway alive.
#[derive(Clone)]
pub(crate) struct WeakGateway(Weak<Shared>);

impl WeakGateway {
    /// The gateway, unless it has been dropped.
    pub(crate) fn upgrade(&self) -> Option<Gateway> {
        self.0.upgrade().map(|shared| Gateway { shared })
    }
}
