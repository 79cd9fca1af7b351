//! Images: ours built from the checkout's static binaries (in-memory `FROM scratch`
//! contexts, rebuilt only when the context changes); the others (Prometheus, Alertmanager,
//! PostgreSQL, Grafana) used when present, pulled when a registry answers, else built from the
//! host's programs where devctl knows how, else skipped with the reason.

use std::collections::HashMap;
use std::time::Instant;

use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateImageOptionsBuilder, ListImagesOptionsBuilder,
    RemoveImageOptionsBuilder,
};
use futures_util::StreamExt;

use super::DockerEngine;
use crate::engine::{EngineError, PrepareMode, Prepared, Result};
use crate::images::{self, LABEL_CONTEXT_HASH};
use crate::plan::{Kind, Plan, LABEL_ROLE};
use crate::ui::Ui;

/// A program devctl packs into a local image from the host when the topology's image is
/// absent.
#[derive(Debug, Clone, Copy)]
struct HostImage {
    name: &'static str,
    /// Names it has on PATH, in order.
    binaries: &'static [&'static str],
    package: &'static str,
    data_dir: &'static str,
    /// Files from the host package the program reads at run time.
    extra_files: &'static [&'static str],
}

impl HostImage {
    const PROMETHEUS: HostImage = HostImage {
        name: "prometheus",
        binaries: &["prometheus"],
        package: "prometheus",
        data_dir: "/prometheus",
        extra_files: &[],
    };
    const ALERTMANAGER: HostImage = HostImage {
        name: "alertmanager",
        binaries: &["prometheus-alertmanager", "alertmanager"],
        package: "prometheus-alertmanager",
        data_dir: "/alertmanager",
        extra_files: &[
            "/usr/share/prometheus/alertmanager/default.tmpl",
            "/usr/share/prometheus/alertmanager/email.tmpl",
        ],
    };

    const POSTGRES: HostImage = HostImage {
        name: "postgres",
        binaries: &[],
        package: "postgresql",
        data_dir: "/var/lib/postgresql/data",
        extra_files: &[],
    };

    /// The host's program (for PostgreSQL: its bin directory).
    fn find(&self) -> Option<std::path::PathBuf> {
        if self.name == "postgres" {
            return images::postgres_bin_dir();
        }
        self.binaries.iter().find_map(|b| images::host_binary(b))
    }
}

/// How long a pull may take before devctl falls back (a registry that answers but is slow
/// still gets this long).
const PULL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// `registry/name:tag` → (`registry/name`, `tag`); no tag means `latest`. A digest
/// (`name@sha256:…`) is passed whole.
fn split_reference(image: &str) -> (&str, &str) {
    if image.contains('@') {
        return (image, "");
    }
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(colon) => (
            &image[..last_slash + colon],
            &image[last_slash + colon + 1..],
        ),
        None => (image, "latest"),
    }
}

/// Label on our images (not `managed`: images are build artefacts `down` keeps).
pub const LABEL_IMAGE: &str = "io.insightserenity.image";

impl DockerEngine {
    async fn image_label(&self, image: &str, label: &str) -> Option<Option<String>> {
        let i = self.docker.inspect_image(image).await.ok()?;
        Some(
            i.config
                .and_then(|c| c.labels)
                .and_then(|l| l.get(label).cloned()),
        )
    }

    pub(super) async fn image_user(&self, image: &str) -> String {
        self.docker
            .inspect_image(image)
            .await
            .ok()
            .and_then(|i| i.config)
            .and_then(|c| c.user)
            .unwrap_or_default()
    }

    pub(super) async fn image_id(&self, image: &str) -> Option<String> {
        self.docker
            .inspect_image(image)
            .await
            .ok()
            .and_then(|i| i.id)
    }

