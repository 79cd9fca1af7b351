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

    fn local_prometheus(&self, plan: &Plan) -> String {
        format!("{}/prometheus:local", plan.project)
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
            if !matches!(i.kind, Kind::Prometheus | Kind::Grafana)
                || self.image_id(&i.image).await.is_some()
            {
                continue;
            }
            if i.kind == Kind::Grafana {
                prepared.unavailable.insert(
                    i.name.clone(),
                    format!(
                        "image {} is not available and cannot be pulled here (`docker load` it to enable Grafana)",
                        i.image
                    ),
                );
                continue;
            }
            // Prometheus: the topology's image, else a local image from the host's binary.
            let tag = self.local_prometheus(plan);
            match (mode, images::host_binary("prometheus")) {
                (PrepareMode::Build, Some(path)) => {
                    let context =
                        tokio::task::spawn_blocking(move || images::prometheus_context(&path))
                            .await??;
                    if self.build_image(&tag, "prometheus", context).await? {
                        ui.done(&format!(
                            "image {tag} built from the host's prometheus binary ({} is not available here)",
                            i.image
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
                            "image {} is not available and cannot be pulled here; install Debian's `prometheus` package (devctl then builds a local image) or `docker load` it",
                            i.image
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
