//! Static files from `public_dir`, with the HTTP semantics that browsers
//! and caches rely on: validators, conditional requests, single byte
//! ranges and precompressed `.br` / `.gz` siblings.
//!
//! A request that matches no servable file gets `None`, so it continues
//! down the pipeline to a tenant. The lookup, the checks and the read of a
//! small body run in one `spawn_blocking` task, because each `tokio::fs`
//! call would be a separate trip to the blocking pool. Only a large body is
//! read afterwards, as a stream. Whole files up to 1 MiB are read at once
//! and kept in memory (see `cache`).

mod cache;
mod negotiate;
mod response;

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::header::HeaderValue;
use http::request::Parts;
use http::{Method, Response};
use tracing::{debug, warn};

use crate::body::Body;
use crate::config::schema::{CacheControl, Static};
use crate::config::units::Duration;

use response::{BodySource, Conditions, Outcome, redirect_to_directory};

/// The static file server, compiled from `server.static`. Cloning is cheap
/// and shares the settings.
#[derive(Debug, Clone)]
pub struct StaticFiles {
    settings: Arc<Settings>,
    /// Small files served lately; a reload starts with an empty one.
    cache: Arc<cache::FileCache>,
}

#[derive(Debug)]
struct Settings {
    /// `server.root_path` without a trailing slash; empty when unset.
    root_path: String,
    /// Absolute, but with symlinks unresolved.
    public_dir: PathBuf,
    /// `public_dir` with symlinks resolved, which every served file must be
    /// inside. It is resolved once, on first success, so a directory
    /// created after startup still works.
    // NOTE: retargeting a `public_dir` symlink at runtime takes effect only
    // with a new `StaticFiles` (a config reload); until then files under the
    // new target count as outside.
    real_public_dir: OnceLock<PathBuf>,
    /// Lowercase and without a leading dot; empty means any extension.
    allowed_extensions: Vec<String>,
    /// File names tried inside a directory (`index.html`).
    index_names: Vec<String>,
    /// Suffixes tried on extension-less paths (`.html`).
    suffixes: Vec<String>,
    normalize_trailing_slashes: bool,
    cache_control: CachePolicy,
}

/// `Cache-Control` values rendered once from the config.
#[derive(Debug)]
struct CachePolicy {
    /// Path prefixes with their header, longest prefix first.
    overrides: Vec<(String, HeaderValue)>,
    default: Option<HeaderValue>,
}

impl StaticFiles {
    /// Compiles the static file settings. `root_path` is `server.root_path`
    /// (`""` or e.g. `"/showcase"`).
    ///
    /// Returns `None` when no `public_dir` is configured (or it is empty).
    /// A relative `public_dir` resolves against the process's working
    /// directory now, so a later `chdir` does not move it.
    pub fn new(root_path: &str, config: &Static) -> Option<StaticFiles> {
        let configured = config
            .public_dir
            .as_deref()
            .filter(|dir| !dir.as_os_str().is_empty())?;
        let public_dir =
            std::path::absolute(configured).unwrap_or_else(|_| configured.to_path_buf());
        let real_public_dir = match std::fs::canonicalize(&public_dir) {
            Ok(real) => OnceLock::from(real),
            Err(error) => {
                warn!(
                    public_dir = %public_dir.display(),
                    %error,
                    "static public_dir cannot be resolved; no static file is served until it can"
                );
                OnceLock::new()
            }
        };

        let allowed_extensions = config
            .allowed_extensions
            .iter()
            .map(|ext| ext.trim_start_matches('.').to_ascii_lowercase())
            .filter(|ext| !ext.is_empty())
            .collect();
        let (suffixes, index_names) = config
            .try_files
            .iter()
            .filter(|entry| !entry.is_empty())
            .cloned()
            .partition(|entry| entry.starts_with('.'));

        Some(StaticFiles {
            settings: Arc::new(Settings {
                root_path: root_path.trim_end_matches('/').to_owned(),
                public_dir,
                real_public_dir,
                allowed_extensions,
                index_names,
                suffixes,
                normalize_trailing_slashes: config.normalize_trailing_slashes,
                cache_control: CachePolicy::new(&config.cache_control),
            }),
            cache: Arc::default(),
        })
    }

    /// Returns the absolute `public_dir`, with symlinks not resolved.
    pub fn public_dir(&self) -> &Path {
        &self.settings.public_dir
    }

    /// Serves a GET or HEAD request for `path` from a matching file, and
    /// returns `None` when no servable file matches so the request
    /// continues down the pipeline.
    ///
    /// `path` must be the output of [`crate::canonical::canonicalize`]; the
    /// query, method and headers come from `request`. The answer is 200,
    /// 206, 304, 412, 416, or 301 to add a trailing slash to a directory.
    ///
    /// A file that exists but cannot be read (permission denied, I/O error)
    /// is logged at `warn` and treated as missing, so the tenant still gets
    /// a chance to answer.
    pub async fn serve(&self, path: &str, request: &Parts) -> Option<Response<Body>> {
        let head = match request.method {
            Method::GET => false,
            Method::HEAD => true,
            _ => return None,
        };
        let relative = self.settings.relative_path(path);
        let file_path = relative.strip_prefix('/')?;
        if has_hidden_segment(file_path) {
            return None;
        }
        if let Some(response) = self.cache.get(path, request, head) {
            return Some(response);
        }

        let lookup = Lookup {
            settings: Arc::clone(&self.settings),
            candidate: self.settings.public_dir.join(file_path),
            directory_request: relative.ends_with('/'),
            conditions: Conditions::from_request(request, head),
            cache_control: self.settings.cache_control.for_path(path),
        };
        match tokio::task::spawn_blocking(move || lookup.run()).await {
            Ok(Some((Outcome::Respond(response), served))) => {
                if let (Some(served), BodySource::Bytes(bytes)) = (served, response.body()) {
                    let answer = (response.status(), response.headers(), bytes);
                    self.cache.insert(path, request, served, answer);
                }
                Some(response.map(BodySource::into_body))
            }
            Ok(Some((Outcome::AddTrailingSlash, _))) => {
                redirect_to_directory(path, request.uri.query())
            }
            Ok(None) => None,
            Err(error) => {
                warn!(path, %error, "static file lookup task failed");
                None
            }
        }
    }

    /// Returns the file that `serve` sends for a GET of `path`, or the
    /// directory it redirects to add a trailing slash. It runs the same
    /// lookup as `serve`, on the calling thread, so that `navigator
    /// routes` can name the file.
    pub fn locate(&self, path: &str) -> Option<PathBuf> {
        let relative = self.settings.relative_path(path);
        let file_path = relative.strip_prefix('/')?;
        if has_hidden_segment(file_path) {
            return None;
        }
        let request = http::Request::get("/").body(()).ok()?.into_parts().0;
        let lookup = Lookup {
            settings: Arc::clone(&self.settings),
            candidate: self.settings.public_dir.join(file_path),
            directory_request: relative.ends_with('/'),
            conditions: Conditions::from_request(&request, false),
            cache_control: None,
        };
        match lookup.locate()? {
            Located::File(_, path) => Some(path),
            Located::Directory => Some(lookup.candidate),
        }
    }

