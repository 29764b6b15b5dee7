//! A real browser on navigator's pages: headless Chromium, driven by
//! chromedriver over the WebDriver HTTP protocol, renders the status page
//! while tenants run, and follows the maintenance page's automatic
//! refresh to a tenant that was still booting.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::browser::{Driver, Session};
use support::{Navigator, Showcase, write_public_tree};

/// Reads the width and height from a PNG's IHDR chunk, after checking the
/// signature.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert!(bytes.len() > 33, "PNG too short: {} bytes", bytes.len());
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    assert_eq!(&bytes[12..16], b"IHDR");
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    (width, height)
}

#[test]
fn status_page_in_chromium() {
    if support::skip_without("chromium") || support::skip_without("chromedriver") {
        return;
    }
    let showcase = Showcase {
        events: 3,
        extra:
            "\n[[managed_processes]]\nname = \"sleeper\"\ncommand = \"sleep\"\nargs = [\"300\"]\n"
                .into(),
        ..Showcase::default()
    };
    let navigator = support::start_showcase(&showcase);
    for path in [
        "/showcase/2025/boston/april/",
        "/showcase/2025/boston/medal-ball/",
    ] {
        assert_eq!(navigator.get(path).status, 200);
    }

    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let browser = Session::new(&driver, profile.path());
    browser.open(&format!("http://{}/_navigator/", navigator.address));

    let rows = browser.execute(
        "return Array.from(document.querySelectorAll('#tenants tr[data-tenant]'))\
         .map(row => [row.dataset.tenant, row.querySelector('.state').textContent]);",
    );
    assert_eq!(
        rows,
        json!([
            ["2025/boston/april", "running"],
            ["2025/boston/medal-ball", "running"],
            ["2025/boston/october", "stopped"],
            ["showcase", "stopped"],
        ])
    );
    let summary = browser.execute("return document.getElementById('summary').textContent;");
    assert_eq!(summary, "2 of 4 tenants running");
    let process = browser.execute(
        "return document.querySelector('#processes tr[data-process=\"sleeper\"] .state').textContent;",
    );
    assert_eq!(process, "running");
    // The inline style applied: running states are green.
    let color = browser.execute(
        "return getComputedStyle(document.querySelector('#tenants .state.running')).color;",
    );
    assert_eq!(color, "rgb(23, 112, 42)");

    let png = browser.screenshot();
    let path = navigator.path("status-page.png");
    std::fs::write(&path, &png).unwrap();
    let (width, height) = png_size(&std::fs::read(&path).unwrap());
    assert!(width > 0, "{width}x{height}");
    assert!(height > 0, "{width}x{height}");
    assert!(std::fs::metadata(&path).unwrap().len() > 1000);
}

#[test]
fn maintenance_page_refreshes_to_tenant() {
    if support::skip_without("chromium") || support::skip_without("chromedriver") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write_public_tree(dir.path());
    // Without a 503.html, the built-in page with its refresh is used.
    std::fs::remove_file(dir.path().join("public/503.html")).unwrap();
    let showcase = Showcase {
        events: 1,
        startup_timeout: "1s",
        tenant_env: vec![("DEMO_BOOT_DELAY_MS".into(), "3000".into())],
        ..Showcase::default()
    };
    let navigator = Navigator::start_in(dir, &showcase.toml(), &[]);

    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let browser = Session::new(&driver, profile.path());
    browser.open(&format!(
        "http://{}/showcase/2025/boston/april/",
        navigator.address
    ));
    let first = browser.execute("return document.documentElement.outerHTML;");
    let first = first.as_str().unwrap();
    assert!(first.contains("http-equiv=\"refresh\""), "{first}");
    assert!(
        first.contains("Starting up or under maintenance"),
        "{first}"
    );

    // The page reloads itself; the test only watches.
    let mut title = Value::Null;
    let arrived = support::eventually(Duration::from_secs(60), || {
        title = browser.execute("return document.title;");
        title == "boston (2025/boston/april)"
    });
    assert!(arrived, "the page never showed the tenant; title {title}");
    let body = browser.execute("return document.body.innerText;");
    assert!(
        body.as_str()
            .unwrap()
            .contains("Path: /showcase/2025/boston/april/"),
        "{body}"
    );
    let served =
        navigator.logs.count("answer=\"maintenance\"") + navigator.logs.count("answer=maintenance");
    assert!(served >= 1, "no maintenance answer logged");
}
