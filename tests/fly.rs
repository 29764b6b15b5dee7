//! Fly-Replay across regions and apps, end to end: navigators for two
//! regions of the Showcase app (iad and syd, each serving its own events
//! and replaying the other's) and a PDF appliance app, behind an emulator
//! of Fly's proxy that carries out replay answers.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use support::fly::{Delivery, ENTRY_REGION_HEADER, FlyNetwork, FlyProxy, Machine};
use support::{HttpResponse, Navigator, Showcase, http_request, write_public_tree};

const APP: &str = "smooth";
const PDF_APP: &str = "smooth-pdf";
const TWO_MIB: usize = 2 * 1024 * 1024;

/// One region's share of the deployment.
struct Region {
    name: &'static str,
    /// Event scopes (`year/studio/event`) served here.
    events: &'static [&'static str],
    /// The other region, whose events and demo are replayed there.
    other: &'static str,
    /// Studio alternation of the other region's 2025 events.
    other_studios: &'static str,
}

const IAD: Region = Region {
    name: "iad",
    events: &["2025/raleigh/disney", "2025/boston/april"],
    other: "syd",
    other_studios: "adelaide|hornsby|perth|sydney",
};

const SYD: Region = Region {
    name: "syd",
    events: &["2025/adelaide/adelaide-combined", "2025/sydney/spring"],
    other: "iad",
    other_studios: "boston|raleigh",
};

/// A Showcase-shaped region config: its events as tenants, a demo tenant,
/// and replay rules in the order the Showcase generator writes them (the
/// PDF appliance first, then regions, then studios by year). Every region
/// also replays `2025/barcelona` to ams, a region without machines, and
/// `2025/pingpong` to the other region, which replays it back.
fn region_config(region: &Region, resolve: &[(String, SocketAddr)]) -> String {
    let mut extra = String::new();
    for scope in region.events {
        let database = scope.replace('/', "-");
        extra.push_str(&format!(
            "\n[[applications.tenants]]\npath = \"/showcase/{scope}/\"\nvar = {{ database = \"{database}\" }}\nenv = {{ RAILS_APP_OWNER = \"{owner}\", RAILS_APP_SCOPE = \"{scope}\" }}\n",
            owner = scope.split('/').nth(1).unwrap_or("x"),
        ));
    }
    let demo = format!("regions/{}/demo", region.name);
    extra.push_str(&format!(
        "\n[[applications.tenants]]\npath = \"/showcase/{demo}/\"\nvar = {{ database = \"demo-{name}\" }}\nenv = {{ RAILS_APP_OWNER = \"Demo\", RAILS_APP_SCOPE = \"{demo}\" }}\n",
        name = region.name,
    ));

    extra.push_str("\n[routes.fly]\ninternal_port = 9999\n\n[routes.fly.resolve]\n");
    for (host, address) in resolve {
        extra.push_str(&format!("\"{host}\" = \"{address}\"\n"));
    }
    let rules = [
        (
            r"^/showcase/.+\.pdf$".to_string(),
            format!("app = \"{PDF_APP}\""),
        ),
        (
            r"^/showcase/.+\.xlsx$".to_string(),
            format!("app = \"{PDF_APP}\""),
        ),
        (
            format!("^/showcase/regions/{}/.+$", region.other),
            format!("region = \"{}\"", region.other),
        ),
        (
            format!("^/showcase/(?:2025)/(?:{})/.+$", region.other_studios),
            format!("region = \"{}\"", region.other),
        ),
        (
            "^/showcase/(?:2025)/(?:barcelona)/.+$".to_string(),
            "region = \"ams\"".to_string(),
        ),
        (
            "^/showcase/(?:2025)/(?:pingpong)/.+$".to_string(),
            format!("region = \"{}\"", region.other),
        ),
    ];
    for (path, target) in rules {
        let path = path.replace('\\', "\\\\");
        extra.push_str(&format!(
            "\n[[routes.fly.replay]]\npath = \"{path}\"\n{target}\nstatus = 307\n"
        ));
    }
    Showcase {
        events: 0,
        extra,
        ..Showcase::default()
    }
    .toml()
}

fn fly_env(region: &str) -> Vec<(&'static str, String)> {
    vec![
        ("FLY_APP_NAME", APP.to_string()),
        ("FLY_REGION", region.to_string()),
        ("FLY_MACHINE_ID", machine_id(APP, region)),
    ]
}

fn machine_id(app: &str, region: &str) -> String {
    format!("{app}-{region}-0001")
}