    /// Reads a whole file under `public_dir`, such as the maintenance page
    /// `/503.html`.
    ///
    /// `page` is a path relative to `public_dir` (a leading `/` is
    /// optional) and is not subject to `root_path` or `allowed_extensions`,
    /// because it comes from the config rather than a client. Returns
    /// `None` when the file is missing, unreadable, a dotfile, or outside
    /// `public_dir`.
    pub async fn read_page(&self, page: &str) -> Option<Bytes> {
        let file_path = page.strip_prefix('/').unwrap_or(page);
        if file_path.is_empty() || has_hidden_segment(file_path) {
            return None;
        }
        let settings = Arc::clone(&self.settings);
        let path = settings.public_dir.join(file_path);
        let read = tokio::task::spawn_blocking(move || {
            let Probe::File(mut opened) = settings.probe(&path) else {
                return None;
            };
            let len = opened.metadata.len();
            read_exact_len(&mut opened.file, len, &path).map(Bytes::from)
        });
        match read.await {
            Ok(bytes) => bytes,
            Err(error) => {
                warn!(page, %error, "static page read task failed");
                None
            }
        }
    }
}

impl Settings {
    /// Strips `root_path` from a URL path that lies under it; other paths
    /// map onto `public_dir` unchanged.
    fn relative_path<'a>(&self, path: &'a str) -> &'a str {
        if self.root_path.is_empty() {
            return path;
        }
        path.strip_prefix(self.root_path.as_str())
            .filter(|rest| rest.starts_with('/'))
            .unwrap_or(path)
    }

    fn real_public_dir(&self) -> Option<&Path> {
        if let Some(real) = self.real_public_dir.get() {
            return Some(real);
        }
        let real = std::fs::canonicalize(&self.public_dir).ok()?;
        Some(self.real_public_dir.get_or_init(|| real))
    }

    fn extension_allowed(&self, path: &Path) -> bool {
        if self.allowed_extensions.is_empty() {
            return true;
        }
        let Some(extension) = path.extension().and_then(|ext| ext.to_str()) else {
            return false;
        };
        self.allowed_extensions
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(extension))
    }

    /// Resolves `path` and opens it if it is a regular file whose real path
    /// lies inside the real `public_dir` with no hidden segment.
    ///
    /// The file is opened by its resolved path and checked with `fstat` on
    /// the open handle, so the file that was checked is the file that is
    /// read.
    fn probe(&self, path: &Path) -> Probe {
        let real = match std::fs::canonicalize(path) {
            Ok(real) => real,
            Err(error) => {
                log_unexpected(path, &error);
                return Probe::Missing;
            }
        };
        let Some(root) = self.real_public_dir() else {
            return Probe::Missing;
        };
        let Ok(inside) = real.strip_prefix(root) else {
            debug!(
                path = %path.display(),
                real = %real.display(),
                "static file resolves outside public_dir; not served"
            );
            return Probe::Missing;
        };
        if inside.components().any(is_hidden_component) {
            return Probe::Missing;
        }

        // O_NONBLOCK makes opening a FIFO return at once instead of waiting
        // for a writer; it has no effect on regular files.
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&real)
        {
            Ok(file) => file,
            Err(error) => {
                log_unexpected(path, &error);
                return Probe::Missing;
            }
        };
        let metadata = match file.metadata() {
            Ok(metadata) => metadata,
            Err(error) => {
                log_unexpected(path, &error);
                return Probe::Missing;
            }
        };
        if metadata.is_dir() {
            Probe::Directory
        } else if metadata.is_file() {
            Probe::File(OpenedFile { file, metadata })
        } else {
            Probe::Missing
        }
    }
}

impl CachePolicy {
    fn new(config: &CacheControl) -> CachePolicy {
        let mut overrides: Vec<(String, HeaderValue)> = config
            .overrides
            .iter()
            .filter_map(|entry| {
                let value = cache_control_value(entry.max_age, entry.immutable)?;
                Some((entry.path.clone(), value))
            })
            .collect();
        overrides.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        CachePolicy {
            overrides,
            default: config
                .default
                .and_then(|max_age| cache_control_value(max_age, config.default_immutable)),
        }
    }

    /// Returns the header for the longest override whose prefix starts
    /// `path` (a plain string prefix, so `/assets` also matches
    /// `/assets-old/`), else the default, else `None`.
    fn for_path(&self, path: &str) -> Option<HeaderValue> {
        self.overrides
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map(|(_, value)| value)
            .or(self.default.as_ref())
            .cloned()
    }
}

/// Renders `public, max-age=N` with `, immutable` when asked.
///
/// A zero max-age (or one under a second) renders as
/// `public, max-age=0, must-revalidate` and drops `immutable`: the file
/// may be stored but must be revalidated before every use, which the
/// validators make cheap.
fn cache_control_value(max_age: Duration, immutable: bool) -> Option<HeaderValue> {
    let secs = max_age.get().as_secs();
    let text = if secs == 0 {
        "public, max-age=0, must-revalidate".to_owned()
    } else if immutable {
        format!("public, max-age={secs}, immutable")
    } else {
        format!("public, max-age={secs}")
    };
    HeaderValue::try_from(text).ok()
}

/// Returns whether any segment of a `/`-separated path starts with `.`,
/// which rules out dotfiles, `.git` and `.`/`..`.
fn has_hidden_segment(path: &str) -> bool {
    path.split('/').any(|segment| segment.starts_with('.'))
}

fn is_hidden_component(component: Component<'_>) -> bool {
    match component {
        Component::Normal(name) => name.as_encoded_bytes().starts_with(b"."),
        Component::CurDir | Component::ParentDir => true,
        Component::RootDir | Component::Prefix(_) => false,
    }
}

/// Logs a file system error unless it only means "no such file".
// NOTE: an error that is not about the file, such as EMFILE when the
// file-descriptor table is full, also makes an existing file count as not
// found, so the request falls through to the later steps (often a 404).
fn log_unexpected(path: &Path, error: &io::Error) {
    let expected = matches!(
        error.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    ) || matches!(error.raw_os_error(), Some(libc::ENAMETOOLONG | libc::ELOOP));
    if !expected {
        warn!(
            path = %path.display(),
            %error,
            "cannot read static file; treating it as not found"
        );
    }
}

