//! Our images in and out of the engine: `images push` (tag under the registry, push with the
//! user's Docker credentials, pin the digest), `images save` / `images load` (an image
//! archive for hosts without a registry), and pulling a pinned image back by digest.

use std::path::Path;

use bollard::auth::DockerCredentials;
use bollard::query_parameters::{
    CreateImageOptionsBuilder, ImportImageOptionsBuilder, PushImageOptionsBuilder,
    TagImageOptionsBuilder,
};
use futures_util::{StreamExt, TryStreamExt};

use super::DockerEngine;
use crate::engine::{EngineError, Result};
use crate::registry::{self, Credentials, Pins, Target};
use crate::ui::Ui;

fn registry_err(message: impl Into<String>) -> EngineError {
    EngineError::Registry(message.into())
}

/// The user's Docker config file (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`).
fn docker_config() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker")))?;
    Some(dir.join("config.json"))
}

/// Asks a credential helper (`docker-credential-NAME get`) for `host`'s credentials.
fn from_helper(helper: &str, host: &str) -> Result<Option<DockerCredentials>> {
    use std::io::Write;
    let program = format!("docker-credential-{helper}");
    let mut child = std::process::Command::new(&program)
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| registry_err(format!("cannot run {program}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(host.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| registry_err(format!("{program}: {e}")))?;
    if !out.status.success() {
        // The helper knows nothing of this registry: push anonymously.
        return Ok(None);
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| registry_err(format!("{program}: {e}")))?;
    let username = v["Username"].as_str().unwrap_or_default().to_string();
    let secret = v["Secret"].as_str().unwrap_or_default().to_string();
    Ok(Some(if username == "<token>" {
        DockerCredentials {
            identitytoken: Some(secret),
            serveraddress: Some(host.into()),
            ..Default::default()
        }
    } else {
        DockerCredentials {
            username: Some(username),
            password: Some(secret),
            serveraddress: Some(host.into()),
            ..Default::default()
        }
    }))
}

/// The credentials for `host` from the user's Docker config (None: anonymous).
fn credentials_for(host: &str) -> Result<Option<DockerCredentials>> {
    let Some(path) = docker_config() else {
        return Ok(None);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(registry_err(format!("{}: {e}", path.display()))),
    };
    match registry::credentials(&text, host)
        .map_err(|e| registry_err(format!("{}: {e}", path.display())))?
    {
        Credentials::None => Ok(None),
        Credentials::Basic { username, password } => Ok(Some(DockerCredentials {
            username: Some(username),
            password: Some(password),
            serveraddress: Some(host.into()),
            ..Default::default()
        })),
        Credentials::Token(token) => Ok(Some(DockerCredentials {
            identitytoken: Some(token),
            serveraddress: Some(host.into()),
            ..Default::default()
        })),
        Credentials::Helper(helper) => from_helper(&helper, host),
    }
}

/// The registry host of an image reference (`127.0.0.1:5000/x/y@sha256:…` → `127.0.0.1:5000`).
fn host_of(reference: &str) -> &str {
    let first = reference.split('/').next().unwrap_or_default();
    if reference.contains('/')
        && (first.contains('.') || first.contains(':') || first == "localhost")
    {
        first
    } else {
        "docker.io"
    }
}

impl DockerEngine {
    /// Tags each local image under `target` and pushes it; returns the pins (digests).
    pub async fn push_images(&self, tags: &[String], target: &Target, ui: &Ui) -> Result<Pins> {
        let credentials = credentials_for(&target.host)?;
        let mut pins = Pins::default();
        for tag in tags {
            let (name, version) = tag
                .rsplit_once(':')
                .ok_or_else(|| registry_err(format!("{tag} has no version tag")))?;
            let binary = name.rsplit('/').next().unwrap_or(name);
            let repository = target.repository(binary);
            if self.image_id(tag).await.is_none() {
                return Err(registry_err(format!(
                    "image {tag} is not here: run `devctl up` (or `devctl images load FILE`) first"
                )));
            }
            self.docker
                .tag_image(
                    tag,
                    Some(
                        TagImageOptionsBuilder::default()
                            .repo(&repository)
                            .tag(version)
                            .build(),
                    ),
                )
                .await?;
            let mut stream = self.docker.push_image(
                &repository,
                Some(PushImageOptionsBuilder::default().tag(version).build()),
                credentials.clone(),
            );
            let (mut layers, mut done) = (0u64, 0u64);
            let mut counter = ui.counter(1, &format!("layers of {repository}:{version} pushed"));
            while let Some(item) = stream.next().await {
                let info = item?;
                if let Some(detail) = info.error_detail {
                    counter.finish();
                    return Err(registry_err(format!(
                        "pushing {repository}:{version}: {}",
                        detail.message.unwrap_or_default()
                    )));
                }
                match info.status.as_deref() {
                    Some("Preparing") => layers += 1,
                    Some("Pushed" | "Layer already exists") => done += 1,
                    _ => {}
                }
                counter.set(
                    done.min(layers.max(1)),
                    info.status.as_deref().unwrap_or(""),
                );
            }
            counter.finish();
            let digest = self
                .docker
                .inspect_image(&format!("{repository}:{version}"))
                .await?
                .repo_digests
                .unwrap_or_default()
                .into_iter()
                .find(|d| d.starts_with(&format!("{repository}@")))
                .ok_or_else(|| {
                    registry_err(format!("{repository}: the registry returned no digest"))
                })?;
            ui.done(&format!("{tag} pushed as {digest}"));
            pins.images.insert(tag.clone(), digest);
        }
        Ok(pins)
    }

    /// Pulls a pinned reference (`repo@sha256:…`) and tags it as our local `tag`.
    pub(super) async fn pull_pinned(&self, tag: &str, pinned: &str, ui: &Ui) -> Result<()> {
        let credentials = credentials_for(host_of(pinned))?;
        let mut stream = self.docker.create_image(
            Some(
                CreateImageOptionsBuilder::default()
                    .from_image(pinned)
                    .build(),
            ),
            None,
            credentials,
        );
        while let Some(item) = stream.next().await {
            if let Some(detail) = item?.error_detail {
                return Err(registry_err(format!(
                    "pulling {pinned}: {}",
                    detail.message.unwrap_or_default()
                )));
            }
        }
        let (repo, version) = tag
            .rsplit_once(':')
            .ok_or_else(|| registry_err(format!("{tag} has no version tag")))?;
        self.docker
            .tag_image(
                pinned,
                Some(
                    TagImageOptionsBuilder::default()
                        .repo(repo)
                        .tag(version)
                        .build(),
                ),
            )
            .await?;
        ui.done(&format!("image {tag} pulled by digest ({pinned})"));
        Ok(())
    }

    /// Writes the images to an archive `docker load` (and `devctl images load`) reads.
    pub async fn save_images(&self, tags: &[String], file: &Path) -> Result<u64> {
        for tag in tags {
            if self.image_id(tag).await.is_none() {
                return Err(registry_err(format!(
                    "image {tag} is not here: run `devctl up` first"
                )));
            }
        }
        let names: Vec<&str> = tags.iter().map(String::as_str).collect();
        let bytes: Vec<u8> = self
            .docker
            .export_images(&names)
            .try_fold(Vec::new(), |mut acc, chunk| async move {
                acc.extend_from_slice(&chunk);
                Ok(acc)
            })
            .await?;
        crate::state::write_atomic(file, &bytes, false)?;
        Ok(bytes.len() as u64)
    }

    /// Loads an image archive; returns what the engine said it loaded.
    pub async fn load_images(&self, file: &Path) -> Result<Vec<String>> {
        let bytes = std::fs::read(file).map_err(|source| EngineError::Io {
            path: file.to_owned(),
            source,
        })?;
        let mut stream = self.docker.import_image(
            ImportImageOptionsBuilder::default().quiet(true).build(),
            bollard::body_full(bytes.into()),
            None,
        );
        let mut loaded = Vec::new();
        while let Some(item) = stream.next().await {
            let info = item?;
            if let Some(detail) = info.error_detail {
                return Err(registry_err(format!(
                    "{}: {}",
                    file.display(),
                    detail.message.unwrap_or_default()
                )));
            }
            if let Some(text) = info.stream {
                let text = text.trim();
                if !text.is_empty() {
                    loaded.push(text.to_string());
                }
            }
        }
        Ok(loaded)
    }
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn registry_hosts_of_references() {
        assert_eq!(
            host_of("127.0.0.1:5000/x/admin-server@sha256:ab"),
            "127.0.0.1:5000"
        );
        assert_eq!(
            host_of("registry.example.com/a@sha256:ab"),
            "registry.example.com"
        );
        assert_eq!(host_of("postgres:16"), "docker.io");
        assert_eq!(host_of("grafana/grafana:11"), "docker.io");
    }
}
