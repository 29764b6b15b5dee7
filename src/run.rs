//! The server's lifecycle: load the config, start managed processes, run
//! the start hooks, listen, run the ready hooks, reload on request, reopen
//! log files on SIGUSR1, and shut down on SIGTERM or SIGINT.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::app::App;
use crate::compile::{self, Snapshot};
use crate::config::units::Listen;
use crate::fly;
use crate::hooks::{self, ServerEvent};
use crate::log_shipping;
use crate::logging::{self, LogControl};
use crate::managed::ManagedProcesses;
use crate::metrics;
use crate::reload::{self, Condition, ReloadOutcome, ReloadQueue, ReloadRequest};
use crate::server::{self, Connections};
use crate::supervisor::cgroup;
use crate::tls;

/// Runs navigator with `config_path` until a stop signal. Returns the
/// process exit code: 0 after a clean shutdown, 1 on a runtime failure, 2
/// when the config is invalid.
pub async fn run(config_path: PathBuf) -> i32 {
    let log = logging::init(Default::default());
    // Installed first: until a handler exists, SIGHUP and SIGTERM kill the
    // process, and a reload sent right after startup must not do that.
    let mut signals = match Signals::install() {
        Ok(signals) => signals,
        Err(error) => {
            error!(error = %error, "cannot install signal handlers");
            return 1;
        }
    };
    let snapshot = match compile::load_snapshot(&config_path) {
        Ok(snapshot) => snapshot,
        Err(errors) => {
            for error in &errors.0 {
                error!(error = %error, "invalid config");
            }
            eprintln!("{errors}");
            return 2;
        }
    };
    if let Some(path) = snapshot.access.missing_htpasswd() {
        error!(htpasswd = %path.display(), "authentication is enabled but the htpasswd file is missing or unreadable");
        eprintln!(
            "{}: authentication is enabled but the htpasswd file {} is missing or unreadable; create it or set auth.enabled = false",
            config_path.display(),
            path.display()
        );
        return 2;
    }
    let tls_config = match snapshot.config.server.tls.as_ref().map(tls::server_config) {
        None => None,
        Some(Ok(config)) => Some(config),
        Some(Err(message)) => {
            error!(error = %message, "cannot set up the TLS listener");
            eprintln!("{}: {message}", config_path.display());
            return 2;
        }
    };
    log.set_format(snapshot.config.logging.format);
    log.set_level(snapshot.config.logging.level);
    log_shipping::configure(&snapshot.config.logging);
    info!(
        config = %config_path.display(),
        tenants = snapshot.tenants.len(),
        version = env!("CARGO_PKG_VERSION"),
        "navigator starting"
    );

    let pid_file = snapshot.config.server.pid_file.clone();
    write_pid_file(&pid_file);
    let app = App::new(config_path, snapshot);
    let managed = app.managed.clone();

    // A stop signal during startup (start hooks may take a while) ends it
    // at once; everything started so far is stopped.
    let started = tokio::select! {
        started = start(&app, &managed, tls_config) => started,
        _ = stop_requested(&mut signals.terminate, &mut signals.interrupt) => {
            info!("stop signal during startup");
            Err(0)
        }
    };
    let listeners = match started {
        Ok(listeners) => listeners,
        Err(code) => {
            managed.stop_all().await;
            remove_pid_file(&pid_file);
            return code;
        }
    };

    let Some(reload_queue) = app.take_reload_queue() else {
        error!("the reload queue was taken before the lifecycle loop started");
        return 1;
    };
    let connections = Connections::new();
    let acceptor = Acceptor::start(&app, listeners.plain, None, &connections);
    let tls = listeners.tls.map(|(listen, config, listener)| {
        let config: tls::SharedConfig = Arc::new(ArcSwap::new(config));
        TlsListener {
            listen,
            acceptor: Acceptor::start(&app, listener, Some(config.clone()), &connections),
            config,
        }
    });
    tokio::spawn(app.supervisor.clone().run_idle_reaper());
    tokio::spawn(fly::idle::run_monitor(app.clone()));
    tokio::spawn(app.supervisor.clone().run_memory_monitor());
    app.supervisor.prewarm();
    let mut lifecycle = Lifecycle {
        app,
        log,
        managed,
        connections,
        acceptor,
        tls,
        pid_file,
    };
    lifecycle.spawn_ready_hooks();

    let code = lifecycle.serve(&mut signals, reload_queue).await;
    lifecycle
        .shut_down_unless_signalled_again(&mut signals, code)
        .await
}