fn start_region(region: &Region, resolve: &[(String, SocketAddr)]) -> Navigator {
    let dir = tempfile::tempdir().unwrap();
    write_public_tree(dir.path());
    let env = fly_env(region.name);
    let env: Vec<(&str, &str)> = env.iter().map(|(n, v)| (*n, v.as_str())).collect();
    Navigator::start_in(dir, &region_config(region, resolve), &env)
}

/// Starts the PDF appliance: one catch-all tenant under `/showcase/`.
fn start_appliance() -> Navigator {
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
pid_file = "@DIR@/navigator.pid"

[applications]
health_check = "/up"
startup_timeout = "20s"

[applications.framework]
command = "@NAVIGATOR@"
args = ["demo-tenant", "-p", "${{port}}"]
app_directory = "@DIR@"

[applications.pools]
start_port = {port}

[[applications.tenants]]
path = "/showcase/"
env = {{ RAILS_APP_OWNER = "{PDF_APP}" }}
"#,
        port = support::tenant_port_base(),
    );
    let dir = tempfile::tempdir().unwrap();
    Navigator::start_in(
        dir,
        &config,
        &[
            ("FLY_APP_NAME", PDF_APP),
            ("FLY_REGION", "iad"),
            ("FLY_MACHINE_ID", "smooth-pdf-iad-0001"),
        ],
    )
}

/// Two regions, the appliance, and the emulator in front of them; iad
/// pins `syd.smooth.internal` to the syd navigator.
struct World {
    iad: Navigator,
    syd: Navigator,
    pdf: Navigator,
    proxy: FlyProxy,
}

fn start_world() -> World {
    let pdf = start_appliance();
    let syd = start_region(&SYD, &[]);
    let iad = start_region(&IAD, &[("syd.smooth.internal".to_string(), syd.address)]);
    let proxy = FlyProxy::start(FlyNetwork {
        app: APP.into(),
        entry_region: "iad".into(),
        machines: vec![
            Machine::new(APP, "iad", &machine_id(APP, "iad"), Some(iad.address)),
            Machine::new(APP, "syd", &machine_id(APP, "syd"), Some(syd.address)),
            Machine::new(APP, "ams", &machine_id(APP, "ams"), None),
            Machine::new(PDF_APP, "iad", "smooth-pdf-iad-0001", Some(pdf.address)),
        ],
        default_timeout: Duration::from_secs(20),
    });
    World {
        iad,
        syd,
        pdf,
        proxy,
    }
}

fn json_via(proxy: &FlyProxy, entry: &str, path: &str) -> HttpResponse {
    http_request(
        proxy.address,
        "GET",
        path,
        &[("Accept", "application/json"), (ENTRY_REGION_HEADER, entry)],
        b"",
    )
}

/// Reads the parent process id of `pid` from `/proc`.
fn parent_pid(pid: u64) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = stat.rsplit(')').next().unwrap();
    after_name
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

fn machines(deliveries: &[Delivery]) -> Vec<String> {
    deliveries.iter().map(|d| d.machine.clone()).collect()
}

#[test]
fn other_region_events_replayed_from_either_entry() {
    let world = start_world();

    let response = json_via(
        &world.proxy,
        "iad",
        "/showcase/2025/adelaide/adelaide-combined/",
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert_eq!(body["scope"], "2025/adelaide/adelaide-combined");
    assert_eq!(
        parent_pid(body["pid"].as_u64().unwrap()),
        world.syd.child.id(),
        "answered by a tenant of the syd navigator"
    );
    assert_eq!(body["headers"]["x-navigator-retry"], "true");
    let source = body["headers"]["fly-replay-src"].as_str().unwrap();
    assert!(
        source.starts_with("instance=smooth-iad-0001;region=iad;t="),
        "{source}"
    );
    assert_eq!(
        machines(&world.proxy.deliveries()),
        ["smooth/iad/smooth-iad-0001", "smooth/syd/smooth-syd-0001"]
    );

    world.proxy.clear_deliveries();
    let response = json_via(&world.proxy, "syd", "/showcase/2025/raleigh/disney/heats");
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert_eq!(body["scope"], "2025/raleigh/disney");
    assert_eq!(body["path"], "/showcase/2025/raleigh/disney/heats");
    assert_eq!(
        parent_pid(body["pid"].as_u64().unwrap()),
        world.iad.child.id()
    );
    assert_eq!(
        machines(&world.proxy.deliveries()),
        ["smooth/syd/smooth-syd-0001", "smooth/iad/smooth-iad-0001"]
    );

    let response = json_via(&world.proxy, "iad", "/showcase/regions/syd/demo/");
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert_eq!(body["scope"], "regions/syd/demo");
    assert_eq!(
        parent_pid(body["pid"].as_u64().unwrap()),
        world.syd.child.id()
    );
}

#[test]
fn own_events_served_without_replay() {
    let world = start_world();
    let response = json_via(&world.proxy, "iad", "/showcase/2025/boston/april/");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["scope"], "2025/boston/april");
    assert_eq!(
        machines(&world.proxy.deliveries()),
        ["smooth/iad/smooth-iad-0001"]
    );
}