fn is_regular_file(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|metadata| metadata.is_file())
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Reads exactly `len` bytes from the current position of `file`; a file
/// that shrank meanwhile is logged and yields `None`.
fn read_exact_len(file: &mut File, len: u64, path: &Path) -> Option<Vec<u8>> {
    let mut buffer = Vec::with_capacity(usize::try_from(len).ok()?);
    if let Err(error) = file.take(len).read_to_end(&mut buffer) {
        warn!(path = %path.display(), %error, "reading static file failed");
        return None;
    }
    if buffer.len() as u64 != len {
        warn!(
            path = %path.display(),
            expected = len,
            read = buffer.len(),
            "static file shrank while being read"
        );
        return None;
    }
    Some(buffer)
}

enum Probe {
    File(OpenedFile),
    Directory,
    Missing,
}

struct OpenedFile {
    file: File,
    /// From `fstat` on `file`.
    metadata: Metadata,
}

/// The result of looking up a request path.
#[expect(
    clippy::large_enum_variant,
    reason = "lives for one call; boxing would allocate on every request"
)]
enum Located {
    /// A servable file and the path it was requested by, which names its
    /// content type and its precompressed siblings.
    File(OpenedFile, PathBuf),
    /// A directory with an index file, requested without the trailing
    /// slash.
    Directory,
}

/// The file system half of `serve`, run on the blocking pool.
struct Lookup {
    settings: Arc<Settings>,
    /// `public_dir` joined with the request path.
    candidate: PathBuf,
    directory_request: bool,
    conditions: Conditions,
    cache_control: Option<HeaderValue>,
}

impl Lookup {
    /// Returns the outcome, and the file it served when the response may
    /// be cached.
    fn run(self) -> Option<(Outcome, Option<cache::Served>)> {
        let (opened, requested) = match self.locate()? {
            Located::File(opened, requested) => (opened, requested),
            Located::Directory => return Some((Outcome::AddTrailingSlash, None)),
        };
        let representation = self.choose_representation(opened, requested)?;
        let served = representation.served();
        let response = self.respond(representation)?;
        Some((Outcome::Respond(response), served))
    }

    /// Applies `try_files`: index names for a path ending in `/`; else the
    /// exact file, then the suffixes on an extension-less path, then a
    /// redirect for a directory that contains an index file.
    fn locate(&self) -> Option<Located> {
        let settings = &self.settings;
        if self.directory_request {
            return settings.index_names.iter().find_map(|name| {
                let path = self.candidate.join(name);
                let opened = self.servable(&path)?;
                Some(Located::File(opened, path))
            });
        }

        let is_directory = match settings.probe(&self.candidate) {
            Probe::File(opened) if settings.extension_allowed(&self.candidate) => {
                return Some(Located::File(opened, self.candidate.clone()));
            }
            Probe::Directory => true,
            Probe::File(_) | Probe::Missing => false,
        };

        if self.candidate.extension().is_none() {
            for suffix in &settings.suffixes {
                let path = with_suffix(&self.candidate, suffix);
                if let Some(opened) = self.servable(&path) {
                    return Some(Located::File(opened, path));
                }
            }
        }

        let redirect = is_directory
            && settings.normalize_trailing_slashes
            && settings
                .index_names
                .iter()
                .any(|name| is_regular_file(&self.candidate.join(name)));
        redirect.then_some(Located::Directory)
    }

    fn servable(&self, path: &Path) -> Option<OpenedFile> {
        if !self.settings.extension_allowed(path) {
            return None;
        }
        match self.settings.probe(path) {
            Probe::File(opened) => Some(opened),
            Probe::Directory | Probe::Missing => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::time::{Duration as StdDuration, SystemTime, UNIX_EPOCH};

    use http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tempfile::TempDir;

    use super::*;
    use crate::config::schema::CacheOverride;

    /// Modification time given to test files, so dates are predictable.
    const MTIME_SECS: u64 = 1_700_000_000;
    const MTIME_HTTP: &str = "Tue, 14 Nov 2023 22:13:20 GMT";

    struct Site {
        // Kept alive for the test's duration; dropping it deletes the files.
        _temp: TempDir,
        base: PathBuf,
        public: PathBuf,
    }

    impl Site {
        fn new() -> Site {
            let temp = TempDir::new().unwrap();
            let base = fs::canonicalize(temp.path()).unwrap();
            let public = base.join("public");
            fs::create_dir(&public).unwrap();
            Site {
                _temp: temp,
                base,
                public,
            }
        }

        fn write(&self, relative: &str, contents: &[u8]) -> PathBuf {
            let path = self.public.join(relative);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, contents).unwrap();
            let file = File::options().write(true).open(&path).unwrap();
            file.set_modified(UNIX_EPOCH + StdDuration::from_secs(MTIME_SECS))
                .unwrap();
            path
        }

        fn config(&self) -> Static {
            Static {
                public_dir: Some(self.public.clone()),
                ..Static::default()
            }
        }

        fn server(&self) -> StaticFiles {
            StaticFiles::new("", &self.config()).unwrap()
        }
    }

    fn with_try_files(mut config: Static) -> Static {
        config.try_files = vec!["index.html".into(), ".html".into(), ".htm".into()];
        config
    }

    fn request(method: Method, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = Request::builder().method(method).uri(uri);
        for &(name, value) in headers {
            builder = builder.header(name, value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    async fn get(server: &StaticFiles, path: &str, headers: &[(&str, &str)]) -> Response<Body> {
        let parts = request(Method::GET, path, headers);
        server.serve(path, &parts).await.unwrap()
    }

    async fn get_missing(server: &StaticFiles, path: &str) -> bool {
        let parts = request(Method::GET, path, &[]);
        server.serve(path, &parts).await.is_none()
    }

    fn header<'a>(response: &'a Response<Body>, name: &str) -> Option<&'a str> {
        response
            .headers()
            .get(name)
            .map(|value| value.to_str().unwrap())
    }

    async fn body_of(response: Response<Body>) -> Bytes {
        response.into_body().collect().await.unwrap().to_bytes()
    }

    fn numbered_bytes(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn get_file_with_headers() {
        let site = Site::new();
        site.write("app.css", b"body{}");
        let response = get(&site.server(), "/app.css", &[]).await;

        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            header(&response, "content-type"),
            Some("text/css; charset=utf-8")
        );
        assert_eq!(header(&response, "content-length"), Some("6"));
        assert_eq!(header(&response, "last-modified"), Some(MTIME_HTTP));
        assert_eq!(header(&response, "accept-ranges"), Some("bytes"));
        let etag = header(&response, "etag").unwrap();
        assert!(etag.starts_with('"'), "{etag}");
        assert!(etag.ends_with('"'), "{etag}");
        assert_eq!(header(&response, "cache-control"), None);
        assert_eq!(header(&response, "vary"), None);
        assert_eq!(header(&response, "content-encoding"), None);
        assert_eq!(body_of(response).await, "body{}");
    }

    #[tokio::test]
    async fn content_type_by_extension() {
        let site = Site::new();
        let cases = [
            ("page.html", "text/html; charset=utf-8"),
            ("app.js", "text/javascript; charset=utf-8"),
            ("data.json", "application/json; charset=utf-8"),
            ("notes.txt", "text/plain; charset=utf-8"),
            ("logo.png", "image/png"),
            ("logo.SVG", "image/svg+xml"),
            ("blob.unknownext", "application/octet-stream"),
            ("LICENSE", "application/octet-stream"),
        ];
        for (name, _) in cases {
            site.write(name, b"x");
        }
        let server = site.server();
        for (name, expected) in cases {
            let response = get(&server, &format!("/{name}"), &[]).await;
            assert_eq!(header(&response, "content-type"), Some(expected), "{name}");
        }
    }

    #[tokio::test]
    async fn head_has_headers_without_body() {
        let site = Site::new();
        site.write("index.html", b"<h1>hi</h1>");
        let server = site.server();
        let parts = request(Method::HEAD, "/index.html", &[("range", "bytes=0-1")]);
        let response = server.serve("/index.html", &parts).await.unwrap();

        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "content-length"), Some("11"));
        assert_eq!(
            header(&response, "content-type"),
            Some("text/html; charset=utf-8")
        );
        assert!(header(&response, "etag").is_some());
        assert_eq!(header(&response, "content-range"), None);
        assert!(body_of(response).await.is_empty());
    }

