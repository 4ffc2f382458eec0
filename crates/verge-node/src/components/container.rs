//! Container components: run through the container engine's own API (the
//! Docker Engine REST API on a unix socket, which Docker and Podman both
//! serve) with the `bollard` client. Install makes sure the image is on
//! the engine (pulling it when allowed); a run creates the container
//! under a name of this node's own, starts it, follows its output into the
//! component's log ring and waits for its exit; stop asks the engine to
//! stop it (SIGTERM, SIGKILL after the stop timeout) and removes it.
//!
//! Nothing here blocks the node: every call is in the component's own
//! task, and an engine that is not there fails only container components.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::container::{AttachContainerResults, LogOutput};
use bollard::errors::Error as EngineError;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, CreateImageOptions, RemoveContainerOptions,
    StopContainerOptions, WaitContainerOptions,
};
use bollard::{API_DEFAULT_VERSION, Docker};
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use verge_protocol::ComponentSpec;

use super::bus::Credentials;
use super::log::{LogRing, take_lines};

/// Longest wait for an engine call that is not a stream.
const CALL_TIMEOUT_SECS: u64 = 120;

/// The engine, shared by a node's container components; it connects on
/// first use and again after a failed connection.
pub struct Engine {
    /// The engine's unix socket.
    socket: PathBuf,
    /// Pull an image that is not on the engine.
    pull: bool,
    /// Node name, for the `io.verge.node` label.
    node: String,
    /// `verge-<id>`: the start of this node's container names, `<id>`
    /// derived from its data directory so two nodes on one engine do not
    /// meet.
    prefix: String,
    /// The connected client.
    client: tokio::sync::Mutex<Option<Docker>>,
}

impl Engine {
    /// An engine at `socket` for the node `node` whose state is in
    /// `data_dir`. Nothing is connected yet.
    pub fn new(socket: PathBuf, pull: bool, node: &str, data_dir: &Path) -> Engine {
        let digest = Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
        Engine {
            socket,
            pull,
            node: node.to_owned(),
            prefix: format!("verge-{}", hex::encode(&digest[..4])),
            client: tokio::sync::Mutex::new(None),
        }
    }