#[test]
fn pdf_and_xlsx_end_at_appliance() {
    let world = start_world();
    for (entry, path) in [
        ("iad", "/showcase/2025/raleigh/disney/heat-sheets.pdf"),
        ("syd", "/showcase/2025/raleigh/disney/heat-sheets.pdf"),
        (
            "iad",
            "/showcase/2025/adelaide/adelaide-combined/entries.xlsx",
        ),
    ] {
        world.proxy.clear_deliveries();
        let response = json_via(&world.proxy, entry, path);
        assert_eq!(response.status, 200, "{path}: {}", response.text());
        let body = response.json();
        assert_eq!(body["owner"], PDF_APP, "{path}");
        assert_eq!(body["path"], path);
        assert_eq!(
            parent_pid(body["pid"].as_u64().unwrap()),
            world.pdf.child.id()
        );

        let deliveries = world.proxy.deliveries();
        assert_eq!(deliveries.len(), 2, "{deliveries:?}");
        assert_eq!(deliveries[1].machine, "smooth-pdf/iad/smooth-pdf-iad-0001");
        assert_eq!(
            deliveries[1].header("x-navigator-retry"),
            None,
            "replays to another app carry no transform"
        );
    }
}

#[test]
fn down_region_gives_maintenance_page_not_loop() {
    let world = start_world();

    let response = json_via(&world.proxy, "iad", "/showcase/2025/barcelona/april/");
    assert_eq!(response.status, 503, "{}", response.text());
    assert!(
        response.text().contains("maintenance page"),
        "{}",
        response.text()
    );
    assert!(response.header("retry-after").is_some());
    let deliveries = world.proxy.deliveries();
    assert_eq!(
        machines(&deliveries),
        [
            "smooth/iad/smooth-iad-0001",
            "smooth/ams/smooth-ams-0001",
            "smooth/iad/smooth-iad-0001"
        ],
        "one replay, one return to the source, then nothing"
    );
    assert!(deliveries[2].header("fly-replay-failed").is_some());

    // Rules that send a path back and forth stop at the second region.
    world.proxy.clear_deliveries();
    let response = json_via(&world.proxy, "iad", "/showcase/2025/pingpong/final/");
    assert_eq!(response.status, 503, "{}", response.text());
    assert!(response.text().contains("maintenance page"));
    assert_eq!(
        machines(&world.proxy.deliveries()),
        ["smooth/iad/smooth-iad-0001", "smooth/syd/smooth-syd-0001"]
    );
}

#[test]
fn stopped_region_returns_to_source_with_maintenance_page() {
    let mut world = start_world();
    assert_eq!(world.syd.stop(), Some(0));

    let response = json_via(
        &world.proxy,
        "iad",
        "/showcase/2025/adelaide/adelaide-combined/",
    );
    assert_eq!(response.status, 503, "{}", response.text());
    assert!(response.text().contains("maintenance page"));
    let deliveries = world.proxy.deliveries();
    assert_eq!(deliveries.len(), 3, "{deliveries:?}");
    assert_eq!(deliveries[1].status, None, "syd did not answer");
    assert!(deliveries[2].header("fly-replay-failed").is_some());
}

