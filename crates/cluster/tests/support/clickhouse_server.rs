//! Local ClickHouse servers for tests: each one a child process of the test in
//! a fresh temporary directory, on free loopback ports, bound to 127.0.0.1 only.
//!
//! Only `std` and `tempfile`, so any test crate can include it:
//!
//! ```ignore
//! #[path = "../../cluster/tests/support/clickhouse_server.rs"]
//! mod clickhouse_server;
//! ```
//!
//! The server runs under a small `sh` watchdog that reads the test's end of a
//! pipe: when the test process ends, however it ends (even with the server in
//! a `static` that is never dropped, or killed by a signal), the pipe closes
//! and the watchdog kills the server and removes its directory. Dropping a
//! [`ClickHouseServer`] does the same at once.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's package installs the server.
pub(crate) const CLICKHOUSE_SERVER: &str = "/usr/sbin/clickhouse-server";

/// The name of the `remote_servers` cluster that [`ClickHouseServer::start_shards`]
/// configures on every server (each server one shard, in order).
pub(crate) const CLUSTER_NAME: &str = "sessionizer_shards";

/// How long a server may take to answer `/ping` (18.16 starts in well under a
/// second; a loaded CI machine gets generous room).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// How often a starting server is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Attempts with fresh ports when another process took a probed port between
/// the probe and the server's bind.
const PORT_ATTEMPTS: usize = 3;

/// How long `Drop` waits for the watchdog to kill the server before killing the watchdog.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Lines of the server's logs shown when it fails to start.
const LOG_TAIL_LINES: usize = 40;

/// Kills the server when its stdin (the test's pipe) closes, then removes the
/// directory. `$1` = server binary, `$2` = config file, `$3` = directory.
const WATCHDOG: &str = r#"
"$1" --config-file="$2" >"$3/stdout.log" 2>"$3/stderr.log" </dev/null &
server=$!
echo "$server" >"$3/server.pid"
cat >/dev/null
kill -KILL "$server" 2>/dev/null
wait "$server" 2>/dev/null
rm -rf "$3"
"#;

/// One running ClickHouse server.
#[derive(Debug)]
pub(crate) struct ClickHouseServer {
    http_port: u16,
    tcp_port: u16,
    /// The watchdog shell; the server is its child.
    watchdog: Child,
    /// Our end of the watchdog's stdin: dropping it stops the server.
    pipe: Option<ChildStdin>,
    dir: tempfile::TempDir,
}

/// The ports of one server.
#[derive(Debug, Clone, Copy)]
struct Ports {
    http: u16,
    tcp: u16,
    interserver: u16,
}

impl ClickHouseServer {
    /// Starts one server and waits until it answers.
    ///
    /// # Panics
    /// If `clickhouse-server` is not installed, or does not start in time (with
    /// the tail of its logs).
    pub(crate) fn start() -> ClickHouseServer {
        ClickHouseServer::start_shards(1).pop().expect("one server")
    }

