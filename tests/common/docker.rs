//! Real Docker for the tests, without a registry: images are made with
//! `docker import` from a rootfs tar that holds the demo app and the shared
//! libraries it needs, and everything a test creates carries a unique name
//! prefix and is removed by [`Docker`]'s `Drop`, also when the test panics.
//!
//! Inside a container the demo must listen on all addresses (`--bind
//! 0.0.0.0`): `docker run -p 127.0.0.1:PORT:80` forwards to the container's
//! own address, never to its loopback. The images' default command says so.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use super::{wait_for, DEMO, PATIENCE};

/// The port the demo listens on inside its container (the images' default
/// command: `--port 80 --bind 0.0.0.0`).
pub const DEMO_APP_PORT: u16 = 80;

/// Runs `docker ARGS` and returns its trimmed stdout, or an error with the
/// command and the end of its stderr. Bounded by [`PATIENCE`]: a daemon that
/// hangs fails the test instead of stalling it.
pub fn docker(args: &[&str]) -> Result<String, String> {
    run_bounded(Command::new("docker").args(args), PATIENCE)
        .map_err(|e| format!("docker {}: {e}", args.join(" ")))
}

/// Like [`docker`], but panics on failure.
pub fn docker_ok(args: &[&str]) -> String {
    docker(args).unwrap_or_else(|e| panic!("{e}"))
}

fn run_bounded(command: &mut Command, limit: Duration) -> Result<String, String> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let drain = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("still running after {limit:?}, killed"));
        }
        thread::sleep(Duration::from_millis(10));
    };
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    if status.success() {
        Ok(stdout.trim().to_string())
    } else {
        let tail: String = stderr.trim().chars().rev().take(500).collect();
        Err(format!(
            "{status}: {}",
            tail.chars().rev().collect::<String>()
        ))
    }
}

/// Whether a Docker daemon answers (`docker info`, asked once per process).
pub fn docker_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        run_bounded(
            Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]),
            Duration::from_secs(30),
        )
        .is_ok_and(|version| !version.is_empty())
    })
}

/// Call first in every Docker test: `if !require_docker() { return; }`.
/// Without a daemon, a test under `CI=true` fails (CI must run them);
/// elsewhere it says it skipped and returns false.
pub fn require_docker() -> bool {
    if docker_available() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "Docker is required under CI=true: no daemon answers `docker info` \
             (.ci/run installs docker.io and starts dockerd)"
        );
    }
    eprintln!("skipped: no Docker daemon");
    false
}

/// A demo image: its tag and its image ID (`sha256:…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub tag: String,
    pub id: String,
}

/// Demo images built by this process, by tag, with how many live guards use
/// each: the last guard to let go removes it.
fn image_cache() -> &'static Mutex<HashMap<String, (Image, usize)>> {
    static CACHE: OnceLock<Mutex<HashMap<String, (Image, usize)>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The tag of this process's demo image for `version`. The process id keeps
/// test binaries that run at the same time apart.
pub fn demo_tag(version: &str) -> String {
    format!("lrtest-demo:{}-{version}", std::process::id())
}

/// Builds the demo image for `version`: a rootfs with the demo binary as
/// `/liveroll-demo`, the libraries `ldd` lists for it and the dynamic loader
/// at the paths it names, and `/version` holding `version` (so two versions
/// are two image IDs). Its command is `/liveroll-demo --port 80 --bind
/// 0.0.0.0 --app-version VERSION`; arguments after the image on `docker run`
/// replace everything but `/liveroll-demo`.
fn build_demo_image(version: &str) -> Image {
    assert!(
        !version.is_empty()
            && version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'),
        "a version goes into a tag: {version:?}"
    );
    let tag = demo_tag(version);
    let work = std::env::temp_dir().join(format!("lrtest-image-{}-{version}", std::process::id()));
    let root = work.join("root");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&root).unwrap();
    copy_file(Path::new(DEMO), &root.join("liveroll-demo"));
    for lib in shared_libraries(DEMO) {
        copy_file(&lib, &root.join(lib.strip_prefix("/").unwrap()));
    }
    fs::write(root.join("version"), format!("{version}\n")).unwrap();
    let tar = work.join("rootfs.tar");
    let out = run_bounded(
        Command::new("tar")
            .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
        PATIENCE,
    );
    out.unwrap_or_else(|e| panic!("tar of the demo rootfs: {e}"));
    let cmd = format!(
        r#"CMD ["--port", "{DEMO_APP_PORT}", "--bind", "0.0.0.0", "--app-version", "{version}"]"#
    );
    let id = docker_ok(&[
        "import",
        "--change",
        r#"ENTRYPOINT ["/liveroll-demo"]"#,
        "--change",
        &cmd,
        tar.to_str().unwrap(),
        &tag,
    ]);
    let _ = fs::remove_dir_all(&work);
    // What the tag names now: the import's own ID, unless something moved it.
    let inspected = docker_ok(&["image", "inspect", "--format", "{{.Id}}", &tag]);
    assert_eq!(inspected, id, "{tag} moved while it was built");
    Image { tag, id }
}

