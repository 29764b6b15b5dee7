//! Config text shaped like a region config of the Showcase deployment,
//! shared by the benches.

// Each bench uses a part of this module.
#![allow(dead_code)]

pub const OTHER_REGIONS: [&str; 7] = ["ams", "dfw", "ewr", "nrt", "ord", "sjc", "syd"];
pub const YEARS: [&str; 5] = ["2022", "2023", "2024", "2025", "2026"];
const PREFIXES: [&str; 15] = [
    "spring", "north", "bay", "river", "lake", "harbor", "cedar", "maple", "grand", "silver",
    "golden", "royal", "coral", "summit", "valley",
];
const SUFFIXES: [&str; 5] = ["field", "ton", "wood", "ville", "port"];

/// Studio names: 75 made-up town names, 10 or 11 per other region.
pub fn studios() -> Vec<String> {
    PREFIXES
        .iter()
        .flat_map(|prefix| {
            SUFFIXES
                .iter()
                .map(move |suffix| format!("{prefix}{suffix}"))
        })
        .collect()
}

/// A TOML config with the rules in the order the Showcase generator
/// writes them.
pub fn replay_rules_toml() -> String {
    let mut toml = String::new();
    let mut rule = |path: String, target: String| {
        let path = path.replace('\\', "\\\\");
        toml.push_str(&format!(
            "[[routes.fly.replay]]\npath = \"{path}\"\n{target}\nstatus = 307\n\n"
        ));
    };
    rule(r"^/showcase/.+\.pdf$".into(), "app = \"smooth-pdf\"".into());
    rule(
        r"^/showcase/.+\.xlsx$".into(),
        "app = \"smooth-pdf\"".into(),
    );
    for region in OTHER_REGIONS {
        rule(
            format!("^/showcase/regions/{region}/.+$"),
            format!("region = \"{region}\""),
        );
    }
    let studios = studios();
    let per_region = studios.len().div_ceil(OTHER_REGIONS.len());
    for (index, region) in OTHER_REGIONS.iter().enumerate() {
        let own: Vec<&str> = studios
            .iter()
            .skip(index * per_region)
            .take(per_region)
            .map(String::as_str)
            .collect();
        for (year_index, year) in YEARS.iter().enumerate() {
            // Not every studio has an event every year.
            let names: Vec<&str> = own
                .iter()
                .copied()
                .filter(|name| (name.len() + year_index) % 3 != 0)
                .collect();
            if names.is_empty() {
                continue;
            }
            rule(
                format!("^/showcase/(?:{year})/(?:{})/.+$", names.join("|")),
                format!("region = \"{region}\""),
            );
        }
    }
    toml
}

/// The `[auth]` section of a region config: 21 public paths (prefixes,
/// exact paths and globs) and 13 auth patterns, most of them long
/// alternations of studio names or of studio/event pairs. `htpasswd`
/// names the password file.
pub fn auth_toml(htpasswd: &str) -> String {
    let studios = studios();
    let mut toml = format!(
        r#"[auth]
enabled = true
realm = "Showcase"
htpasswd = "{htpasswd}"
public_paths = [
    "/showcase/assets/", "/showcase/cable", "/showcase/demo/", "/showcase/docs/",
    "/showcase/events/console", "/showcase/password/", "/showcase/regions/",
    "/showcase/studios/", "/showcase/index_date", "/showcase/update_config",
    "/favicon.ico", "/robots.txt", "/up",
    "*.css", "*.gif", "*.ico", "*.jpg", "*.js", "*.png", "*.svg", "*.webp",
]

"#
    );
    let mut pattern = |regex: String| {
        let regex = regex.replace('\\', "\\\\");
        toml.push_str(&format!(
            "[[auth.auth_patterns]]\npattern = \"{regex}\"\naction = \"off\"\n\n"
        ));
    };
    let regions = OTHER_REGIONS.join("|");
    pattern("^/$".into());
    pattern(format!("^/showcase/regions/(?:{regions})/cable$"));
    pattern(format!("^/showcase/regions/(?:{regions})/demo/"));
    // Studio index pages of each year, and the public pages of events.
    for (index, year) in YEARS.iter().enumerate() {
        let names: Vec<&str> = studios
            .iter()
            .map(String::as_str)
            .filter(|name| (name.len() + index) % 4 != 0)
            .collect();
        pattern(format!("^/showcase/{year}/(?:{})/?$", names.join("|")));
        let events: Vec<String> = names
            .iter()
            .take(14)
            .map(|name| format!("{name}/spring\\-showcase"))
            .collect();
        pattern(format!(
            "^/showcase/{year}/(?:{})/public/",
            events.join("|")
        ));
    }
    toml
}
