//! The command line: `check`, `convert`, config errors at startup, and
//! `--version`.

mod support;

use std::process::Command;

use support::{NAVIGATOR, Showcase};

fn run(args: &[&str], dir: &std::path::Path) -> (i32, String, String) {
    let output = Command::new(NAVIGATOR)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn broken_config_refused_with_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("broken.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = 3000\n\n[applications.pools]\nmax_sise = 4\n",
    )
    .unwrap();
    let (code, _, stderr) = run(&["--config", config.to_str().unwrap()], dir.path());
    assert_eq!(code, 2);
    assert!(stderr.contains("broken.toml:5:1"), "{stderr}");
    assert!(stderr.contains("applications.pools.max_sise"), "{stderr}");
    assert!(stderr.contains("did you mean `max_size`?"), "{stderr}");
}

#[test]
fn invalid_regex_refused_by_check() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nav.yml");
    std::fs::write(
        &config,
        "server:\n  listen: 3000\nroutes:\n  fly:\n    replay:\n    - path: ^/showcase/(2025\n      region: syd\n",
    )
    .unwrap();
    let (code, _, stderr) = run(&["check", config.to_str().unwrap()], dir.path());
    assert_eq!(code, 2);
    assert!(stderr.contains("nav.yml:6:"), "{stderr}");
    assert!(stderr.contains("routes.fly.replay[0].path"), "{stderr}");
    assert!(stderr.contains("invalid regex"), "{stderr}");
}

#[test]
fn unmatchable_tenant_path_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nav.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = 3000\n\n[applications.framework]\ncommand = \"true\"\n\n[[applications.tenants]]\npath = \"/showcase/2025/boston/\"\n\n\
         [[applications.tenants]]\npath = \"/showcase/../admin/\"\n\n\
         [[applications.tenants]]\npath = \"/showcase//2026/\"\n",
    )
    .unwrap();
    let (code, _, stderr) = run(&["check", config.to_str().unwrap()], dir.path());
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("applications.tenants[1].path"), "{stderr}");
    assert!(
        stderr.contains("\"/showcase/../admin/\" never matches"),
        "{stderr}"
    );
    assert!(stderr.contains("applications.tenants[2].path"), "{stderr}");
    assert!(
        stderr.contains("write it as \"/showcase/2026/\""),
        "{stderr}"
    );
    assert!(!stderr.contains("applications.tenants[0]"), "{stderr}");
}

#[test]
fn empty_tenant_command_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nav.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = 3000\n\n[applications.framework]\ncommand = \"${NAVIGATOR_BIN}\"\n\n\
         [[applications.tenants]]\npath = \"/showcase/2025/boston/\"\n",
    )
    .unwrap();
    let output = Command::new(NAVIGATOR)
        .args(["check", config.to_str().unwrap()])
        .env("NAVIGATOR_BIN", "")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("applications.framework.command"),
        "{stderr}"
    );
    assert!(stderr.contains("is empty"), "{stderr}");
}

#[test]
fn check_summarizes_generated_showcase() {
    let dir = tempfile::tempdir().unwrap();
    let showcase = Showcase {
        events: 320,
        ..Showcase::default()
    };
    let config = dir.path().join("showcase.toml");
    support::write_config(&config, &showcase.toml(), dir.path());
    let (code, stdout, stderr) = run(&["check", config.to_str().unwrap()], dir.path());
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("tenants            321"), "{stdout}");
    assert!(
        stdout.contains("warning: server.static.public_dir"),
        "{stdout}"
    );
}

#[test]
fn convert_yaml_gives_loadable_toml() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = dir.path().join("navigator.yml");
    std::fs::write(
        &yaml,
        r#"server:
  listen: 9999
  root_path: /showcase
applications:
  framework:
    command: bin/rails
    args: [server, -p, "${port}"]
  env:
    DATABASE_URL: sqlite3:///data/db/${database}.sqlite3
    RAILS_MAX_THREADS: 3
  tenants:
  - path: /showcase/2025/boston/
    var:
      database: 2025-boston
routes:
  fly:
    replay:
    - path: ^/showcase/.+\.pdf$
      app: smooth-pdf
      status: 307
"#,
    )
    .unwrap();
    let (code, stdout, stderr) = run(&["convert", yaml.to_str().unwrap()], dir.path());
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("${database}"), "templates kept:\n{stdout}");
    let toml = dir.path().join("converted.toml");
    std::fs::write(&toml, &stdout).unwrap();
    let (code, checked, stderr) = run(&["check", toml.to_str().unwrap()], dir.path());
    assert_eq!(code, 0, "{stderr}\n{stdout}");
    assert!(checked.contains("tenants            1"), "{checked}");
    assert!(checked.contains("fly replay rules   1"), "{checked}");
}

#[test]
fn version_and_help() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, _) = run(&["--version"], dir.path());
    assert_eq!(code, 0);
    assert!(stdout.starts_with("navigator "), "{stdout}");
    let (code, stdout, _) = run(&["--help"], dir.path());
    assert_eq!(code, 0);
    assert!(stdout.contains("check"), "{stdout}");
}

#[test]
fn unknown_option_is_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, _) = run(&["--no-such-option"], dir.path());
    assert_eq!(code, 2);
}

#[test]
fn shipped_configs_pass_check() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for config in [
        "config/showcase.toml",
        "examples/puma.toml",
        "config/navigator-maintenance.toml",
    ] {
        let (code, stdout, stderr) = run(&["check", config], root);
        assert_eq!(code, 0, "{config}: {stderr}{stdout}");
    }
}

#[test]
fn reload_rejects_stale_pid_file() {
    // The pid in a stale pid file may now belong to another program, which
    // SIGHUP would terminate.
    let dir = tempfile::tempdir().unwrap();
    let mut sleeper = Command::new("sleep").arg("100").spawn().unwrap();
    let pid_file = dir.path().join("navigator.pid");
    std::fs::write(&pid_file, format!("{}\n", sleeper.id())).unwrap();
    let (code, _, stderr) = run(
        &["reload", "--pid-file", pid_file.to_str().unwrap()],
        dir.path(),
    );
    std::thread::sleep(std::time::Duration::from_millis(200));
    let still_running = matches!(sleeper.try_wait(), Ok(None));
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("not navigator"), "{stderr}");
    assert!(still_running, "the unrelated process was signalled");
}

#[test]
fn check_warns_public_root_prefix() {
    // Entries ending in `/` are prefixes, so `/` makes every path public.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("htpasswd"), "admin:secret\n").unwrap();
    let config = dir.path().join("nav.toml");
    std::fs::write(
        &config,
        "[auth]\nenabled = true\nhtpasswd = \"htpasswd\"\npublic_paths = [\"/assets/\", \"/\"]\n",
    )
    .unwrap();
    let (code, stdout, stderr) = run(&["check", config.to_str().unwrap()], dir.path());
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("warning: auth.public_paths[1]: \"/\" is a prefix of every path"),
        "{stdout}"
    );
}
