//! A real nginx serving a receiver's root as another user (www-data), the
//! way the web servers shipper feeds run, and a plain HTTP GET to ask it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The user nginx's workers run as (Debian's), not the user shipper runs as.
pub const WEB_USER: &str = "www-data";

/// nginx serving `root` on a loopback port until dropped.
pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Nginx {
    /// Start nginx (master as root, workers as [`WEB_USER`]) serving `root`,
    /// with its config, pid and logs in `dir`. Every directory from `/` to
    /// `root` must be searchable by the web user; this opens the test's
    /// own temporary directories (0711), nothing above them.
    pub fn serve(root: &Path, dir: &Path, open_up_to: &Path) -> Self {
        let mut d = root.to_owned();
        loop {
            let mode = std::fs::metadata(&d).unwrap().permissions().mode();
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode | 0o711)).unwrap();
            if d == open_up_to || !d.pop() {
                break;
            }
        }
        let addr = crate::util::free_addr();
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nmaster_process on;\nworker_processes 1;\nuser {WEB_USER};\n\
                 pid {dir}/nginx.pid;\nerror_log {dir}/error.log;\n\
                 events {{ worker_connections 64; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {dir}/body;\n\
                 proxy_temp_path {dir}/proxy;\n  fastcgi_temp_path {dir}/fastcgi;\n\
                 uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n\
                 server {{\n    listen {addr};\n    root {root};\n    disable_symlinks off;\n  }}\n}}\n",
                dir = dir.display(),
                root = root.display(),
            ),
        )
        .unwrap();
        let child = Command::new(nginx_binary())
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .spawn()
            .expect("nginx must be installed (.ci/run installs it): apt-get install nginx-light");
        let web = Self {
            child,
            addr,
            dir: dir.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on {addr}: {}",
                web.error_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        web
    }

    /// GET `path`: the status code and the body.
    pub fn get(&self, path: &str) -> (u16, Vec<u8>) {
        let mut s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET /{path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        let head_end = all
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("an HTTP answer");
        let head = String::from_utf8_lossy(&all[..head_end]).into_owned();
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head:?}"));
        (code, all[head_end + 4..].to_vec())
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // TERM: the master stops its workers before it exits.
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let _ = self.child.wait();
    }
}

fn nginx_binary() -> &'static str {
    if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    }
}
