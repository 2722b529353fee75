//! A real PostgreSQL server for tests: `initdb` into a temporary directory and `postgres` on
//! a free loopback port, run as the `postgres` user when the tests run as root; killed on
//! drop. The binaries come from Debian's `postgresql` package (scripts/setup.sh installs it).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct PgServer {
    child: Child,
    pub port: u16,
    bin: PathBuf,
    _dir: tempfile::TempDir,
    ids: Option<(u32, u32)>,
}

fn pg_bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("postgres").exists())
        .collect();
    dirs.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop().expect(
        "PostgreSQL server binaries not found under /usr/lib/postgresql: run scripts/setup.sh (apt-get install postgresql)",
    )
}

fn postgres_ids() -> Option<(u32, u32)> {
    let out = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&out.stdout).trim() != "0" {
        return None; // not root: run as ourselves
    }
    let uid = Command::new("id").args(["-u", "postgres"]).output().ok()?;
    let gid = Command::new("id").args(["-g", "postgres"]).output().ok()?;
    Some((
        String::from_utf8_lossy(&uid.stdout).trim().parse().ok()?,
        String::from_utf8_lossy(&gid.stdout).trim().parse().ok()?,
    ))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl PgServer {
    pub fn start() -> Self {
        let bin = pg_bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("snapfleet-pg-")
            .tempdir()
            .unwrap();
        let ids = postgres_ids();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        if let Some((uid, gid)) = ids {
            for p in [dir.path(), data.as_path()] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
            }
        }
        let as_pg = |cmd: &mut Command| {
            if let Some((uid, gid)) = ids {
                cmd.uid(uid).gid(gid);
            }
        };
        let mut initdb = Command::new(bin.join("initdb"));
        initdb.args(["-D"]).arg(&data).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        as_pg(&mut initdb);
        let out = initdb.output().unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("postgres.log")).unwrap();
        if let Some((uid, gid)) = ids {
            std::os::unix::fs::chown(dir.path().join("postgres.log"), Some(uid), Some(gid))
                .unwrap();
        }
        let mut cmd = Command::new(bin.join("postgres"));
        cmd.arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "TimeZone=UTC",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        as_pg(&mut cmd);
        let child = cmd.spawn().unwrap();
        let s = Self {
            child,
            port,
            bin,
            _dir: dir,
            ids,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = s.psql("postgres", &["-c", "SELECT 1"]).status.success();
            if ok {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs psql against database `db` (stop on the first error).
    pub fn psql(&self, db: &str, args: &[&str]) -> Output {
        Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
            ])
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
            .args(args)
            .env("PGTZ", "UTC")
            .output()
            .unwrap()
    }

    pub fn createdb(&self, name: &str) {
        let out = self.psql("postgres", &["-c", &format!("CREATE DATABASE \"{name}\"")]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Loads a script file with psql; panics with psql's error when it fails.
    pub fn load(&self, db: &str, file: &Path) {
        let out = self.psql(db, &["-f", file.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "psql -f {} failed:\n{}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `COPY table TO STDOUT` lines, unescaped into fields (`None` = NULL).
    pub fn copy_out(&self, db: &str, table: &str) -> Vec<Vec<Option<String>>> {
        let out = self.psql(db, &["-c", &format!("COPY \"{table}\" TO STDOUT")]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                l.split('\t')
                    .map(snapfleet_dump::quote::unescape_copy_field)
                    .collect()
            })
            .collect()
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    pub fn runs_as_postgres(&self) -> bool {
        self.ids.is_some()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
