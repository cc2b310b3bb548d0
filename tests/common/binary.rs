//! The real `cedar-pdp` binary as a child process: one-shot runs with
//! captured output, and `serve` on a free loopback port, waited on through
//! its gRPC health service and stopped with SIGTERM.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The binary, with an environment that cannot change what it does.
pub fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cedar-pdp"));
    // The environment must not change what the binary does.
    cmd.env_remove("RUST_LOG").env_remove("CEDAR_PDP_CONFIG");
    cmd.stdin(Stdio::null());
    cmd
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What a finished run printed.
#[derive(Debug)]
pub struct Ran {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Waits for `child` up to `deadline`; kills it and fails when it overstays.
pub fn wait_bounded(child: &mut Child, deadline: Duration, what: &str) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cmd` to completion with output captured in files (no pipe can fill
/// up and stall it), bounded by `deadline`.
pub fn run(mut cmd: Command, deadline: Duration) -> Ran {
    let out = tempfile::NamedTempFile::new().unwrap();
    let err = tempfile::NamedTempFile::new().unwrap();
    cmd.stdout(out.reopen().unwrap())
        .stderr(err.reopen().unwrap());
    let what = format!("{cmd:?}");
    let mut child = cmd.spawn().unwrap();
    let status = wait_bounded(&mut child, deadline, &what);
    Ran {
        status,
        stdout: std::fs::read_to_string(out.path()).unwrap(),
        stderr: std::fs::read_to_string(err.path()).unwrap(),
    }
}

/// A `cedar-pdp serve` child process; killed if the test fails early.
pub struct Served {
    child: Child,
    pub addr: String,
    stderr: PathBuf,
    /// How long the binary may take to do anything.
    deadline: Duration,
    _logs: Option<TempDir>,
}

impl Drop for Served {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Served {
    /// Starts `serve --policies dir --listen <free port> extra...` and waits
    /// until its health service says SERVING. Blocking; for `#[test]`s.
    pub fn start(dir: &Path, extra: &[&str], deadline: Duration) -> Self {
        Self::start_as(dir, "127.0.0.1", extra, deadline)
    }

    /// As [`Served::start`], with `--listen` naming `host` (`localhost`, say)
    /// instead of `127.0.0.1`; it is still reached at `127.0.0.1`, so the
    /// name must resolve there.
    pub fn start_as(dir: &Path, host: &str, extra: &[&str], deadline: Duration) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(Self::launch(deadline, |_, addr| {
            let logs = TempDir::new().unwrap();
            let stderr = logs.path().join("stderr.log");
            let listen = addr.replacen("127.0.0.1", host, 1);
            let mut cmd = bin();
            cmd.arg("serve")
                .arg("--policies")
                .arg(dir)
                .args(["--listen", &listen])
                // A fixed default port would collide between parallel tests.
                .args(["--authzen-listen", ""])
                .args(extra);
            (cmd, stderr, Some(logs))
        }))
    }

    /// Starts `serve --config` on a free loopback port (written into the
    /// config, in `work`, as `listen`) and waits until health says SERVING.
    pub async fn start_with_config(work: &Path, config_body: &str, deadline: Duration) -> Self {
        Self::start_with_config_env(work, config_body, &[], deadline).await
    }

    /// As [`Served::start_with_config`], with `env` set for the child.
    pub async fn start_with_config_env(
        work: &Path,
        config_body: &str,
        env: &[(&str, &str)],
        deadline: Duration,
    ) -> Self {
        Self::launch(deadline, |attempt, addr| {
            let config = work.join(format!("config-{attempt}.toml"));
            // A fixed default port would collide between parallel tests.
            let authzen = if config_body.contains("authzen_listen") {
                ""
            } else {
                "authzen_listen = \"\"\n"
            };
            std::fs::write(
                &config,
                format!("listen = \"{addr}\"\n{authzen}{config_body}"),
            )
            .unwrap();
            let stderr = work.join(format!("stderr-{attempt}.log"));
            let mut cmd = bin();
            cmd.arg("serve")
                .arg("--config")
                .arg(&config)
                .envs(env.iter().copied());
            (cmd, stderr, None)
        })
        .await
    }

    /// Spawns what `prepare(attempt, addr)` builds, with stderr into the file
    /// it names, on a free loopback port, and waits until it is SERVING.
    /// Retries with another port if one was taken in between.
    async fn launch(
        deadline: Duration,
        mut prepare: impl FnMut(u32, &str) -> (Command, PathBuf, Option<TempDir>),
    ) -> Self {
        for attempt in 0..3 {
            let addr = format!("127.0.0.1:{}", free_port());
            let (mut cmd, stderr, logs) = prepare(attempt, &addr);
            let child = cmd
                .stdout(Stdio::null())
                .stderr(File::create(&stderr).unwrap())
                .spawn()
                .unwrap();
            let mut served = Self {
                child,
                addr,
                stderr,
                deadline,
                _logs: logs,
            };
            match served.wait_until_serving().await {
                Ok(()) => return served,
                Err(log) if log.contains("cannot listen") => continue,
                Err(log) => panic!("the server exited before serving:\n{log}"),
            }
        }
        panic!("no free port after three tries");
    }

    async fn wait_until_serving(&mut self) -> Result<(), String> {
        let url = format!("http://{}", self.addr);
        let start = Instant::now();
        loop {
            if self.child.try_wait().unwrap().is_some() {
                return Err(self.log());
            }
            let check = async {
                let channel = tonic::transport::Channel::from_shared(url.clone())
                    .ok()?
                    .connect()
                    .await
                    .ok()?;
                let resp = HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        service: "cedar_pdp.v1.Authorizer".to_string(),
                    })
                    .await
                    .ok()?;
                Some(resp.into_inner().status == ServingStatus::Serving as i32)
            };
            let serving = tokio::time::timeout(Duration::from_secs(2), check)
                .await
                .ok()
                .flatten()
                .unwrap_or(false);
            if serving {
                return Ok(());
            }
            assert!(
                start.elapsed() < self.deadline,
                "the server did not report SERVING within {:?}:\n{}",
                self.deadline,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the server wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Runs `cedar-pdp authorize --addr <this server> args...`.
    pub fn authorize(&self, args: &[&str]) -> Ran {
        let mut cmd = bin();
        cmd.args(["authorize", "--addr", &self.addr]).args(args);
        run(cmd, self.deadline)
    }

    pub fn send_sigterm(&self) {
        let pid = self.child.id().to_string();
        let kill = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(kill.success(), "kill -TERM {pid} failed");
    }

    /// Sends SIGTERM and waits (blocking) for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.send_sigterm();
        wait_bounded(&mut self.child, self.deadline, "the server after SIGTERM")
    }

    /// Polls for exit up to `deadline`; fails (and kills) when it overstays.
    pub async fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the server did not exit within {deadline:?} of SIGTERM:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