    /// Builds `tag` from an in-memory context unless an image with the same context exists.
    /// Returns whether it built.
    async fn build_image(&self, tag: &str, role: &str, context: (Vec<u8>, String)) -> Result<bool> {
        let (tar, hash) = context;
        if self.image_label(tag, LABEL_CONTEXT_HASH).await == Some(Some(hash.clone())) {
            return Ok(false);
        }
        let labels = HashMap::from([
            (LABEL_IMAGE.to_string(), "true".to_string()),
            (LABEL_ROLE.to_string(), role.to_string()),
            (LABEL_CONTEXT_HASH.to_string(), hash),
        ]);
        let options = BuildImageOptionsBuilder::default()
            .t(tag)
            .rm(true)
            .forcerm(true)
            .labels(&labels)
            .build();
        let mut stream =
            self.docker
                .build_image(options, None, Some(bollard::body_full(tar.into())));
        while let Some(item) = stream.next().await {
            if let Some(detail) = item?.error_detail {
                return Err(EngineError::ImageBuild {
                    tag: tag.to_string(),
                    message: detail.message.unwrap_or_default(),
                });
            }
        }
        Ok(true)
    }

    /// Our three images from the checkout's release binaries (or by digest when pinned and
    /// missing).
    /// Our images, built (or pulled by digest) when missing or stale.
    pub async fn ensure_ours(&self, plan: &Plan, ui: &Ui) -> Result<()> {
        self.ensure_our_images(plan, ui).await
    }

    async fn ensure_our_images(&self, plan: &Plan, ui: &Ui) -> Result<()> {
        let pins = self.state.pins()?;
        for binary in images::BINARIES {
            let tag = format!("{}/{binary}:{}", plan.project, plan.version);
            // An image pushed from here and missing now comes back by its digest: the same
            // bytes, not a rebuild.
            if let Some(pinned) = pins.get(&tag) {
                if self.image_id(&tag).await.is_none() {
                    match self.pull_pinned(&tag, pinned, ui).await {
                        Ok(()) => continue,
                        Err(e) => ui.warn(&format!("{e}; building {tag} instead")),
                    }
                }
            }
            let path = self
                .repo
                .as_ref()
                .map(|r| images::release_dir(r).join(binary))
                .filter(|p| p.is_file());
            let Some(path) = path else {
                if self.image_id(&tag).await.is_none() {
                    return Err(EngineError::NoImage { tag });
                }
                continue;
            };
            let context =
                tokio::task::spawn_blocking(move || images::our_context(binary, &path)).await??;
            let started = Instant::now();
            if self.build_image(&tag, binary, context).await? {
                ui.done(&format!("image {tag} built in {:.1?}", started.elapsed()));
            }
        }
        Ok(())
    }

    /// Pulls `image` with a progress counter of its layers. A registry that does not answer
    /// within [`PULL_TIMEOUT`] (or at all) is an error the caller falls back from.
    async fn pull(&self, image: &str, ui: &Ui) -> std::result::Result<(), String> {
        let (repo, tag) = split_reference(image);
        let mut options = CreateImageOptionsBuilder::default().from_image(repo);
        if !tag.is_empty() {
            options = options.tag(tag);
        }
        let options = options.build();
        let mut stream = self.docker.create_image(Some(options), None, None);
        let mut layers = std::collections::BTreeSet::new();
        let mut done = std::collections::BTreeSet::new();
        let mut counter = None;
        let started = Instant::now();
        let result = tokio::time::timeout(PULL_TIMEOUT, async {
            while let Some(item) = stream.next().await {
                let info = item.map_err(|e| e.to_string())?;
                if let Some(detail) = info.error_detail {
                    return Err(detail.message.unwrap_or_default());
                }
                let (Some(id), Some(status)) = (info.id, info.status) else {
                    continue;
                };
                match status.as_str() {
                    "Pulling fs layer" | "Waiting" | "Already exists" => {
                        layers.insert(id.clone());
                    }
                    _ => {}
                }
                if matches!(status.as_str(), "Pull complete" | "Already exists") {
                    done.insert(id);
                }
                let c = counter.get_or_insert_with(|| {
                    ui.counter(layers.len() as u64, &format!("layers of {image}"))
                });
                c.set(done.len() as u64, &status);
            }
            Ok(())
        })
        .await;
        if let Some(c) = counter {
            c.finish();
        }
        match result {
            Ok(Ok(())) => {
                ui.done(&format!(
                    "image {image} pulled in {:.1?}",
                    started.elapsed()
                ));
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("no answer from its registry in {PULL_TIMEOUT:?}")),
        }
    }