    /// Starts `n` servers that know each other as the shards of the
    /// `remote_servers` cluster [`CLUSTER_NAME`] (for `Distributed` tables).
    ///
    /// # Panics
    /// Like [`ClickHouseServer::start`].
    pub(crate) fn start_shards(n: usize) -> Vec<ClickHouseServer> {
        assert!(n > 0, "at least one server");
        if !Path::new(CLICKHOUSE_SERVER).exists() {
            panic!("clickhouse-server is not installed: apt-get install clickhouse-server (scripts/test.sh does this)");
        }
        let mut last_failure = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let ports: Vec<Ports> =
                free_ports(3 * n).chunks(3).map(|p| Ports { http: p[0], tcp: p[1], interserver: p[2] }).collect();
            let mut servers = Vec::with_capacity(n);
            let mut failed = None;
            for own in &ports {
                match ClickHouseServer::spawn(*own, &ports) {
                    Ok(server) => servers.push(server),
                    Err(failure) => {
                        failed = Some(failure);
                        break;
                    }
                }
            }
            let Some(failure) = failed.or_else(|| servers.iter().find_map(|s| s.wait_ready().err())) else {
                return servers;
            };
            // Stop whatever started before trying again.
            drop(servers);
            if !failure.contains("Address already in use") {
                panic!("{failure}");
            }
            last_failure = failure;
        }
        panic!("clickhouse-server could not bind free ports in {PORT_ATTEMPTS} attempts: {last_failure}");
    }

    /// Writes the configuration and starts the watchdog and server.
    fn spawn(ports: Ports, cluster: &[Ports]) -> Result<ClickHouseServer, String> {
        let dir = tempfile::Builder::new()
            .prefix("clickhouse-test-")
            .tempdir()
            .map_err(|e| format!("cannot create a temp dir: {e}"))?;
        let root = dir.path();
        for sub in ["data", "tmp", "user_files", "format_schemas"] {
            std::fs::create_dir_all(root.join(sub)).map_err(|e| format!("cannot create {sub}: {e}"))?;
        }
        let config = root.join("config.xml");
        std::fs::write(&config, config_xml(root, ports, cluster)).map_err(|e| format!("cannot write config: {e}"))?;
        std::fs::write(root.join("users.xml"), USERS_XML).map_err(|e| format!("cannot write users: {e}"))?;
        let mut watchdog = Command::new("/bin/sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("clickhouse-watchdog")
            .arg(CLICKHOUSE_SERVER)
            .arg(&config)
            .arg(root)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start /bin/sh for clickhouse-server: {e}"))?;
        let pipe = watchdog.stdin.take();
        Ok(ClickHouseServer { http_port: ports.http, tcp_port: ports.tcp, watchdog, pipe, dir })
    }

    /// Polls `GET /ping` until it answers `Ok.`, the server exits, or the time is up.
    fn wait_ready(&self) -> Result<(), String> {
        let started = Instant::now();
        loop {
            if ping(self.http_port).as_deref() == Some("Ok.") {
                return Ok(());
            }
            let exited = self.server_exited();
            if exited || started.elapsed() > STARTUP_TIMEOUT {
                let what = if exited {
                    "exited during startup".to_string()
                } else {
                    format!("did not answer /ping within {STARTUP_TIMEOUT:?}")
                };
                return Err(format!(
                    "clickhouse-server on 127.0.0.1:{} {what}; logs in {}:\n{}",
                    self.http_port,
                    self.dir.path().display(),
                    self.log_tail()
                ));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Whether the server process is gone (its pid file names it; `/proc` tells).
    fn server_exited(&self) -> bool {
        let Ok(pid) = std::fs::read_to_string(self.dir.path().join("server.pid")) else {
            return false; // not started yet
        };
        match std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())) {
            // A zombie (state Z) has exited but was not reaped yet.
            Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
            Err(_) => true,
        }
    }

    /// The last lines of every log the server writes.
    pub(crate) fn log_tail(&self) -> String {
        let mut out = String::new();
        for name in ["stderr.log", "stdout.log", "server.err.log", "server.log"] {
            let path = self.dir.path().join(name);
            let Ok(text) = std::fs::read_to_string(&path) else { continue };
            if text.trim().is_empty() {
                continue;
            }
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {name} (last {LOG_TAIL_LINES} lines)\n"));
            for line in &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        if out.is_empty() { "(no log output)".to_string() } else { out }
    }

    /// `http://127.0.0.1:<port>`: the HTTP interface.
    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub(crate) fn http_port(&self) -> u16 {
        self.http_port
    }

    /// The native protocol port (what `remote_servers` and `clickhouse-client` use).
    pub(crate) fn tcp_port(&self) -> u16 {
        self.tcp_port
    }

    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs one statement over HTTP (std only) and returns the body, or the
    /// server's error text. For setup and checks in tests; values are not escaped.
    pub(crate) fn query(&self, sql: &str) -> Result<String, String> {
        http_post(self.http_port, "/", sql.as_bytes())
    }

    /// [`ClickHouseServer::query`] with results in `format` (`TabSeparatedWithNames`, `JSONEachRow`, ...)
    /// unless the statement names its own.
    pub(crate) fn query_format(&self, sql: &str, format: &str) -> Result<String, String> {
        assert!(format.bytes().all(|b| b.is_ascii_alphanumeric()), "a format name: {format:?}");
        http_post(self.http_port, &format!("/?default_format={format}"), sql.as_bytes())
    }
}

impl Drop for ClickHouseServer {
    fn drop(&mut self) {
        // Closing the pipe makes the watchdog kill the server and clean up.
        drop(self.pipe.take());
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.watchdog.try_wait() {
                return;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        // The watchdog hangs: kill the server by its pid, then the watchdog.
        if let Ok(pid) = std::fs::read_to_string(self.dir.path().join("server.pid")) {
            let _status = Command::new("kill").arg("-KILL").arg(pid.trim()).status();
        }
        let _killed = self.watchdog.kill();
        let _waited = self.watchdog.wait();
    }
}

/// Ports the system hands out now (all held at once, so they are distinct).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port")).collect();
    listeners.iter().map(|l| l.local_addr().expect("local address").port()).collect()
}

/// `GET /ping`, or `None` when nothing answers.
fn ping(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(b"GET /ping HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    (head.split(' ').nth(1) == Some("200")).then(|| body.trim().to_string())
}

/// A minimal HTTP/1.0 POST (no keep-alive, no chunking): the body, or the error text.
fn http_post(port: u16, path: &str, body: &[u8]) -> Result<String, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
    let head = format!("POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n", body.len());
    stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body)).map_err(|e| format!("send: {e}"))?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(|e| format!("receive: {e}"))?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").ok_or("malformed HTTP response")?;
    let status = head.split(' ').nth(1).unwrap_or_default();
    if status == "200" { Ok(body.to_string()) } else { Err(format!("HTTP {status}: {body}")) }
}