/// The bound listeners: plain HTTP, and HTTPS with its settings when
/// `server.tls` is set.
struct Listeners {
    plain: TcpListener,
    tls: Option<(Listen, Arc<ServerConfig>, TcpListener)>,
}

/// Starts the managed processes, runs the server start hooks and binds the
/// listeners, in this order. Returns the listeners, or the exit code when
/// a start hook fails or an address cannot be bound.
async fn start(
    app: &App,
    managed: &ManagedProcesses,
    tls_config: Option<Arc<ServerConfig>>,
) -> Result<Listeners, i32> {
    let snapshot = app.snapshot();
    managed
        .apply(
            &snapshot.config.managed_processes,
            snapshot.pools.grace_period,
        )
        .await;

    if hooks::run_server_hooks(app, ServerEvent::Start)
        .await
        .is_err()
    {
        error!("a server start hook failed; navigator does not start");
        return Err(1);
    }

    let listen = &snapshot.config.server.listen;
    let plain = server::bind(listen).await.map_err(|error| {
        error!(listen = %listen, error = %error, "cannot listen");
        1
    })?;
    let tls = match (&snapshot.config.server.tls, tls_config) {
        (Some(settings), Some(config)) => {
            let listener = server::bind(&settings.listen).await.map_err(|error| {
                error!(listen = %settings.listen, error = %error, "cannot listen for TLS");
                1
            })?;
            Some((settings.listen.clone(), config, listener))
        }
        _ => None,
    };
    Ok(Listeners { plain, tls })
}

/// The signal streams the lifecycle loop reacts to.
struct Signals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
    reopen_logs: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
            reopen_logs: signal(SignalKind::user_defined1())?,
        })
    }
}

/// Resolves at the next SIGTERM or SIGINT.
async fn stop_requested(terminate: &mut Signal, interrupt: &mut Signal) {
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
}

/// The accept loop of one listener and the switch that stops it.
struct Acceptor {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Acceptor {
    fn start(
        app: &Arc<App>,
        listener: TcpListener,
        tls: Option<tls::SharedConfig>,
        connections: &Arc<Connections>,
    ) -> Acceptor {
        let (stop, stop_receiver) = watch::channel(false);
        let task = tokio::spawn(server::serve(
            app.clone(),
            listener,
            tls,
            stop_receiver,
            connections.clone(),
        ));
        Acceptor { stop, task }
    }