    /// A local image of a host program for `instance`, when the host has it.
    async fn build_local(
        &self,
        plan: &Plan,
        host: HostImage,
        image: &str,
        ui: &Ui,
        mode: PrepareMode,
    ) -> Result<Option<String>> {
        let tag = format!("{}/{}:local", plan.project, host.name);
        match (mode, host.find()) {
            (PrepareMode::Build, Some(path)) => {
                let context = tokio::task::spawn_blocking(move || {
                    if host.name == "postgres" {
                        images::postgres::context(&path)
                    } else {
                        images::host_program_context(
                            &path,
                            host.name,
                            host.data_dir,
                            host.extra_files,
                        )
                    }
                })
                .await??;
                if self.build_image(&tag, host.name, context).await? {
                    ui.done(&format!(
                        "image {tag} built from the host's {} (for {image})",
                        host.package
                    ));
                }
                Ok(Some(tag))
            }
            (PrepareMode::Check, _) if self.image_id(&tag).await.is_some() => Ok(Some(tag)),
            _ => Ok(None),
        }
    }

    /// The images of the instances that are not ours: the topology's when present or
    /// pullable, else a local build from the host's program, else the instance is skipped
    /// with the reason.
    pub(super) async fn prepare_images(
        &self,
        plan: &Plan,
        ui: &Ui,
        mode: PrepareMode,
    ) -> Result<Prepared> {
        if mode == PrepareMode::Build {
            self.ensure_our_images(plan, ui).await?;
        }
        let mut prepared = Prepared::default();
        for i in &plan.instances {
            let local = match i.kind {
                Kind::Prometheus => Some(HostImage::PROMETHEUS),
                Kind::Alertmanager => Some(HostImage::ALERTMANAGER),
                Kind::Database => Some(HostImage::POSTGRES),
                Kind::Grafana => None,
                _ => continue,
            };
            if self.image_id(&i.image).await.is_some() {
                continue;
            }
            let pulled = match mode {
                PrepareMode::Build => self.pull(&i.image, ui).await,
                PrepareMode::Check => Err("not pulled by this command".into()),
            };
            let why = match pulled {
                Ok(()) => continue,
                Err(why) => why,
            };
            let built = match local {
                Some(host) => self.build_local(plan, host, &i.image, ui, mode).await?,
                None => None,
            };
            if let Some(tag) = built {
                if mode == PrepareMode::Build {
                    ui.step(&format!(
                        "{}: {} is not available here ({why}); running {tag}, built from the host's programs",
                        i.name, i.image
                    ));
                }
                prepared.images.insert(i.name.clone(), tag);
                continue;
            }
            let fallback = match local {
                Some(host) => format!(
                    "install Debian's `{}` package (devctl then builds a local image) or `docker load` it",
                    host.package
                ),
                None => format!("`docker load` it to enable {}", i.name),
            };
            let reason = if mode == PrepareMode::Build {
                format!(
                    "image {} is not available and its pull failed ({why}); {fallback}",
                    i.image
                )
            } else {
                format!("image {} is not available; {fallback}", i.image)
            };
            prepared.unavailable.insert(i.name.clone(), reason);
        }
        Ok(prepared)
    }

    /// `down --images`: every image carrying our image label.
    pub(super) async fn remove_images(&self) -> Result<Vec<String>> {
        let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_IMAGE}=true")])]);
        let list = self
            .docker
            .list_images(Some(
                ListImagesOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await?;
        let mut removed = Vec::new();
        for image in list {
            for tag in image.repo_tags {
                let _ = self
                    .docker
                    .remove_image(
                        &tag,
                        Some(RemoveImageOptionsBuilder::default().force(true).build()),
                        None,
                    )
                    .await;
                removed.push(format!("image {tag}"));
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::split_reference;

    #[test]
    fn references_split_into_repository_and_tag() {
        assert_eq!(split_reference("postgres:16"), ("postgres", "16"));
        assert_eq!(
            split_reference("grafana/grafana"),
            ("grafana/grafana", "latest")
        );
        assert_eq!(
            split_reference("127.0.0.1:5000/prom/prometheus:v2.53.0"),
            ("127.0.0.1:5000/prom/prometheus", "v2.53.0")
        );
        assert_eq!(
            split_reference("127.0.0.1:5000/postgres"),
            ("127.0.0.1:5000/postgres", "latest")
        );
        assert_eq!(
            split_reference("postgres@sha256:abc"),
            ("postgres@sha256:abc", "")
        );
    }
}
