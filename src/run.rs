//! The server's lifecycle: load the config, listen, serve, reload on
//! SIGHUP, and shut down on SIGTERM or SIGINT.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::app::App;
use crate::compile::{self, Snapshot};
use crate::fly;
use crate::logging::{self, LogControl};
use crate::server;

/// Runs navigator with `config_path` until it is told to stop. Returns the
/// process exit code: 0 after a clean shutdown, 1 on a runtime failure, 2
/// when the config is invalid.
pub async fn run(config_path: PathBuf) -> i32 {
    let log = Arc::new(logging::init(Default::default()));
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
    log.set_format(snapshot.config.logging.format);
    info!(
        config = %config_path.display(),
        tenants = snapshot.tenants.len(),
        version = env!("CARGO_PKG_VERSION"),
        "navigator starting"
    );

    let pid_file = snapshot.config.server.pid_file.clone();
    write_pid_file(&pid_file);

    // TODO: managed processes and server start hooks run here, before the
    // listener opens.

    let listen = snapshot.config.server.listen.clone();
    let listener = match server::bind(&listen).await {
        Ok(listener) => listener,
        Err(error) => {
            error!(listen = %listen, error = %error, "cannot listen");
            remove_pid_file(&pid_file);
            return 1;
        }
    };

    let app = App::new(config_path.clone(), snapshot);
    let (stop_sender, stop_receiver) = watch::channel(false);
    let server_task = tokio::spawn(server::serve(app.clone(), listener, false, stop_receiver));
    tokio::spawn(app.supervisor.clone().run_idle_reaper());
    install_hook_reload(&app, &log);
    tokio::spawn(fly::idle::run_monitor(app.clone()));

    // TODO: server ready hooks run here in the background.

    let code = wait_for_signals(&app, &log).await;

    info!("shutting down");
    stop_sender.send_replace(true);
    let second_signal = async {
        if let Ok(mut terminate) = signal(SignalKind::terminate()) {
            terminate.recv().await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = async {
            let _ = server_task.await;
            app.supervisor.shutdown().await;
        } => {}
        _ = second_signal => {
            warn!("second signal; exiting at once");
            remove_pid_file(&pid_file);
            return 1;
        }
        _ = tokio::signal::ctrl_c() => {
            warn!("second signal; exiting at once");
            remove_pid_file(&pid_file);
            return 1;
        }
    }
    remove_pid_file(&pid_file);
    info!("navigator stopped");
    code
}

async fn wait_for_signals(app: &Arc<App>, log: &LogControl) -> i32 {
    let (mut terminate, mut hangup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(terminate), Ok(hangup)) => (terminate, hangup),
        (Err(error), _) | (_, Err(error)) => {
            error!(error = %error, "cannot install signal handlers");
            return 1;
        }
    };
    loop {
        tokio::select! {
            _ = terminate.recv() => return 0,
            _ = tokio::signal::ctrl_c() => return 0,
            _ = hangup.recv() => reload(app, log),
        }
    }
}

/// Loads the config file again and swaps it in; an invalid file is logged
/// and the running config stays.
pub fn reload(app: &App, log: &LogControl) {
    reload_file(app, log, &app.config_path);
}

/// Loads `path` and swaps it in, as [`reload`] does with the config file.
///
/// NOTE: `app.config_path` stays as it was, so a later SIGHUP reads the
/// original file again even after a hook reloaded from another one.
pub fn reload_file(app: &App, log: &LogControl, path: &Path) {
    match compile::load_snapshot(path) {
        Ok(snapshot) => {
            log.set_format(snapshot.config.logging.format);
            apply_reload(app, snapshot, path);
        }
        Err(errors) => {
            for error in &errors.0 {
                error!(config = %path.display(), error = %error, "reload rejected; keeping the running config");
            }
        }
    }
}

fn apply_reload(app: &App, snapshot: Arc<Snapshot>, path: &Path) {
    let tenants = snapshot.tenants.len();
    app.install(snapshot);
    info!(config = %path.display(), tenants, "reload applied");
}

/// Lets hooks with `reload_config` reload. The closure keeps only a weak
/// reference to the app, so it does not keep the app alive.
fn install_hook_reload(app: &Arc<App>, log: &Arc<LogControl>) {
    let weak = Arc::downgrade(app);
    let log = log.clone();
    app.fly.idle.set_reload(Box::new(move |path| {
        if let Some(app) = weak.upgrade() {
            reload_file(&app, &log, path);
        }
    }));
}

fn write_pid_file(path: &Path) {
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