    /// Stops accepting and waits until the listener is closed; accepted
    /// connections stay open.
    async fn stop(self) {
        self.stop.send_replace(true);
        if let Err(error) = self.task.await {
            error!(error = %error, "the accept loop failed");
        }
    }
}

/// The HTTPS listener: its address, the settings its next handshakes use
/// (replaced on reload) and its accept loop.
struct TlsListener {
    listen: Listen,
    config: tls::SharedConfig,
    acceptor: Acceptor,
}

/// The change a reload makes to the HTTPS listener, decided before the
/// swap.
enum TlsChange {
    /// No `server.tls` in the new config: stop the listener, if any.
    Off,
    /// Same address: the running listener takes the new settings.
    Update(Arc<ServerConfig>),
    /// A new address (or TLS newly enabled), already bound.
    Rebind(Listen, Arc<ServerConfig>, TcpListener),
}

/// Everything a reload or the shutdown touches.
struct Lifecycle {
    app: Arc<App>,
    log: LogControl,
    managed: Arc<ManagedProcesses>,
    connections: Arc<Connections>,
    acceptor: Acceptor,
    tls: Option<TlsListener>,
    pid_file: PathBuf,
}

impl Lifecycle {
    /// Serves until SIGTERM or SIGINT, performing reloads one at a time.
    /// Returns the exit code for the shutdown.
    async fn serve(&mut self, signals: &mut Signals, mut reload_queue: ReloadQueue) -> i32 {
        loop {
            let request = tokio::select! {
                _ = stop_requested(&mut signals.terminate, &mut signals.interrupt) => return 0,
                _ = signals.reopen_logs.recv() => {
                    log_shipping::reopen();
                    continue;
                }
                _ = signals.hangup.recv() => ReloadRequest {
                    file: None,
                    condition: Condition::Always,
                    cause: "SIGHUP".into(),
                    reply: None,
                },
                Some(request) = reload_queue.recv() => request,
            };
            // A reload may wait for start hooks, so a stop signal ends it
            // where it is. That is safe because the shutdown stops
            // everything the reload may have started.
            tokio::select! {
                _ = self.reload(request) => {}
                _ = stop_requested(&mut signals.terminate, &mut signals.interrupt) => return 0,
            }
        }
    }

    /// Performs one reload request and sends its outcome to the requester.
    async fn reload(&mut self, mut request: ReloadRequest) {
        let reply = request.reply.take();
        let outcome = self.reload_config(&request).await;
        match &outcome {
            ReloadOutcome::Applied => self.app.count_reload(),
            ReloadOutcome::Rejected(_) => metrics::RELOAD_FAILURES.inc(),
            ReloadOutcome::Unchanged | ReloadOutcome::Unavailable => {}
        }
        if let Some(reply) = reply {
            let _ = reply.send(outcome);
        }
    }

    /// Loads the requested config and, if it is valid, puts it in place:
    /// new listener, managed processes, start hooks, the swap itself,
    /// tenant reconciliation, log format, pid file, and then ready hooks
    /// in the background. The old config keeps serving until the swap, and
    /// stays when anything before the swap fails.
    async fn reload_config(&mut self, request: &ReloadRequest) -> ReloadOutcome {
        let started = std::time::Instant::now();
        let app = self.app.clone();
        let current_path = app.config_path();
        let path = request.file.clone().unwrap_or_else(|| current_path.clone());

        if request.condition == Condition::IfChanged {
            let running = app.snapshot();
            match reload::changed(&path, &current_path, &running.loaded.text) {
                Ok(true) => {}
                Ok(false) => {
                    info!(config = %path.display(), cause = %request.cause, "config unchanged; no reload");
                    return ReloadOutcome::Unchanged;
                }
                Err(error) => {
                    error!(config = %path.display(), cause = %request.cause, error = %error, "cannot read the config file to reload; keeping the running config");
                    return ReloadOutcome::Rejected(format!("{}: {error}", path.display()));
                }
            }
        }
        if !reload::same_file(&path, &current_path) {
            info!(from = %current_path.display(), to = %path.display(), cause = %request.cause, "switching config file");
            app.set_config_path(path.clone());
        }

        info!(config = %path.display(), cause = %request.cause, "reloading config");
        // Parsing and compiling a large config takes tens of milliseconds
        // of CPU; a blocking thread keeps the runtime's workers serving.
        let loading = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || compile::load_snapshot(&path)).await
        };
        let loaded = match loading {
            Ok(loaded) => loaded,
            Err(error) => {
                error!(config = %path.display(), cause = %request.cause, error = %error, "loading the config failed; keeping the running config");
                return ReloadOutcome::Rejected(format!(
                    "loading {} failed: {error}",
                    path.display()
                ));
            }
        };
        let snapshot = match loaded {
            Ok(snapshot) => snapshot,
            Err(errors) => {
                for error in &errors.0 {
                    error!(config = %path.display(), cause = %request.cause, error = %error, "reload rejected; keeping the running config");
                }
                return ReloadOutcome::Rejected(errors.to_string());
            }
        };
        if let Some(htpasswd) = snapshot.access.missing_htpasswd() {
            error!(config = %path.display(), htpasswd = %htpasswd.display(), cause = %request.cause, "reload rejected; authentication is enabled but the htpasswd file is missing; keeping the running config");
            return ReloadOutcome::Rejected(format!(
                "htpasswd file {} is missing",
                htpasswd.display()
            ));
        }

