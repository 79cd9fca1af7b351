//! Images: ours built from the checkout's static binaries (in-memory `FROM scratch`
//! contexts, rebuilt only when the context changes), Prometheus built from the host's binary
//! when the topology's image is absent, Grafana used only when present.

use std::collections::HashMap;
use std::time::Instant;

use bollard::query_parameters::{
    BuildImageOptionsBuilder, ListImagesOptionsBuilder, RemoveImageOptionsBuilder,
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

    fn find(&self) -> Option<std::path::PathBuf> {
        self.binaries.iter().find_map(|b| images::host_binary(b))
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

    /// Our three images from the checkout's release binaries.
    async fn ensure_our_images(&self, plan: &Plan, ui: &Ui) -> Result<()> {
        for binary in images::BINARIES {
            let tag = format!("{}/{binary}:{}", plan.project, plan.version);
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
                Kind::Grafana => None,
                _ => continue,
            };
            if self.image_id(&i.image).await.is_some() {
                continue;
            }
            let Some(host) = local else {
                prepared.unavailable.insert(
                    i.name.clone(),
                    format!(
                        "image {} is not available and cannot be pulled here (`docker load` it to enable {})",
                        i.image, i.name
                    ),
                );
                continue;
            };
            // The topology's image, else a local image from the host's binary.
            let tag = format!("{}/{}:local", plan.project, host.name);
            match (mode, host.find()) {
                (PrepareMode::Build, Some(path)) => {
                    let context = tokio::task::spawn_blocking(move || {
                        images::host_program_context(
                            &path,
                            host.name,
                            host.data_dir,
                            host.extra_files,
                        )
                    })
                    .await??;
                    if self.build_image(&tag, host.name, context).await? {
                        ui.done(&format!(
                            "image {tag} built from the host's {} binary ({} is not available here)",
                            host.name, i.image
                        ));
                    }
                    prepared.images.insert(i.name.clone(), tag);
                }
                (PrepareMode::Check, _) if self.image_id(&tag).await.is_some() => {
                    prepared.images.insert(i.name.clone(), tag);
                }
                _ => {
                    prepared.unavailable.insert(
                        i.name.clone(),
                        format!(
                            "image {} is not available and cannot be pulled here; install Debian's `{}` package (devctl then builds a local image) or `docker load` it",
                            i.image, host.package
                        ),
                    );
                }
            }
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