    /// The container name of component `name` on this node.
    pub fn container_name(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    fn fail(&self, what: &str, e: impl std::fmt::Display) -> String {
        format!("container engine {}: {what}: {e}", self.socket.display())
    }

    async fn client(&self) -> Result<Docker, String> {
        let mut held = self.client.lock().await;
        if let Some(c) = &*held {
            return Ok(c.clone());
        }
        let unreachable = |e: EngineError| {
            format!(
                "container engine {} is unreachable: {e}",
                self.socket.display()
            )
        };
        let path = self.socket.to_string_lossy();
        let c = Docker::connect_with_unix(&path, CALL_TIMEOUT_SECS, API_DEFAULT_VERSION)
            .map_err(unreachable)?;
        // Speak the engine's API version when it is older than the
        // client's (Podman 4 serves 1.41).
        let c = c.negotiate_version().await.map_err(unreachable)?;
        *held = Some(c.clone());
        Ok(c)
    }

    /// Forget the client after a failed call, so the next one connects
    /// (and negotiates) again.
    async fn reset(&self) {
        *self.client.lock().await = None;
    }

    /// Make sure `spec`'s image is on the engine: inspect it, pull it when
    /// missing (if pulling is on). `Err` says why it is not there.
    pub async fn install(&self, spec: &ComponentSpec) -> Result<(), String> {
        let image = spec.image.as_deref().unwrap_or_default();
        let client = self.client().await?;
        match client.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(EngineError::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => {
                self.reset().await;
                return Err(self.fail(&format!("inspecting image `{image}`"), e));
            }
        }
        if !self.pull {
            return Err(format!(
                "image `{image}` is not on the engine and pulling is off (containers.pull)"
            ));
        }
        tracing::info!(component = %spec.name, image, "pulling the component's image");
        let options = CreateImageOptions {
            from_image: Some(image.to_owned()),
            ..Default::default()
        };
        let mut progress = client.create_image(Some(options), None, None);
        while let Some(step) = progress.next().await {
            if let Err(e) = step {
                return Err(format!(
                    "image `{image}` is not on the engine and could not be pulled: {e}"
                ));
            }
        }
        match client.inspect_image(image).await {
            Ok(_) => Ok(()),
            Err(e) => Err(format!(
                "image `{image}` is not on the engine and could not be pulled: {e}"
            )),
        }
    }

    /// Create and start `spec`'s container (a stale one of its name is
    /// removed first), its output followed into `logs`.
    pub async fn start(
        &self,
        spec: &ComponentSpec,
        workdir: &Path,
        logs: &Arc<Mutex<LogRing>>,
        mqtt: Option<&Credentials>,
    ) -> Result<Container, String> {
        let client = self.client().await?;
        let name = self.container_name(&spec.name);
        self.remove(&client, &name)
            .await
            .map_err(|e| self.fail(&format!("removing the old container {name}"), e))?;
        let body = self.create_body(spec, workdir, mqtt);
        let options = CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        let created = match client.create_container(Some(options), body).await {
            Ok(c) => c,
            Err(e) => {
                self.reset().await;
                return Err(self.fail(&format!("creating container {name}"), e));
            }
        };
        let id = created.id;
        // Attached before the start, so no early line is missed (following
        // its logs after the start lost lines on Podman).
        let options = AttachContainerOptions {
            stream: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let attached = match client.attach_container(&id, Some(options)).await {
            Ok(a) => a,
            Err(e) => {
                let _ = self.remove(&client, &id).await;
                return Err(self.fail(&format!("attaching to container {name}"), e));
            }
        };
        let follow = tokio::spawn(follow_output(attached, logs.clone()));
        if let Err(e) = client.start_container(&id, None).await {
            follow.abort();
            let _ = self.remove(&client, &id).await;
            return Err(self.fail(&format!("starting container {name}"), e));
        }
        let pid = client
            .inspect_container(&id, None)
            .await
            .ok()
            .and_then(|i| i.state)
            .and_then(|s| s.pid)
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0);
        let exit = Box::pin(wait_stream(&client, &id));
        Ok(Container {
            client,
            socket: self.socket.clone(),
            id,
            pid,
            follow: Some(follow),
            exit,
            outcome: None,
        })
    }

    fn create_body(
        &self,
        spec: &ComponentSpec,
        workdir: &Path,
        mqtt: Option<&Credentials>,
    ) -> ContainerCreateBody {
        let env = super::env::component_env(spec, workdir, mqtt)
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        // A command replaces the image's; arguments alone replace its CMD
        // (they go to its entrypoint).
        let cmd = if !spec.command.is_empty() {
            Some(
                std::iter::once(spec.command.clone())
                    .chain(spec.args.iter().cloned())
                    .collect(),
            )
        } else if !spec.args.is_empty() {
            Some(spec.args.clone())
        } else {
            None
        };
        let labels = HashMap::from([
            ("io.verge.component".to_owned(), spec.name.clone()),
            ("io.verge.version".to_owned(), spec.version.clone()),
            ("io.verge.node".to_owned(), self.node.clone()),
        ]);
        let dir = workdir.display().to_string();
        ContainerCreateBody {
            image: spec.image.clone(),
            cmd,
            env: Some(env),
            labels: Some(labels),
            stop_timeout: Some(stop_seconds(spec.stop_timeout)),
            host_config: Some(HostConfig {
                network_mode: Some(spec.network.clone().unwrap_or_else(|| "host".to_owned())),
                memory: spec.limits.memory.and_then(|m| i64::try_from(m).ok()),
                cpu_shares: spec.limits.cpu_shares.map(i64::from),
                // The component's directory, at the same path inside.
                binds: Some(vec![format!("{dir}:{dir}")]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Force-remove the container of component `name` (one whose task was
    /// aborted), logging a failure.
    pub async fn force_remove(&self, name: &str) {
        let container = self.container_name(name);
        match self.client().await {
            Ok(client) => remove_quietly(&client, &container).await,
            Err(e) => tracing::warn!(%container, "not removed: {e}"),
        }
    }

    /// Remove container `name` whatever its state; one that is not there
    /// is not an error.
    async fn remove(&self, client: &Docker, name: &str) -> Result<(), EngineError> {
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        match client.remove_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(EngineError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// The stop timeout in whole seconds, at least 1.
fn stop_seconds(d: Duration) -> i64 {
    i64::try_from(d.as_millis().div_ceil(1000))
        .unwrap_or(i64::MAX)
        .max(1)
}

type ExitStream = std::pin::Pin<Box<dyn Stream<Item = Result<i64, EngineError>> + Send>>;

/// The exit code stream of a container's wait call.
fn wait_stream(client: &Docker, id: &str) -> impl Stream<Item = Result<i64, EngineError>> + use<> {
    let options = WaitContainerOptions {
        condition: "not-running".to_owned(),
    };
    client.wait_container(id, Some(options)).map(|r| match r {
        Ok(w) => Ok(w.status_code),
        // A non-zero exit arrives as this error.
        Err(EngineError::DockerContainerWaitError { code, .. }) => Ok(code),
        Err(e) => Err(e),
    })
}

/// Read the container's stdout and stderr into `logs` until it ends.
async fn follow_output(attached: AttachContainerResults, logs: Arc<Mutex<LogRing>>) {
    // Its stdin half stays open (unused) while the output is read.
    let AttachContainerResults {
        output: mut stream,
        input: _input,
    } = attached;
    // Per stream: bytes after the last newline, and whether the rest of a
    // too long line is being skipped.
    let mut out = (Vec::new(), false);
    let mut err = (Vec::new(), false);
    while let Some(Ok(chunk)) = stream.next().await {
        let (name, (buf, skipping), bytes) = match chunk {
            LogOutput::StdErr { message } => ("stderr", &mut err, message),
            LogOutput::StdOut { message } | LogOutput::Console { message } => {
                ("stdout", &mut out, message)
            }
            LogOutput::StdIn { .. } => continue,
        };
        buf.extend_from_slice(&bytes);
        let lines = take_lines(buf, skipping);
        if let Ok(mut ring) = logs.lock() {
            for l in lines {
                ring.push(name, l);
            }
        }
    }
    for (name, (buf, skipping)) in [("stdout", out), ("stderr", err)] {
        if !buf.is_empty()
            && !skipping
            && let Ok(mut ring) = logs.lock()
        {
            ring.push(name, String::from_utf8_lossy(&buf).into_owned());
        }
    }
}

/// A started container.
pub struct Container {
    client: Docker,
    socket: PathBuf,
    /// Its full id.
    id: String,
    /// Its main process on the host, when the engine says.
    pid: Option<u32>,
    follow: Option<JoinHandle<()>>,
    exit: ExitStream,
    /// How it ended, once known.
    outcome: Option<Option<String>>,
}

impl Container {
    /// Its id, shortened to 12 characters as engines show it.
    pub fn short_id(&self) -> String {
        self.id.chars().take(12).collect()
    }

    /// Its main process on the host.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Wait until the container is no longer running, then remove it;
    /// `Some` says why it failed. Cancel-safe: the outcome is kept once
    /// known, and the clean-up steps can be repeated.
    pub async fn wait(&mut self) -> Option<String> {
        if self.outcome.is_none() {
            let outcome = self.exit_outcome().await;
            self.outcome = Some(outcome);
        }
        self.drain_logs().await;
        remove_quietly(&self.client, &self.id).await;
        self.outcome.clone().flatten()
    }

    /// How the container ended: `Some` says why it failed.
    async fn exit_outcome(&mut self) -> Option<String> {
        let code = loop {
            match self.exit.next().await {
                Some(Ok(code)) => break Some(code),
                // The wait call broke off: ask the engine how the
                // container is.
                Some(Err(_)) | None => match self.client.inspect_container(&self.id, None).await {
                    Ok(i) => {
                        let state = i.state.unwrap_or_default();
                        if state.running == Some(true) {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            self.exit = Box::pin(wait_stream(&self.client, &self.id));
                            continue;
                        }
                        break state.exit_code;
                    }
                    Err(EngineError::DockerResponseServerError {
                        status_code: 404, ..
                    }) => {
                        return Some("its container was removed by someone else".to_owned());
                    }
                    Err(e) => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        tracing::debug!(container = %self.short_id(), "inspect after a broken wait: {e}");
                        self.exit = Box::pin(wait_stream(&self.client, &self.id));
                        continue;
                    }
                },
            }
        };
        match code {
            Some(0) => None,
            Some(c) => Some(format!("exited with status {c}")),
            None => Some("exited".to_owned()),
        }
    }

    /// Ask the engine to stop it (SIGTERM, SIGKILL after `timeout`) and
    /// remove it; `Some` when it had to be killed or the engine failed.
    pub async fn stop(&mut self, timeout: Duration) -> Option<String> {
        let options = StopContainerOptions {
            t: Some(i32::try_from(stop_seconds(timeout)).unwrap_or(i32::MAX)),
            signal: None,
        };
        let limit = timeout + Duration::from_secs(10);
        let stopped =
            tokio::time::timeout(limit, self.client.stop_container(&self.id, Some(options))).await;
        let mut note = match stopped {
            Ok(Ok(())) => None,
            // Already stopped.
            Ok(Err(EngineError::DockerResponseServerError {
                status_code: 304, ..
            })) => None,
            Ok(Err(e)) => Some(format!(
                "container engine {}: stopping container {}: {e}",
                self.socket.display(),
                self.short_id()
            )),
            Err(_) => Some(format!(
                "container engine {}: stopping container {} took longer than {} s",
                self.socket.display(),
                self.short_id(),
                limit.as_secs()
            )),
        };
        if note.is_none()
            && let Ok(i) = self.client.inspect_container(&self.id, None).await
            && i.state.and_then(|s| s.exit_code) == Some(137)
        {
            note = Some(format!(
                "did not stop within {} ms of SIGTERM; killed",
                timeout.as_millis()
            ));
        }
        self.drain_logs().await;
        remove_quietly(&self.client, &self.id).await;
        note
    }

    /// Let the log reader take the last output, within a second.
    async fn drain_logs(&mut self) {
        if let Some(mut f) = self.follow.take()
            && tokio::time::timeout(Duration::from_secs(1), &mut f)
                .await
                .is_err()
        {
            f.abort();
        }
    }
}

/// Remove container `id`, logging a failure (a container that is gone is
/// not one).
async fn remove_quietly(client: &Docker, id: &str) {
    let options = RemoveContainerOptions {
        force: true,
        ..Default::default()
    };
    match client.remove_container(id, Some(options)).await {
        Ok(())
        | Err(EngineError::DockerResponseServerError {
            status_code: 404, ..
        }) => {}
        Err(e) => tracing::warn!(container = %id, "removing the container: {e}"),
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(f) = self.follow.take() {
            f.abort();
        }
    }
}

/// The socket path of an engine setting: `unix:///path` or a plain
/// absolute path.
pub fn socket_path(engine: &str) -> Result<PathBuf, String> {
    let path = engine.strip_prefix("unix://").unwrap_or(engine);
    if path.starts_with('/') {
        Ok(PathBuf::from(path))
    } else {
        Err(format!(
            "`{engine}` is not a unix socket (unix:///var/run/docker.sock or an absolute path)"
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn engine_setting_is_a_unix_socket() {
        assert_eq!(
            socket_path("unix:///var/run/docker.sock").unwrap(),
            PathBuf::from("/var/run/docker.sock")
        );
        assert_eq!(
            socket_path("/run/podman/podman.sock").unwrap(),
            PathBuf::from("/run/podman/podman.sock")
        );
        assert!(socket_path("tcp://127.0.0.1:2375").is_err());
        assert!(socket_path("docker.sock").is_err());
    }

    #[test]
    fn container_names_differ_per_data_dir() {
        let a = Engine::new("/s".into(), true, "n", Path::new("/var/lib/a"));
        let b = Engine::new("/s".into(), true, "n", Path::new("/var/lib/b"));
        assert_ne!(a.container_name("x"), b.container_name("x"));
        assert!(a.container_name("x").starts_with("verge-"));
        assert!(a.container_name("x").ends_with("-x"));
        assert_eq!(stop_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(stop_seconds(Duration::ZERO), 1);
    }
}