/// A server configuration with everything under `root`, listening on 127.0.0.1 only.
fn config_xml(root: &Path, own: Ports, cluster: &[Ports]) -> String {
    let root = root.display();
    let shards: String = cluster
        .iter()
        .map(|p| format!("<shard><replica><host>127.0.0.1</host><port>{}</port></replica></shard>", p.tcp))
        .collect();
    format!(
        r#"<?xml version="1.0"?>
<yandex>
    <logger>
        <level>information</level>
        <log>{root}/server.log</log>
        <errorlog>{root}/server.err.log</errorlog>
        <size>100M</size>
        <count>1</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <http_port>{http}</http_port>
    <tcp_port>{tcp}</tcp_port>
    <interserver_http_port>{interserver}</interserver_http_port>
    <interserver_http_host>127.0.0.1</interserver_http_host>
    <path>{root}/data/</path>
    <tmp_path>{root}/tmp/</tmp_path>
    <user_files_path>{root}/user_files/</user_files_path>
    <format_schema_path>{root}/format_schemas/</format_schema_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mark_cache_size>67108864</mark_cache_size>
    <uncompressed_cache_size>67108864</uncompressed_cache_size>
    <max_concurrent_queries>100</max_concurrent_queries>
    <mlock_executable>false</mlock_executable>
    <remote_servers>
        <{cluster_name}>{shards}</{cluster_name}>
    </remote_servers>
</yandex>
"#,
        http = own.http,
        tcp = own.tcp,
        interserver = own.interserver,
        cluster_name = CLUSTER_NAME,
    )
}

/// One user, `default`, without a password, from loopback only.
const USERS_XML: &str = r#"<?xml version="1.0"?>
<yandex>
    <profiles>
        <default></default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks>
                <ip>127.0.0.1</ip>
                <ip>::1</ip>
            </networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas>
        <default></default>
    </quotas>
</yandex>
"#;