        let old = app.snapshot();
        let listen = snapshot.config.server.listen.clone();
        let new_listener = if listen != old.config.server.listen {
            match server::bind(&listen).await {
                Ok(listener) => Some(listener),
                Err(error) => {
                    error!(config = %path.display(), listen = %listen, error = %error, "reload rejected: cannot listen on the new address; keeping the running config");
                    return ReloadOutcome::Rejected(format!("cannot listen on {listen}: {error}"));
                }
            }
        } else {
            None
        };
        // The certificate files are read again on every reload, so a
        // renewed certificate needs no restart.
        let tls_change = match self.prepare_tls(&snapshot).await {
            Ok(change) => change,
            Err(message) => {
                error!(config = %path.display(), error = %message, "reload rejected; keeping the running config");
                return ReloadOutcome::Rejected(message);
            }
        };

        self.managed
            .apply(
                &snapshot.config.managed_processes,
                snapshot.pools.grace_period,
            )
            .await;
        // Start hooks run on every reload, as Navigator runs them: the boot
        // config usually has none, so the full config's start hooks (such
        // as refreshing the htpasswd file) first run here.
        let start_hooks = hooks::server_hooks(&snapshot.config, ServerEvent::Start);
        if let Err(error) = hooks::run_hooks(&start_hooks, &[], "hook:start").await {
            error!(config = %path.display(), error = %error, "a server start hook failed during reload; applying the config anyway");
        }

        self.log.set_format(snapshot.config.logging.format);
        self.log.set_level(snapshot.config.logging.level);
        log_shipping::configure(&snapshot.config.logging);
        self.switch_pid_file(&snapshot);
        let tenants = snapshot.tenants.len();
        app.install(snapshot);
        app.supervisor.prewarm();
        if let Some(listener) = new_listener {
            let old_acceptor = std::mem::replace(
                &mut self.acceptor,
                Acceptor::start(&app, listener, None, &self.connections),
            );
            old_acceptor.stop().await;
        }
        self.apply_tls(tls_change).await;
        // From the reload request to the new config serving; ready hooks
        // run after this, in the background.
        let elapsed_ms = started.elapsed().as_micros() as f64 / 1000.0;
        info!(config = %path.display(), cause = %request.cause, tenants, elapsed_ms, "reload applied");

