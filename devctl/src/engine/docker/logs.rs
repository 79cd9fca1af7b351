//! Container logs: the last lines of one (for "not healthy" reports) and `devctl logs`,
//! merged across instances and prefixed with their names.

use bollard::query_parameters::LogsOptionsBuilder;
use futures_util::StreamExt;

use super::DockerEngine;
use crate::engine::{EngineError, LogQuery, Result};
use crate::ui::Ui;

impl DockerEngine {
    pub(super) async fn tail(&self, name: &str, n: usize) -> Vec<String> {
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&n.to_string())
            .build();
        let chunks: Vec<_> = self
            .docker
            .logs(&self.container(name), Some(options))
            .take(200)
            .collect()
            .await;
        chunks
            .into_iter()
            .filter_map(|c| c.ok())
            .flat_map(|c| {
                String::from_utf8_lossy(&c.into_bytes())
                    .lines()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// `devctl logs`: merged, prefixed, coloured; `follow` streams until interrupted.
    pub(super) async fn print_logs(&self, ui: &Ui, query: &LogQuery<'_>) -> Result<()> {
        let LogQuery {
            names,
            follow,
            tail,
        } = *query;
        let selected: Vec<(String, String)> = self
            .ours()
            .await?
            .into_iter()
            .filter(|c| names.is_empty() || names.contains(&c.instance))
            .map(|c| (c.instance, c.container))
            .collect();
        if selected.is_empty() {
            return Err(EngineError::NoLogs(names.join(" ")));
        }
        let width = selected.iter().map(|(i, _)| i.len()).max().unwrap_or(8);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, String, String)>(1024);
        for (n, (instance, container)) in selected.iter().enumerate() {
            let options = LogsOptionsBuilder::default()
                .stdout(true)
                .stderr(true)
                .timestamps(true)
                .follow(follow)
                .tail(&tail.map_or_else(|| "all".to_string(), |t| t.to_string()))
                .build();
            let mut stream = self.docker.logs(container, Some(options));
            let tx = tx.clone();
            let instance = instance.clone();
            tokio::spawn(async move {
                while let Some(Ok(chunk)) = stream.next().await {
                    for line in String::from_utf8_lossy(&chunk.into_bytes()).lines() {
                        if tx
                            .send((n, instance.clone(), line.to_string()))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
        drop(tx);
        // Lines carry a timestamp first: sorted on it when not following, cut before printing.
        let print = |(n, instance, line): (usize, String, String)| {
            let text = line.split_once(' ').map_or(line.as_str(), |(_, l)| l);
            println!("{}", ui.prefixed(n, &instance, width, text));
        };
        if follow {
            while let Some(item) = rx.recv().await {
                print(item);
            }
        } else {
            let mut all = Vec::new();
            while let Some(item) = rx.recv().await {
                all.push(item);
            }
            all.sort_by(|a, b| a.2.cmp(&b.2));
            all.into_iter().for_each(print);
        }
        Ok(())
    }
}