fn copy_file(from: &Path, to: &Path) {
    fs::create_dir_all(to.parent().unwrap()).unwrap();
    // Follows symlinks: the image gets the library itself under the name
    // the loader looks for.
    fs::copy(from, to).unwrap_or_else(|e| panic!("copy {from:?} to {to:?}: {e}"));
}

/// The files `ldd` names for `binary` (libraries and the loader); none for
/// a static binary.
fn shared_libraries(binary: &str) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(binary).output().expect("ldd");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x…)"; "linux-vdso.so.1 (0x…)" is no file.
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Everything one test creates in Docker. Its containers are named with
/// [`Docker::name`] (all start with [`Docker::prefix`]); its images come
/// from [`Docker::demo_image`] and [`Docker::tag`]. Dropping it removes
/// every container whose name starts with the prefix, the tags it made,
/// and the demo images no other live guard of this process uses. Declare it
/// before the `Liveroll` so that liveroll is stopped first.
pub struct Docker {
    prefix: String,
    tags: Mutex<Vec<String>>,
    demo_images: Mutex<Vec<String>>,
}

impl Docker {
    /// `what`: a short lowercase word for the test, part of every name.
    pub fn new(what: &str) -> Docker {
        static N: AtomicUsize = AtomicUsize::new(0);
        assert!(
            what.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
            "{what:?} goes into container and image names"
        );
        Docker {
            prefix: format!(
                "lrtest-{what}-{}-{}-",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ),
            tags: Mutex::new(Vec::new()),
            demo_images: Mutex::new(Vec::new()),
        }
    }

    /// What every container and tag of this guard starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A container name (or an image repository) of this guard.
    pub fn name(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    /// This process's demo image for `version`, built on first use.
    pub fn demo_image(&self, version: &str) -> Image {
        let tag = demo_tag(version);
        let mut cache = image_cache().lock().unwrap_or_else(|e| e.into_inner());
        let entry = cache
            .entry(tag.clone())
            .or_insert_with(|| (build_demo_image(version), 0));
        entry.1 += 1;
        self.demo_images.lock().unwrap().push(tag);
        entry.0.clone()
    }

    /// Points the tag `NAME:latest` (NAME from [`Docker::name`]) at
    /// `image` (a tag or an ID), as a `docker pull` of a moved tag would;
    /// returns the tag.
    pub fn tag(&self, image: &str, suffix: &str) -> String {
        let tag = format!("{}:latest", self.name(suffix));
        docker_ok(&["tag", image, &tag]);
        let mut tags = self.tags.lock().unwrap();
        if !tags.contains(&tag) {
            tags.push(tag.clone());
        }
        tag
    }

    /// The image ID a tag names now.
    pub fn image_id(&self, tag: &str) -> String {
        docker_ok(&["image", "inspect", "--format", "{{.Id}}", tag])
    }

    /// Names of this guard's containers, running or not, sorted.
    pub fn containers(&self) -> Vec<String> {
        self.list(&["ps", "-a"])
    }

    /// Names of this guard's running containers, sorted.
    pub fn running(&self) -> Vec<String> {
        self.list(&["ps"])
    }

    fn list(&self, what: &[&str]) -> Vec<String> {
        let filter = format!("name={}", self.prefix);
        let mut args = what.to_vec();
        args.extend(["--filter", &filter, "--format", "{{.Names}}"]);
        let mut names: Vec<String> = docker_ok(&args)
            .lines()
            // The filter matches anywhere in the name; we want the prefix.
            .filter(|n| n.starts_with(&self.prefix))
            .map(str::to_string)
            .collect();
        names.sort();
        names
    }

    /// Removes this guard's containers now (`docker rm -f`), and waits
    /// until none is left (`--rm` removals race with ours).
    pub fn remove_containers(&self) {
        wait_for(
            &format!("containers {}* to be removed", self.prefix),
            || {
                let names = match docker(&["ps", "-a", "--format", "{{.Names}}"]) {
                    Ok(out) => out,
                    Err(_) => return None,
                };
                let ours: Vec<&str> = names
                    .lines()
                    .filter(|n| n.starts_with(&self.prefix))
                    .collect();
                if ours.is_empty() {
                    return Some(());
                }
                let mut args = vec!["rm", "-f", "-v"];
                args.extend(ours);
                // "removal already in progress" is fine: we look again.
                let _ = docker(&args);
                None
            },
        );
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        let cleanup = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.remove_containers();
            for tag in self
                .tags
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain(..)
            {
                let _ = docker(&["rmi", &tag]);
            }
            let mut cache = image_cache().lock().unwrap_or_else(|e| e.into_inner());
            for tag in self
                .demo_images
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain(..)
            {
                if let Some(entry) = cache.get_mut(&tag) {
                    entry.1 -= 1;
                    if entry.1 == 0 {
                        cache.remove(&tag);
                        let _ = docker(&["rmi", "-f", &tag]);
                    }
                }
            }
        }));
        if cleanup.is_err() && !std::thread::panicking() {
            panic!("Docker cleanup of {}* failed", self.prefix);
        }
    }
}
