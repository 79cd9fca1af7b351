//! Our images through a real registry (Debian's `docker-registry`, started here on a free
//! loopback port, which the engine treats as insecure-allowed): `images save` / `load`,
//! `images push` pins digests the registry confirms, and after the local images are removed
//! `up` pulls them back by digest. The topology's Prometheus image names a registry that
//! does not answer: `up` falls back to the local build and says why.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{block_on, Down, Env};

/// A private registry on 127.0.0.1, stopped on drop.
struct Registry {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Option<Registry> {
        let found = ["docker-registry", "registry"]
            .iter()
            .map(|n| std::path::Path::new("/usr/bin").join(n))
            .find(|p| p.is_file())
            .ok_or_else(|| "docker-registry is not installed".to_string());
        if !service_kit::prereq::require(
            found.clone().map(|_| ()),
            "apt-get install docker-registry",
        ) {
            return None;
        }
        let program = found.ok()?;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new(program)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let registry = Registry {
            port,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while registry.get("/v2/").map(|(c, _)| c) != Some(200) {
            assert!(Instant::now() < deadline, "the registry did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(registry)
    }

    /// GET on the registry's API: (status, Docker-Content-Digest).
    fn get(&self, path: &str) -> Option<(u16, String)> {
        use service_kit::client::{connect, Target};
        let url = format!("http://127.0.0.1:{}", self.port);
        let accept = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";
        block_on(async move {
            let target = Target::from_url(&url, None).await.ok()?;
            let mut conn = connect(&target).await.ok()?;
            let r = conn
                .request(http::Method::GET, path, &[("accept", accept)], "")
                .await
                .ok()?;
            Some((
                r.status.as_u16(),
                r.header("docker-content-digest")
                    .unwrap_or_default()
                    .to_string(),
            ))
        })
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

fn remove_images(refs: &[String]) {
    block_on(async {
        let docker = devctl::engine::docker::connect().await.unwrap();
        for r in refs {
            let _ = docker
                .remove_image(
                    r,
                    Some(
                        bollard::query_parameters::RemoveImageOptionsBuilder::default()
                            .force(true)
                            .build(),
                    ),
                    None,
                )
                .await;
        }
    });
}

fn image_id(reference: &str) -> Option<String> {
    block_on(async {
        let docker = devctl::engine::docker::connect().await.ok()?;
        docker.inspect_image(reference).await.ok()?.id
    })
}

#[test]
fn images_save_load_push_and_up_pulls_them_back_by_digest() {
    let reachable = block_on(devctl::engine::docker::connect()).map_err(|e| e.to_string());
    if !service_kit::prereq::require(reachable.map(|_| ()), "start the Docker engine") {
        return;
    }
    let Some(registry) = Registry::start() else {
        return;
    };
    let env = Env::new("docker", "e2e-reg", "172.30", 26000).on_sqlite();
    // Prometheus's image lives on a registry that does not answer.
    let dead = free_port();
    let text = std::fs::read_to_string(&env.topology).unwrap().replace(
        "image = \"prom/prometheus:v2.53.0\"",
        &format!("image = \"127.0.0.1:{dead}/prom/prometheus:v2.53.0\""),
    );
    std::fs::write(&env.topology, text).unwrap();
    let _down = Down(&env);
    let version = env!("CARGO_PKG_VERSION");
    let tags: Vec<String> = ["gateway", "admin-server", "customer-services"]
        .iter()
        .map(|b| format!("insightserenity/{b}:{version}"))
        .collect();

    // save → remove → load gives the same images back.
    let archive = env.state.parent().unwrap().join("images.tar");
    env.ok(&["images", "save", &archive.to_string_lossy()]);
    let ids: Vec<Option<String>> = tags.iter().map(|t| image_id(t)).collect();
    assert!(ids.iter().all(Option::is_some), "{ids:?}");
    assert!(std::fs::metadata(&archive).unwrap().len() > 1_000_000);
    remove_images(&tags);
    assert!(tags.iter().all(|t| image_id(t).is_none()));
    env.ok(&["images", "load", &archive.to_string_lossy()]);
    let loaded: Vec<Option<String>> = tags.iter().map(|t| image_id(t)).collect();
    assert_eq!(loaded, ids);

    // push pins a digest per image, and the registry serves each under that digest.
    let target = format!("127.0.0.1:{}/e2e", registry.port);
    env.ok(&["images", "push", &target]);
    let pins: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.state.join("images.json")).unwrap()).unwrap();
    let mut pulled_refs = Vec::new();
    for (tag, binary) in tags
        .iter()
        .zip(["gateway", "admin-server", "customer-services"])
    {
        let pinned = pins["images"][tag]
            .as_str()
            .unwrap_or_else(|| panic!("{pins}"));
        let (repo, digest) = pinned.split_once('@').unwrap();
        assert_eq!(repo, format!("{target}/{binary}"));
        assert!(digest.starts_with("sha256:"), "{pinned}");
        let (code, served) = registry
            .get(&format!("/v2/e2e/{binary}/manifests/{version}"))
            .unwrap();
        assert_eq!((code, served.as_str()), (200, digest), "{binary}");
        pulled_refs.push(pinned.to_string());
        pulled_refs.push(format!("{repo}:{version}"));
    }

    // Gone locally: `up` pulls them back by digest (not rebuilt), and Prometheus, whose
    // registry does not answer, falls back to the local build with the reason.
    let mut all = tags.clone();
    all.extend(pulled_refs);
    remove_images(&all);
    let out = env.devctl(&["up", "--no-build", "--timeout", "180s"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.matches("pulled by digest").count(), 3, "{stderr}");
    assert!(
        !stderr.contains("built in"),
        "nothing of ours is rebuilt: {stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "prometheus: 127.0.0.1:{dead}/prom/prometheus:v2.53.0 is not available here"
        )),
        "{stderr}"
    );
    for (tag, id) in tags.iter().zip(&ids) {
        assert_eq!(&image_id(tag), id, "{tag} is the pushed image");
    }
    let status = env.status();
    let prometheus = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "prometheus")
        .unwrap();
    assert_eq!(prometheus["state"], "running", "{status}");
}