    #[tokio::test]
    async fn other_methods_pass_through() {
        let site = Site::new();
        site.write("index.html", b"hi");
        let server = site.server();
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS] {
            let parts = request(method.clone(), "/index.html", &[]);
            assert!(
                server.serve("/index.html", &parts).await.is_none(),
                "{method}"
            );
        }
    }

    #[tokio::test]
    async fn missing_file_passes_through() {
        let site = Site::new();
        let server = site.server();
        assert!(get_missing(&server, "/nothing.html").await);
        assert!(get_missing(&server, "/").await);
        assert!(get_missing(&server, "/deep/er/path").await);
    }

    #[tokio::test]
    async fn not_modified_by_etag() {
        let site = Site::new();
        site.write("a.txt", b"hello");
        let mut config = site.config();
        config.cache_control.default = Some(Duration::from_secs(60));
        let server = StaticFiles::new("", &config).unwrap();
        let etag = header(&get(&server, "/a.txt", &[]).await, "etag")
            .unwrap()
            .to_owned();

        let weak = format!("W/{etag}");
        let listed = format!("\"other\", {etag}");
        for value in [etag.as_str(), weak.as_str(), listed.as_str(), "*"] {
            let response = get(&server, "/a.txt", &[("if-none-match", value)]).await;
            assert_eq!(response.status(), StatusCode::NOT_MODIFIED, "{value}");
            assert_eq!(header(&response, "etag"), Some(etag.as_str()));
            assert_eq!(header(&response, "last-modified"), Some(MTIME_HTTP));
            assert_eq!(
                header(&response, "cache-control"),
                Some("public, max-age=60")
            );
            assert_eq!(header(&response, "content-length"), None);
            assert!(body_of(response).await.is_empty());
        }

        let response = get(&server, "/a.txt", &[("if-none-match", "\"stale\"")]).await;
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn not_modified_by_date() {
        let site = Site::new();
        site.write("a.txt", b"hello");
        let server = site.server();

        let response = get(&server, "/a.txt", &[("if-modified-since", MTIME_HTTP)]).await;
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(header(&response, "last-modified"), Some(MTIME_HTTP));

        let later = "Wed, 15 Nov 2023 00:00:00 GMT";
        let response = get(&server, "/a.txt", &[("if-modified-since", later)]).await;
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);

        let earlier = "Mon, 13 Nov 2023 00:00:00 GMT";
        let response = get(&server, "/a.txt", &[("if-modified-since", earlier)]).await;
        assert_eq!(response.status(), StatusCode::OK);

        let response = get(&server, "/a.txt", &[("if-modified-since", "garbage")]).await;
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn modified_since_future_date_ignored() {
        let site = Site::new();
        site.write("a.txt", b"hello");
        let future = httpdate::fmt_http_date(SystemTime::now() + StdDuration::from_secs(86_400));
        let response = get(&site.server(), "/a.txt", &[("if-modified-since", &future)]).await;
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn none_match_overrides_modified_since() {
        let site = Site::new();
        site.write("a.txt", b"hello");
        let headers = [
            ("if-none-match", "\"stale\""),
            ("if-modified-since", MTIME_HTTP),
        ];
        let response = get(&site.server(), "/a.txt", &headers).await;
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn precondition_failed_by_if_match() {
        let site = Site::new();
        site.write("a.txt", b"hello");
        let server = site.server();
        let etag = header(&get(&server, "/a.txt", &[]).await, "etag")
            .unwrap()
            .to_owned();

        let response = get(&server, "/a.txt", &[("if-match", "\"stale\"")]).await;
        assert_eq!(response.status(), StatusCode::PRECONDITION_FAILED);
        let weak = format!("W/{etag}");
        let response = get(&server, "/a.txt", &[("if-match", &weak)]).await;
        assert_eq!(response.status(), StatusCode::PRECONDITION_FAILED);
        let response = get(&server, "/a.txt", &[("if-match", &etag)]).await;
        assert_eq!(response.status(), StatusCode::OK);

        let earlier = "Mon, 13 Nov 2023 00:00:00 GMT";
        let response = get(&server, "/a.txt", &[("if-unmodified-since", earlier)]).await;
        assert_eq!(response.status(), StatusCode::PRECONDITION_FAILED);
        let response = get(&server, "/a.txt", &[("if-unmodified-since", MTIME_HTTP)]).await;
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn range_first_last_form() {
        let site = Site::new();
        site.write("digits.txt", b"0123456789");
        let response = get(&site.server(), "/digits.txt", &[("range", "bytes=2-5")]).await;

        assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(header(&response, "content-range"), Some("bytes 2-5/10"));
        assert_eq!(header(&response, "content-length"), Some("4"));
        assert_eq!(
            header(&response, "content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert!(header(&response, "etag").is_some());
        assert_eq!(body_of(response).await, "2345");
    }

    #[tokio::test]
    async fn range_open_ended_form() {
        let site = Site::new();
        site.write("digits.txt", b"0123456789");
        let response = get(&site.server(), "/digits.txt", &[("range", "bytes=7-")]).await;

        assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(header(&response, "content-range"), Some("bytes 7-9/10"));
        assert_eq!(header(&response, "content-length"), Some("3"));
        assert_eq!(body_of(response).await, "789");
    }

    #[tokio::test]
    async fn range_suffix_form() {
        let site = Site::new();
        site.write("digits.txt", b"0123456789");
        let server = site.server();
        let response = get(&server, "/digits.txt", &[("range", "bytes=-3")]).await;

        assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(header(&response, "content-range"), Some("bytes 7-9/10"));
        assert_eq!(body_of(response).await, "789");

        let response = get(&server, "/digits.txt", &[("range", "bytes=-50")]).await;
        assert_eq!(header(&response, "content-range"), Some("bytes 0-9/10"));
        assert_eq!(body_of(response).await, "0123456789");
    }

    #[tokio::test]
    async fn range_unsatisfiable_gets_416() {
        let site = Site::new();
        site.write("digits.txt", b"0123456789");
        let server = site.server();
        for range in ["bytes=10-", "bytes=20-30", "bytes=-0"] {
            let response = get(&server, "/digits.txt", &[("range", range)]).await;
            assert_eq!(
                response.status(),
                StatusCode::RANGE_NOT_SATISFIABLE,
                "{range}"
            );
            assert_eq!(header(&response, "content-range"), Some("bytes */10"));
            assert!(body_of(response).await.is_empty());
        }
    }

    #[tokio::test]
    async fn multiple_ranges_get_whole_file() {
        let site = Site::new();
        site.write("digits.txt", b"0123456789");
        let headers = [("range", "bytes=0-1,4-5")];
        let response = get(&site.server(), "/digits.txt", &headers).await;

        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "content-range"), None);
        assert_eq!(header(&response, "content-length"), Some("10"));
        assert_eq!(body_of(response).await, "0123456789");
    }

    #[tokio::test]
    async fn invalid_range_gets_whole_file() {
        let site = Site::new();
        site.write("digits.txt", b"0123456789");
        let server = site.server();
        for range in ["bytes=5-1", "lines=1-2", "bytes=x-"] {
            let response = get(&server, "/digits.txt", &[("range", range)]).await;
            assert_eq!(response.status(), StatusCode::OK, "{range}");
        }
    }

    #[tokio::test]
    async fn if_range_matching_and_stale() {
        let site = Site::new();
        site.write("digits.txt", b"0123456789");
        let server = site.server();
        let etag = header(&get(&server, "/digits.txt", &[]).await, "etag")
            .unwrap()
            .to_owned();

        let cases = [
            (etag.as_str(), StatusCode::PARTIAL_CONTENT),
            (MTIME_HTTP, StatusCode::PARTIAL_CONTENT),
            ("\"stale\"", StatusCode::OK),
            ("Mon, 13 Nov 2023 00:00:00 GMT", StatusCode::OK),
            ("not a date", StatusCode::OK),
        ];
        for (validator, expected) in cases {
            let headers = [("range", "bytes=0-1"), ("if-range", validator)];
            let response = get(&server, "/digits.txt", &headers).await;
            assert_eq!(response.status(), expected, "{validator}");
        }
        let weak = format!("W/{etag}");
        let headers = [("range", "bytes=0-1"), ("if-range", weak.as_str())];
        let response = get(&server, "/digits.txt", &headers).await;
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn large_file_streams_whole() {
        let site = Site::new();
        let contents = numbered_bytes(1_500_000);
        site.write("big.bin", &contents);
        let server = site.server();
        let response = get(&server, "/big.bin", &[]).await;

        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "content-length"), Some("1500000"));
        assert_eq!(body_of(response).await.as_ref(), contents.as_slice());
        get(&server, "/big.bin", &[]).await;
        assert_eq!(cache_hits(&server), 0, "too large to keep in memory");
    }

    #[tokio::test]
    async fn full_cache_makes_room_for_new_files() {
        // Seventeen 1 MiB files do not fit in 16 MiB together: each new
        // one evicts the oldest, so the last is still kept.
        let site = Site::new();
        let contents = numbered_bytes(1024 * 1024);
        for index in 0..17 {
            site.write(&format!("bundle-{index}.js"), &contents);
        }
        let server = site.server();
        for index in 0..17 {
            let response = get(&server, &format!("/bundle-{index}.js"), &[]).await;
            assert_eq!(response.status(), StatusCode::OK);
        }
        assert_eq!(server.cache.total_bytes(), 16 * 1024 * 1024);
        let response = get(&server, "/bundle-16.js", &[]).await;
        assert_eq!(body_of(response).await.as_ref(), contents.as_slice());
        assert_eq!(cache_hits(&server), 1);
    }

    #[tokio::test]
    async fn removed_file_leaves_the_cache() {
        let site = Site::new();
        site.write("old-bundle.js", &numbered_bytes(500_000));
        let server = site.server();
        get(&server, "/old-bundle.js", &[]).await;
        assert_eq!(server.cache.total_bytes(), 500_000);
        fs::remove_file(site.public.join("old-bundle.js")).unwrap();
        let response = server
            .serve(
                "/old-bundle.js",
                &request(Method::GET, "/old-bundle.js", &[]),
            )
            .await;
        assert!(response.is_none());
        assert_eq!(server.cache.total_bytes(), 0);
    }

    #[tokio::test]
    async fn bundle_sized_file_served_from_memory() {
        let site = Site::new();
        let contents = numbered_bytes(900_000);
        site.write("application.js", &contents);
        let server = site.server();
        for _ in 0..2 {
            let response = get(&server, "/application.js", &[]).await;
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(body_of(response).await.as_ref(), contents.as_slice());
        }
        assert_eq!(cache_hits(&server), 1);
    }

    #[tokio::test]
    async fn large_file_streams_range() {
        let site = Site::new();
        let contents = numbered_bytes(300_000);
        site.write("big.bin", &contents);
        let headers = [("range", "bytes=1000-200999")];
        let response = get(&site.server(), "/big.bin", &headers).await;

        assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(
            header(&response, "content-range"),
            Some("bytes 1000-200999/300000")
        );
        assert_eq!(header(&response, "content-length"), Some("200000"));
        assert_eq!(body_of(response).await.as_ref(), &contents[1000..201_000]);
    }

    #[tokio::test]
    async fn empty_file_served() {
        let site = Site::new();
        site.write("empty.txt", b"");
        let server = site.server();
        let response = get(&server, "/empty.txt", &[]).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "content-length"), Some("0"));

        let response = get(&server, "/empty.txt", &[("range", "bytes=0-")]).await;
        assert_eq!(response.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(header(&response, "content-range"), Some("bytes */0"));
    }

    #[tokio::test]
    async fn try_files_index_in_directory() {
        let site = Site::new();
        site.write("index.html", b"home");
        site.write("docs/index.html", b"docs");
        let server = StaticFiles::new("", &with_try_files(site.config())).unwrap();

        let response = get(&server, "/", &[]).await;
        assert_eq!(
            header(&response, "content-type"),
            Some("text/html; charset=utf-8")
        );
        assert_eq!(body_of(response).await, "home");
        assert_eq!(body_of(get(&server, "/docs/", &[]).await).await, "docs");
        assert!(get_missing(&server, "/empty/").await);
    }

    #[tokio::test]
    async fn try_files_suffix_on_bare_path() {
        let site = Site::new();
        site.write("studios/millbrae.html", b"millbrae");
        site.write("legacy.htm", b"legacy");
        site.write("v1.2.html", b"versioned");
        let server = StaticFiles::new("", &with_try_files(site.config())).unwrap();

        let response = get(&server, "/studios/millbrae", &[]).await;
        assert_eq!(
            header(&response, "content-type"),
            Some("text/html; charset=utf-8")
        );
        assert_eq!(body_of(response).await, "millbrae");
        assert_eq!(body_of(get(&server, "/legacy", &[]).await).await, "legacy");
        // A path with an extension gets no suffix.
        assert!(get_missing(&server, "/v1.2").await);
    }

    #[tokio::test]
    async fn try_files_empty_serves_exact_only() {
        let site = Site::new();
        site.write("index.html", b"home");
        site.write("about.html", b"about");
        let server = site.server();
        assert!(get_missing(&server, "/").await);
        assert!(get_missing(&server, "/about").await);
        assert_eq!(
            body_of(get(&server, "/about.html", &[]).await).await,
            "about"
        );
    }

    #[tokio::test]
    async fn directory_redirect_keeps_query() {
        let site = Site::new();
        site.write("docs/index.html", b"docs");
        fs::create_dir(site.public.join("bare")).unwrap();
        let mut config = with_try_files(site.config());
        config.normalize_trailing_slashes = true;
        let server = StaticFiles::new("", &config).unwrap();

        let parts = request(Method::GET, "/docs?page=2&q=a%20b", &[]);
        let response = server.serve("/docs", &parts).await.unwrap();
        assert_eq!(response.status(), StatusCode::MOVED_PERMANENTLY);
        assert_eq!(header(&response, "location"), Some("/docs/?page=2&q=a%20b"));

        let response = get(&server, "/docs", &[]).await;
        assert_eq!(header(&response, "location"), Some("/docs/"));
        // A directory without an index file is left to the tenant.
        assert!(get_missing(&server, "/bare").await);
    }

    #[tokio::test]
    async fn directory_redirect_reencodes_path() {
        let site = Site::new();
        site.write("café 100%/index.html", b"x");
        let mut config = with_try_files(site.config());
        config.normalize_trailing_slashes = true;
        let server = StaticFiles::new("", &config).unwrap();

        let parts = request(Method::GET, "/caf%C3%A9%20100%25", &[]);
        let response = server.serve("/café 100%", &parts).await.unwrap();
        assert_eq!(header(&response, "location"), Some("/caf%C3%A9%20100%25/"));
    }

    #[tokio::test]
    async fn directory_redirect_off_by_default() {
        let site = Site::new();
        site.write("docs/index.html", b"docs");
        let server = StaticFiles::new("", &with_try_files(site.config())).unwrap();
        assert!(get_missing(&server, "/docs").await);
    }

    #[tokio::test]
    async fn allowed_extensions_reject_others() {
        let site = Site::new();
        site.write("app.css", b"css");
        site.write("LOGO.PNG", b"png");
        site.write("secret.yml", b"key: value");
        site.write("README", b"readme");
        site.write("index.html", b"home");
        site.write("page.html", b"page");
        let mut config = with_try_files(site.config());
        config.allowed_extensions = vec!["css".into(), ".png".into()];
        let server = StaticFiles::new("", &config).unwrap();

        assert_eq!(get(&server, "/app.css", &[]).await.status(), StatusCode::OK);
        assert_eq!(
            get(&server, "/LOGO.PNG", &[]).await.status(),
            StatusCode::OK
        );
        assert!(get_missing(&server, "/secret.yml").await);
        assert!(get_missing(&server, "/README").await);
        // The check applies to the file try_files found.
        assert!(get_missing(&server, "/").await);
        assert!(get_missing(&server, "/page").await);
    }

    #[tokio::test]
    async fn dotfiles_never_served() {
        let site = Site::new();
        site.write(".env", b"SECRET=1");
        site.write(".git/config", b"[core]");
        site.write(".well-known/security.txt", b"contact");
        site.write("dir/.hidden.txt", b"hidden");
        let server = site.server();
        for path in [
            "/.env",
            "/.git/config",
            "/.well-known/security.txt",
            "/dir/.hidden.txt",
        ] {
            assert!(get_missing(&server, path).await, "{path}");
        }
    }

    fn cache_hits(server: &StaticFiles) -> usize {
        server.cache.hits.load(std::sync::atomic::Ordering::Relaxed)
    }

    #[tokio::test]
    async fn repeated_get_served_from_memory() {
        let site = Site::new();
        site.write("app.css", b"body{}");
        let server = site.server();
        let first = get(&server, "/app.css", &[]).await;
        let first_headers = first.headers().clone();
        assert_eq!(body_of(first).await, "body{}");
        assert_eq!(cache_hits(&server), 0);

        let second = get(&server, "/app.css", &[]).await;
        assert_eq!(cache_hits(&server), 1);
        assert_eq!(second.status(), StatusCode::OK);
        assert_eq!(second.headers(), &first_headers);
        assert_eq!(body_of(second).await, "body{}");

        let parts = request(Method::HEAD, "/app.css", &[]);
        let head = server.serve("/app.css", &parts).await.unwrap();
        assert_eq!(cache_hits(&server), 2);
        assert_eq!(head.headers(), &first_headers);
        assert!(body_of(head).await.is_empty());
    }

    #[tokio::test]
    async fn cached_file_changed_in_place_served_fresh() {
        let site = Site::new();
        let path = site.write("app.js", b"one();");
        let server = site.server();
        assert_eq!(body_of(get(&server, "/app.js", &[]).await).await, "one();");
        // Same inode and size; a deploy tool's new modification time.
        site.write("app.js", b"two();");
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(UNIX_EPOCH + StdDuration::from_secs(MTIME_SECS + 60))
            .unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), 6);
        assert_eq!(body_of(get(&server, "/app.js", &[]).await).await, "two();");
        assert_eq!(cache_hits(&server), 0);
    }

    #[tokio::test]
    async fn cached_file_removed_or_retargeted_not_served() {
        let site = Site::new();
        fs::write(site.base.join("outside.txt"), b"private").unwrap();
        site.write("real.txt", b"public!");
        std::os::unix::fs::symlink(site.public.join("real.txt"), site.public.join("link.txt"))
            .unwrap();
        let server = site.server();
        assert_eq!(
            body_of(get(&server, "/link.txt", &[]).await).await,
            "public!"
        );

        // The link now leads outside public_dir.
        fs::remove_file(site.public.join("link.txt")).unwrap();
        std::os::unix::fs::symlink(site.base.join("outside.txt"), site.public.join("link.txt"))
            .unwrap();
        assert!(get_missing(&server, "/link.txt").await);

        assert_eq!(
            body_of(get(&server, "/real.txt", &[]).await).await,
            "public!"
        );
        fs::remove_file(site.public.join("real.txt")).unwrap();
        assert!(get_missing(&server, "/real.txt").await);
        assert_eq!(cache_hits(&server), 0);
    }

    #[tokio::test]
    async fn conditional_and_range_requests_skip_memory() {
        let site = Site::new();
        site.write("a.txt", b"0123456789");
        let server = site.server();
        let etag = header(&get(&server, "/a.txt", &[]).await, "etag")
            .unwrap()
            .to_owned();
        let not_modified = get(&server, "/a.txt", &[("if-none-match", &etag)]).await;
        assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);
        let partial = get(&server, "/a.txt", &[("range", "bytes=2-4")]).await;
        assert_eq!(partial.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(body_of(partial).await, "234");
        assert_eq!(cache_hits(&server), 0);
    }

    #[tokio::test]
    async fn precompressed_files_not_cached() {
        let site = Site::new();
        site.write("app.js", b"plain();");
        site.write("app.js.gz", b"gzipped");
        let server = site.server();
        for _ in 0..2 {
            let response = get(&server, "/app.js", &[("accept-encoding", "gzip")]).await;
            assert_eq!(header(&response, "content-encoding"), Some("gzip"));
            let response = get(&server, "/app.js", &[]).await;
            assert_eq!(header(&response, "vary"), Some("Accept-Encoding"));
        }
        assert_eq!(cache_hits(&server), 0);
    }

    #[tokio::test]
    async fn symlink_escaping_public_dir_rejected() {
        let site = Site::new();
        fs::write(site.base.join("outside.txt"), b"private").unwrap();
        fs::create_dir(site.base.join("outside-dir")).unwrap();
        fs::write(site.base.join("outside-dir/file.txt"), b"private").unwrap();
        std::os::unix::fs::symlink(site.base.join("outside.txt"), site.public.join("link.txt"))
            .unwrap();
        std::os::unix::fs::symlink(site.base.join("outside-dir"), site.public.join("linkdir"))
            .unwrap();
        let server = site.server();

        assert!(get_missing(&server, "/link.txt").await);
        assert!(get_missing(&server, "/linkdir/file.txt").await);
    }

    #[tokio::test]
    async fn symlink_inside_public_dir_served() {
        let site = Site::new();
        site.write("assets/real.txt", b"real");
        std::os::unix::fs::symlink(
            site.public.join("assets/real.txt"),
            site.public.join("alias.txt"),
        )
        .unwrap();
        std::os::unix::fs::symlink(site.public.join("assets"), site.public.join("current"))
            .unwrap();
        let server = site.server();

        assert_eq!(body_of(get(&server, "/alias.txt", &[]).await).await, "real");
        let response = get(&server, "/current/real.txt", &[]).await;
        assert_eq!(body_of(response).await, "real");
    }

    #[tokio::test]
    async fn symlink_to_dotfile_rejected() {
        let site = Site::new();
        site.write(".git/config", b"[core]");
        std::os::unix::fs::symlink(site.public.join(".git/config"), site.public.join("c.txt"))
            .unwrap();
        assert!(get_missing(&site.server(), "/c.txt").await);
    }

    #[tokio::test]
    async fn public_dir_through_symlink() {
        let site = Site::new();
        site.write("a.txt", b"a");
        let link = site.base.join("current");
        std::os::unix::fs::symlink(&site.public, &link).unwrap();
        let config = Static {
            public_dir: Some(link.clone()),
            ..Static::default()
        };
        let server = StaticFiles::new("", &config).unwrap();

        assert_eq!(server.public_dir(), link);
        assert_eq!(body_of(get(&server, "/a.txt", &[]).await).await, "a");
    }

    #[tokio::test]
    async fn fifo_not_opened() {
        let site = Site::new();
        let fifo = site.public.join("pipe.txt");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let server = site.server();
        let lookup =
            tokio::time::timeout(StdDuration::from_secs(5), get_missing(&server, "/pipe.txt"));
        assert!(lookup.await.unwrap());
    }

    #[tokio::test]
    async fn root_path_stripped() {
        let site = Site::new();
        site.write("app.css", b"css");
        site.write("showcase/other.css", b"other");
        let server = StaticFiles::new("/showcase", &site.config()).unwrap();

        let response = get(&server, "/showcase/app.css", &[]).await;
        assert_eq!(body_of(response).await, "css");
        // Paths outside root_path map onto public_dir unchanged.
        assert_eq!(body_of(get(&server, "/app.css", &[]).await).await, "css");
        // Only a whole segment counts as the prefix.
        assert!(get_missing(&server, "/showcaseapp.css").await);
    }

    #[tokio::test]
    async fn root_path_index_file() {
        let site = Site::new();
        site.write("index.html", b"home");
        let server = StaticFiles::new("/showcase/", &with_try_files(site.config())).unwrap();
        let response = get(&server, "/showcase/", &[]).await;
        assert_eq!(body_of(response).await, "home");
    }

    #[tokio::test]
    async fn cache_control_longest_prefix() {
        let site = Site::new();
        site.write("assets/app.css", b"css");
        site.write("assets/fonts/a.woff2", b"font");
        site.write("page.html", b"page");
        let mut config = site.config();
        config.cache_control.default = Some(Duration::from_secs(300));
        config.cache_control.overrides = vec![
            CacheOverride {
                path: "/showcase/assets/".into(),
                max_age: Duration::from_secs(86_400),
                immutable: false,
            },
            CacheOverride {
                path: "/showcase/assets/fonts/".into(),
                max_age: Duration::from_secs(31_536_000),
                immutable: true,
            },
        ];
        let server = StaticFiles::new("/showcase", &config).unwrap();

        let cases = [
            ("/showcase/assets/app.css", "public, max-age=86400"),
            (
                "/showcase/assets/fonts/a.woff2",
                "public, max-age=31536000, immutable",
            ),
            ("/showcase/page.html", "public, max-age=300"),
        ];
        for (path, expected) in cases {
            let response = get(&server, path, &[]).await;
            assert_eq!(header(&response, "cache-control"), Some(expected), "{path}");
        }
    }

    #[tokio::test]
    async fn cache_control_default_forms() {
        let site = Site::new();
        site.write("a.txt", b"a");
        let cases = [
            (Some(3600), false, Some("public, max-age=3600")),
            (Some(3600), true, Some("public, max-age=3600, immutable")),
            (Some(0), false, Some("public, max-age=0, must-revalidate")),
            (Some(0), true, Some("public, max-age=0, must-revalidate")),
            (None, true, None),
        ];
        for (secs, immutable, expected) in cases {
            let mut config = site.config();
            config.cache_control.default = secs.map(Duration::from_secs);
            config.cache_control.default_immutable = immutable;
            let server = StaticFiles::new("", &config).unwrap();
            let response = get(&server, "/a.txt", &[]).await;
            assert_eq!(
                header(&response, "cache-control"),
                expected,
                "{secs:?} {immutable}"
            );
        }
    }

    #[tokio::test]
    async fn precompressed_sibling_negotiation() {
        let site = Site::new();
        site.write("app.js", b"plain javascript");
        site.write("app.js.gz", b"gzip bytes");
        site.write("app.js.br", b"brotli");
        let server = site.server();

        let cases = [
            ("gzip, deflate, br", Some("br"), "brotli"),
            ("gzip", Some("gzip"), "gzip bytes"),
            ("br;q=0, gzip", Some("gzip"), "gzip bytes"),
            ("br;q=0.5, gzip;q=0.9", Some("gzip"), "gzip bytes"),
            ("gzip;q=0, br;q=0", None, "plain javascript"),
            ("identity", None, "plain javascript"),
            ("", None, "plain javascript"),
        ];
        for (accept, encoding, body) in cases {
            let response = get(&server, "/app.js", &[("accept-encoding", accept)]).await;
            assert_eq!(response.status(), StatusCode::OK, "{accept}");
            assert_eq!(header(&response, "content-encoding"), encoding, "{accept}");
            assert_eq!(
                header(&response, "content-type"),
                Some("text/javascript; charset=utf-8"),
                "{accept}"
            );
            assert_eq!(
                header(&response, "vary"),
                Some("Accept-Encoding"),
                "{accept}"
            );
            let expected_len = body.len().to_string();
            assert_eq!(
                header(&response, "content-length"),
                Some(expected_len.as_str())
            );
            assert_eq!(body_of(response).await, body, "{accept}");
        }

        let response = get(&server, "/app.js", &[]).await;
        assert_eq!(header(&response, "content-encoding"), None);
        assert_eq!(header(&response, "vary"), Some("Accept-Encoding"));
    }

    #[tokio::test]
    async fn precompressed_only_gzip_sibling() {
        let site = Site::new();
        site.write("app.css", b"plain");
        site.write("app.css.gz", b"gz");
        let server = site.server();
        let response = get(&server, "/app.css", &[("accept-encoding", "br")]).await;
        assert_eq!(header(&response, "content-encoding"), None);
        assert_eq!(header(&response, "vary"), Some("Accept-Encoding"));
        let response = get(&server, "/app.css", &[("accept-encoding", "br, gzip")]).await;
        assert_eq!(header(&response, "content-encoding"), Some("gzip"));
    }

    #[tokio::test]
    async fn precompressed_etags_differ() {
        let site = Site::new();
        site.write("app.css", b"plain");
        site.write("app.css.gz", b"plain");
        let server = site.server();
        let plain = get(&server, "/app.css", &[]).await;
        let gzip = get(&server, "/app.css", &[("accept-encoding", "gzip")]).await;
        assert_ne!(header(&plain, "etag"), header(&gzip, "etag"));
    }

    #[tokio::test]
    async fn precompressed_range_and_not_modified() {
        let site = Site::new();
        site.write("app.js", b"plain javascript");
        site.write("app.js.br", b"0123456789");
        let server = site.server();
        let headers = [("accept-encoding", "br"), ("range", "bytes=-4")];
        let response = get(&server, "/app.js", &headers).await;

        assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(header(&response, "content-encoding"), Some("br"));
        assert_eq!(header(&response, "content-range"), Some("bytes 6-9/10"));
        let etag = header(&response, "etag").unwrap().to_owned();
        assert_eq!(body_of(response).await, "6789");

        let headers = [("accept-encoding", "br"), ("if-none-match", etag.as_str())];
        let response = get(&server, "/app.js", &headers).await;
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(header(&response, "vary"), Some("Accept-Encoding"));
    }

    #[tokio::test]
    async fn precompressed_sibling_outside_rejected() {
        let site = Site::new();
        site.write("app.js", b"plain");
        fs::write(site.base.join("secret.br"), b"private").unwrap();
        std::os::unix::fs::symlink(site.base.join("secret.br"), site.public.join("app.js.br"))
            .unwrap();
        let response = get(&site.server(), "/app.js", &[("accept-encoding", "br")]).await;
        assert_eq!(header(&response, "content-encoding"), None);
        assert_eq!(body_of(response).await, "plain");
    }

    #[tokio::test]
    async fn read_page_inside_public_dir() {
        let site = Site::new();
        site.write("503.html", b"maintenance");
        site.write(".secret.html", b"no");
        fs::write(site.base.join("outside.html"), b"no").unwrap();
        std::os::unix::fs::symlink(
            site.base.join("outside.html"),
            site.public.join("escape.html"),
        )
        .unwrap();
        let server = site.server();

        let page = server.read_page("/503.html").await;
        assert_eq!(page.as_deref(), Some(b"maintenance".as_slice()));
        let page = server.read_page("503.html").await;
        assert_eq!(page.as_deref(), Some(b"maintenance".as_slice()));
        assert_eq!(server.read_page("/missing.html").await, None);
        assert_eq!(server.read_page("/.secret.html").await, None);
        assert_eq!(server.read_page("/../outside.html").await, None);
        assert_eq!(server.read_page("/escape.html").await, None);
        assert_eq!(server.read_page("/").await, None);
    }

    #[test]
    fn new_without_public_dir() {
        assert!(StaticFiles::new("", &Static::default()).is_none());
        let config = Static {
            public_dir: Some(PathBuf::new()),
            ..Static::default()
        };
        assert!(StaticFiles::new("", &config).is_none());
    }

    #[test]
    fn new_resolves_relative_public_dir() {
        let config = Static {
            public_dir: Some(PathBuf::from("public")),
            ..Static::default()
        };
        let server = StaticFiles::new("", &config).unwrap();
        let expected = std::env::current_dir().unwrap().join("public");
        assert_eq!(server.public_dir(), expected);
    }

    #[tokio::test]
    async fn public_dir_created_after_startup() {
        let site = Site::new();
        let later = site.base.join("later");
        let config = Static {
            public_dir: Some(later.clone()),
            ..Static::default()
        };
        let server = StaticFiles::new("", &config).unwrap();
        assert!(get_missing(&server, "/a.txt").await);

        fs::create_dir(&later).unwrap();
        fs::write(later.join("a.txt"), b"now").unwrap();
        assert_eq!(body_of(get(&server, "/a.txt", &[]).await).await, "now");
    }
}
