//! Helpers shared by the fuzz targets.

use std::path::Path;

use navigator::compile::Snapshot;
use navigator::config::source::Format;

/// The environment the config targets expand `${VAR}` from: a fixed set,
/// so a run does not depend on the machine's variables.
pub fn environment(name: &str) -> Option<String> {
    match name {
        "HOME" => Some("/home/fuzz".into()),
        "FLY_APP_NAME" => Some("smooth".into()),
        "FLY_REGION" => Some("iad".into()),
        "PORT" => Some("3000".into()),
        _ => None,
    }
}

/// Loads `text` as a config in `format` and compiles what loads. Returns
/// the snapshot when both steps succeed. Neither step may panic, whatever
/// the text; errors are the expected answer to most inputs.
pub fn load_and_compile(text: &str, format: Format) -> Option<Snapshot> {
    let file = match format {
        Format::Toml => Path::new("/fuzz/navigator.toml"),
        Format::Yaml => Path::new("/fuzz/navigator.yml"),
    };
    let loaded = navigator::config::load_str(text, format, file, &environment).ok()?;
    Snapshot::compile(loaded, &environment).ok()
}
