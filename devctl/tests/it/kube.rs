//! `render --target kubernetes` against Kubernetes' published schemas (PyPI
//! `kubernetes-validate`, strict: unknown fields are errors) and kustomize (`kubectl
//! kustomize` builds both overlays). There is no cluster here: everything short of
//! `kubectl apply`.

use std::path::Path;
use std::process::Command;

use crate::repo;

const KUBERNETES: &str = "1.34.0";

fn validate(files: &[&Path]) {
    let Some(validator) =
        service_kit::prereq::tool("kubernetes-validate", "pip install kubernetes-validate")
    else {
        return;
    };
    let out = Command::new(validator)
        .args(["--strict", "--quiet", "-k", KUBERNETES])
        .args(files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn rendered_manifests_validate_and_both_overlays_build() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("k8s");
    let out = Command::new(env!("CARGO_BIN_EXE_devctl"))
        .current_dir(repo())
        .args(["--state-dir"])
        .arg(dir.path().join("state"))
        .args([
            "--topology",
            "topology/production.toml",
            "render",
            "--target",
            "kubernetes",
            "--out",
        ])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut manifests: Vec<std::path::PathBuf> = std::fs::read_dir(out_dir.join("base"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n != "kustomization.yaml"))
        .collect();
    manifests.sort();
    assert!(manifests.len() >= 25, "{manifests:?}");
    for kind in [
        "statefulset-admin",
        "deployment-gateway-1",
        "networkpolicy-default-deny-ingress",
    ] {
        assert!(
            manifests.iter().any(|p| p.to_string_lossy().contains(kind)),
            "{kind}"
        );
    }
    let refs: Vec<&Path> = manifests.iter().map(|p| p.as_path()).collect();
    validate(&refs);

    let Some(kubectl) = service_kit::prereq::tool("kubectl", "install kubectl") else {
        return;
    };
    for overlay in ["production", "dev"] {
        let built = Command::new(&kubectl)
            .arg("kustomize")
            .arg(out_dir.join("overlays").join(overlay))
            .output()
            .unwrap();
        assert!(
            built.status.success(),
            "{overlay}: {}",
            String::from_utf8_lossy(&built.stderr)
        );
        let file = dir.path().join(format!("{overlay}.yaml"));
        std::fs::write(&file, &built.stdout).unwrap();
        let text = String::from_utf8_lossy(&built.stdout);
        assert!(text.contains("kind: StatefulSet"), "{overlay}");
        validate(&[file.as_path()]);
    }
}