        self.spawn_ready_hooks();
        ReloadOutcome::Applied
    }

    /// Reads the new config's certificate and key and, for a new address,
    /// binds it. Nothing running changes here.
    async fn prepare_tls(&self, snapshot: &Snapshot) -> Result<TlsChange, String> {
        let Some(settings) = &snapshot.config.server.tls else {
            return Ok(TlsChange::Off);
        };
        let config = tls::server_config(settings)?;
        let same_address = self
            .tls
            .as_ref()
            .is_some_and(|running| running.listen == settings.listen);
        if same_address {
            return Ok(TlsChange::Update(config));
        }
        let listener = server::bind(&settings.listen)
            .await
            .map_err(|error| format!("cannot listen for TLS on {}: {error}", settings.listen))?;
        Ok(TlsChange::Rebind(settings.listen.clone(), config, listener))
    }

    /// Puts a prepared TLS change in place; a replaced listener stops
    /// accepting, and the connections it accepted stay open.
    async fn apply_tls(&mut self, change: TlsChange) {
        let retired = match change {
            TlsChange::Off => self.tls.take(),
            TlsChange::Update(config) => {
                if let Some(running) = &self.tls {
                    running.config.store(config);
                    info!(listen = %running.listen, "TLS certificate and key reloaded");
                }
                None
            }
            TlsChange::Rebind(listen, config, listener) => {
                let config: tls::SharedConfig = Arc::new(ArcSwap::new(config));
                let acceptor =
                    Acceptor::start(&self.app, listener, Some(config.clone()), &self.connections);
                self.tls.replace(TlsListener {
                    listen,
                    config,
                    acceptor,
                })
            }
        };
        if let Some(retired) = retired {
            retired.acceptor.stop().await;
        }
    }

    /// Runs the current config's ready hooks in the background.
    fn spawn_ready_hooks(&self) {
        let app = self.app.clone();
        tokio::spawn(async move {
            // Failures are logged inside and change nothing here.
            let _ = hooks::run_server_hooks(&app, ServerEvent::Ready).await;
        });
    }

    /// Moves the pid file when a reload names another one.
    fn switch_pid_file(&mut self, snapshot: &Snapshot) {
        let wanted = &snapshot.config.server.pid_file;
        if *wanted != self.pid_file {
            write_pid_file(wanted);
            remove_pid_file(&self.pid_file);
            self.pid_file = wanted.clone();
        }
    }

    /// Shuts down, unless a second SIGTERM or SIGINT arrives first, which
    /// exits at once with code 1.
    async fn shut_down_unless_signalled_again(self, signals: &mut Signals, code: i32) -> i32 {
        info!("shutting down");
        let pid_file = self.pid_file.clone();
        tokio::select! {
            _ = self.shut_down() => {}
            _ = stop_requested(&mut signals.terminate, &mut signals.interrupt) => {
                warn!("second signal; exiting at once");
                remove_pid_file(&pid_file);
                return 1;
            }
        }
        remove_pid_file(&pid_file);
        info!("navigator stopped");
        log_shipping::shutdown().await;
        code
    }

    /// Shuts down in this order: stop accepting, let requests finish (up
    /// to `server.limits.shutdown_timeout`), close WebSockets, run the
    /// server stop hooks, stop all tenants in parallel, then stop the
    /// managed processes in reverse start order.
    async fn shut_down(self) {
        let snapshot = self.app.snapshot();

        self.acceptor.stop().await;
        if let Some(tls) = self.tls {
            tls.acceptor.stop().await;
        }
        self.connections
            .close_all(snapshot.config.server.limits.shutdown_timeout.get())
            .await;

        close_websockets(&self.app).await;

        // A failed stop hook is logged inside and does not stop the
        // shutdown.
        let _ = hooks::run_server_hooks(&self.app, ServerEvent::Stop).await;

        self.app.supervisor.shutdown().await;
        cgroup::remove_navigator_cgroup();
        info!("all tenants stopped");

        self.managed.stop_all().await;
    }
}

/// How long shutdown waits for WebSocket clients to take their close
/// frame before their connections are dropped.
const CABLE_CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Closes the built-in cable's WebSocket connections with status 1001
/// (going away) at shutdown.
async fn close_websockets(app: &App) {
    app.cable.close_all(CABLE_CLOSE_GRACE).await;
}

fn write_pid_file(path: &Path) {
    // A fresh checkout has no `tmp/` for the demo's `tmp/navigator.pid`, so
    // create missing directories as for log files.
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        && let Err(error) = std::fs::create_dir_all(parent)
    {
        warn!(pid_file = %path.display(), error = %error, "cannot create the pid file's directory");
        return;
    }
    if let Err(error) = std::fs::write(path, format!("{}\n", std::process::id())) {
        warn!(pid_file = %path.display(), error = %error, "cannot write the pid file");
    }
}

fn remove_pid_file(path: &Path) {
    let ours = std::fs::read_to_string(path)
        .ok()
        .is_some_and(|text| text.trim() == std::process::id().to_string());
    if ours {
        let _ = std::fs::remove_file(path);
    }
}
