//! A real S3-compatible server for the bucket tests: `s3s-fs` (0.14.1, the
//! last that builds with this toolchain) on a free loopback port, serving
//! a directory of this test's own, its bucket `site` a directory in it.
//! When no `s3s-fs` is installed, the first test to need one installs it
//! with cargo (once per run, under a lock); if that fails the test fails:
//! a missing server is never a skipped test.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const BUCKET: &str = "site";
pub const ACCESS_KEY: &str = "shipper-test";
pub const SECRET_KEY: &str = "shipper-test-secret";
const VERSION: &str = "0.14.1";

/// Where an installed `s3s-fs` is, installing it first if there is none.
fn s3s_fs() -> PathBuf {
    static INSTALL: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut found = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = found.as_ref() {
        return p.clone();
    }
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .expect("CARGO_HOME or HOME");
    let installed = home.join("bin/s3s-fs");
    if !installed.exists() {
        let out = Command::new(env!("CARGO"))
            .args([
                "install",
                &format!("s3s-fs@{VERSION}"),
                "--features",
                "binary",
                "--locked",
            ])
            .output()
            .expect("running cargo install s3s-fs");
        assert!(
            out.status.success() && installed.exists(),
            "the bucket tests need a real S3-compatible server, and `cargo install s3s-fs@{VERSION} --features binary --locked` failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    *found = Some(installed.clone());
    installed
}

/// An `s3s-fs` serving `dir` on `port`; killed on drop.
pub struct S3 {
    child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
}

impl S3 {
    /// A server for a new directory under `base`, bucket `site` in it.
    pub fn start(base: &Path) -> Self {
        let dir = base.join("s3");
        std::fs::create_dir_all(dir.join(BUCKET)).unwrap();
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut s = S3 {
            child: None,
            port,
            dir,
        };
        s.restart();
        s
    }

    /// Start it again (after [`S3::stop`]) on the same port and directory.
    pub fn restart(&mut self) {
        let child = Command::new(s3s_fs())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting s3s-fs");
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < end,
                "s3s-fs did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Where the server keeps `key` of the bucket.
    pub fn object(&self, key: &str) -> PathBuf {
        self.dir.join(BUCKET).join(key)
    }

    /// The bucket keys for a config table: `prefix` in this server's
    /// bucket, credentials from `creds` (a file name under the config's
    /// directory, written here with `secret`).
    pub fn keys(&self, env_dir: &Path, prefix: &str, creds: &str, secret: &str) -> String {
        use std::os::unix::fs::PermissionsExt;
        let path = env_dir.join(creds);
        std::fs::write(
            &path,
            format!("access_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{secret}\"\n"),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        format!(
            "bucket = \"s3://{BUCKET}/{prefix}\"\nbucket_endpoint = \"{}\"\nbucket_credentials = \"{creds}\"\n",
            self.endpoint()
        )
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A client of `s3`'s bucket, as a test writes to it directly (what
/// anyone with write access to the bucket could do).
pub fn client(s3: &S3) -> std::sync::Arc<dyn object_store::ObjectStore> {
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(s3.endpoint())
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_bucket_name(BUCKET)
        .with_access_key_id(ACCESS_KEY)
        .with_secret_access_key(SECRET_KEY)
        .with_virtual_hosted_style_request(false)
        .build()
        .unwrap();
    std::sync::Arc::new(store)
}

/// The sequences sealed under `prefix`, by any sender, in order.
pub fn seals(s3: &S3, prefix: &str) -> Vec<u64> {
    let Ok(senders) = std::fs::read_dir(s3.object(&format!("{prefix}/b"))) else {
        return Vec::new();
    };
    let mut v: Vec<u64> = senders
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".seal")?.parse().ok()
        })
        .collect();
    v.sort();
    v
}

/// The key of `sender`'s bundle `seq` under `prefix`, `ext` "zip" or "seal".
pub fn key(prefix: &str, sender: &str, seq: u64, ext: &str) -> String {
    format!("{prefix}/b/{sender}/{seq:020}.{ext}")
}
