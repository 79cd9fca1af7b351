//! Commands run in a running container (`docker exec`): the database's tools for
//! provisioning, backup and restore. An input file is uploaded to the container's /tmp first
//! and removed afterwards.

use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::ExecConfig;
use bollard::query_parameters::UploadToContainerOptionsBuilder;
use futures_util::StreamExt;

use super::DockerEngine;
use crate::engine::{EngineError, Exec, ExecOutput, Result, INPUT};
use crate::plan::{Instance, Kind, BIN_DIR};

impl DockerEngine {
    pub(super) async fn exec_in(&self, i: &Instance, exec: &Exec<'_>) -> Result<ExecOutput> {
        let mut argv = exec.argv.clone();
        // The instance's own program is ours, at its path in the image.
        if let Some(first) = argv.first_mut() {
            if *first == i.binary && matches!(i.kind, Kind::Backend | Kind::Gateway | Kind::Edge) {
                *first = format!("{BIN_DIR}/{}", i.binary);
            }
        }
        let mut uploaded = None;
        if let Some(bytes) = exec.input {
            let name = format!("devctl-input-{}", std::process::id());
            self.put_tmp(i, &name, bytes).await?;
            let path = format!("/tmp/{name}");
            for arg in &mut argv {
                *arg = arg.replace(INPUT, &path);
            }
            uploaded = Some(name);
        }
        let out = self.run(i, argv, exec.env.clone()).await;
        // Emptied rather than removed: the image may have no `rm`.
        if let Some(name) = uploaded {
            let _ = self.put_tmp(i, &name, &[]).await;
        }
        out
    }

    async fn put_tmp(&self, i: &Instance, name: &str, bytes: &[u8]) -> Result<()> {
        let uid = super::spec::owner_uid(i, &self.image_user(&i.image).await);
        let tar = input_tar(name, bytes, uid).map_err(|source| EngineError::Io {
            path: format!("/tmp/{name}").into(),
            source,
        })?;
        let options = UploadToContainerOptionsBuilder::default()
            .path("/tmp")
            .build();
        self.docker
            .upload_to_container(
                &i.container_name,
                Some(options),
                bollard::body_full(tar.into()),
            )
            .await?;
        Ok(())
    }

    async fn run(
        &self,
        i: &Instance,
        argv: Vec<String>,
        env: Vec<(String, String)>,
    ) -> Result<ExecOutput> {
        let created = self
            .docker
            .create_exec(
                &i.container_name,
                ExecConfig {
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    env: Some(env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
                    cmd: Some(argv),
                    ..Default::default()
                },
            )
            .await?;
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        if let StartExecResults::Attached { mut output, .. } = self
            .docker
            .start_exec(&created.id, None::<StartExecOptions>)
            .await?
        {
            while let Some(chunk) = output.next().await {
                match chunk? {
                    bollard::container::LogOutput::StdOut { message } => {
                        stdout.extend_from_slice(&message)
                    }
                    other => stderr.extend_from_slice(&other.into_bytes()),
                }
            }
        }
        let code = self
            .docker
            .inspect_exec(&created.id)
            .await?
            .exit_code
            .unwrap_or(-1);
        Ok(ExecOutput {
            code,
            stdout,
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        })
    }
}

/// A tar of one private file owned by `uid` (the user the instance runs as).
fn input_tar(name: &str, bytes: &[u8], uid: u64) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(bytes.len() as u64);
    h.set_mode(0o600);
    h.set_uid(uid);
    h.set_gid(uid);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, name, bytes)?;
    b.into_inner()
}