#[test]
fn large_upload_proxied_over_private_network() {
    let world = start_world();
    let upload = vec![b'x'; TWO_MIB];
    let response = http_request(
        world.proxy.address,
        "POST",
        "/showcase/2025/adelaide/adelaide-combined/entries?draft=1",
        &[
            ("Accept", "application/json"),
            ("Content-Type", "application/octet-stream"),
            (ENTRY_REGION_HEADER, "iad"),
        ],
        &upload,
    );

    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert_eq!(body["body_length"], TWO_MIB as u64);
    assert_eq!(body["scope"], "2025/adelaide/adelaide-combined");
    assert_eq!(
        body["path"],
        "/showcase/2025/adelaide/adelaide-combined/entries"
    );
    assert_eq!(body["query"], "draft=1");
    assert_eq!(
        body["headers"]["host"], "localhost",
        "Host stays the request's"
    );
    assert_eq!(body["headers"]["x-navigator-retry"], "true");
    assert_eq!(
        parent_pid(body["pid"].as_u64().unwrap()),
        world.syd.child.id()
    );

    assert_eq!(
        machines(&world.proxy.deliveries()),
        ["smooth/iad/smooth-iad-0001"],
        "no replay: iad proxied the upload itself"
    );
    // The access record is written once the body has gone out, which can be
    // after the client has read it.
    assert!(
        world
            .iad
            .logs
            .wait_for(
                "http://syd.smooth.internal:9999/showcase/2025/adelaide/adelaide-combined/entries?draft=1",
                Duration::from_secs(10)
            )
            .is_some(),
        "the access log names the private-network target"
    );
}

#[test]
fn chunked_post_proxied_over_private_network() {
    let world = start_world();
    let request = b"POST /showcase/2025/adelaide/adelaide-combined/entries HTTP/1.1\r\n\
Host: localhost\r\nAccept: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let raw = support::raw_exchange(world.iad.address, request, Duration::from_secs(30));
    let response = support::parse_response(&raw, false).expect("a response");
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert_eq!(body["body_length"], 11);
    assert_eq!(body["scope"], "2025/adelaide/adelaide-combined");
}

#[test]
fn websocket_to_other_region_tunnelled() {
    let world = start_world();
    let mut stream = TcpStream::connect(world.proxy.address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
        .write_all(
            format!(
                "GET /showcase/2025/adelaide/adelaide-combined/cable HTTP/1.1\r\nHost: localhost\r\n\
                 Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{ENTRY_REGION_HEADER}: iad\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.read(&mut byte).unwrap(),
            1,
            "connection closed in the head"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");

    stream.write_all(b"through the tunnel").unwrap();
    let mut echoed = [0u8; 18];
    stream.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"through the tunnel");

    assert_eq!(
        machines(&world.proxy.deliveries()),
        ["smooth/iad/smooth-iad-0001"],
        "tunnelled by iad, not replayed"
    );
    assert!(
        world
            .syd
            .logs
            .wait_for(
                "GET /showcase/2025/adelaide/adelaide-combined/cable 101",
                Duration::from_secs(10)
            )
            .is_some(),
        "the syd tenant answered the upgrade"
    );
}

/// Worked examples of the iad config answering directly, without the
/// emulator (auth disabled).
#[test]
fn iad_conformance_rows() {
    let iad = start_region(&IAD, &[]);

    let authorization = "Basic anVkZ2U6YmNyeXB0LXNlY3JldA==";
    let response = iad.request(
        "GET",
        "/showcase/2025/adelaide/adelaide-combined/",
        &[("Authorization", authorization)],
        b"",
    );
    assert_eq!(response.status, 307);
    assert_eq!(
        response.header("content-type"),
        Some("application/vnd.fly.replay+json")
    );
    assert_eq!(
        response.text(),
        format!(
            r#"{{"region":"syd","timeout":"30s","fallback":"force_self","transform":{{"set_headers":[{{"name":"X-Navigator-Retry","value":"true"}},{{"name":"Authorization","value":"{authorization}"}}]}}}}"#
        )
    );
    assert_eq!(response.header("fly-replay"), None);

    let pdf = "/showcase/2025/raleigh/disney/heat-sheets.pdf";
    let response = iad.get(pdf);
    assert_eq!(response.status, 307);
    assert_eq!(
        response.header("content-type"),
        Some("application/vnd.fly.replay+json")
    );
    assert_eq!(response.text(), r#"{"app":"smooth-pdf"}"#);
    assert_eq!(response.header("fly-replay"), Some("app=smooth-pdf"));

    let response = iad.request("GET", pdf, &[("fly-replay-failed", "error=timeout")], b"");
    assert_eq!(response.status, 503);
    assert!(response.text().contains("maintenance page"));
    let response = iad.request("GET", pdf, &[("X-Navigator-Retry", "true")], b"");
    assert_eq!(response.status, 503);

    let response = iad.get("/showcase/regions/syd/demo/");
    assert_eq!(response.status, 307);
    assert_eq!(response.json()["region"], "syd");

    // The multi-event studio index needs a segment after the studio to
    // match, so it is served here (by the index tenant).
    let response = iad.request(
        "GET",
        "/showcase/2025/adelaide/",
        &[("Accept", "application/json")],
        b"",
    );
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["owner"], "Index");
}
