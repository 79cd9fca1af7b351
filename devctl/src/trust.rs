//! `devctl certs --trust`: installs the CA in the OS trust store, or says why it can't.

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot run {program}: {source}")]
    Run {
        program: &'static str,
        source: std::io::Error,
    },
    #[error("{program} failed ({status}){hint}")]
    Failed {
        program: &'static str,
        status: std::process::ExitStatus,
        hint: &'static str,
    },
    #[error(
        "no update-ca-certificates here (Debian's ca-certificates package); trust {0} by hand"
    )]
    NoTool(PathBuf),
    #[error("cannot write {path}: {source} (it needs root: sudo devctl certs --trust)")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn run(program: &'static str, cmd: &mut Command, hint: &'static str) -> Result<(), TrustError> {
    let status = cmd
        .status()
        .map_err(|source| TrustError::Run { program, source })?;
    if status.success() {
        Ok(())
    } else {
        Err(TrustError::Failed {
            program,
            status,
            hint,
        })
    }
}

pub fn install(ca: &Path, deployment: &str) -> Result<(), TrustError> {
    if cfg!(target_os = "macos") {
        run(
            "security add-trusted-cert",
            Command::new("security")
                .args([
                    "add-trusted-cert",
                    "-d",
                    "-r",
                    "trustRoot",
                    "-k",
                    "/Library/Keychains/System.keychain",
                ])
                .arg(ca),
            "; it needs an administrator: sudo devctl certs --trust",
        )?;
        println!("trusted {} in the System keychain", ca.display());
        return Ok(());
    }
    let dir = Path::new("/usr/local/share/ca-certificates");
    if !dir.is_dir()
        || Command::new("update-ca-certificates")
            .arg("--help")
            .output()
            .is_err()
    {
        return Err(TrustError::NoTool(ca.to_owned()));
    }
    let target = dir.join(format!("insightserenity-{deployment}.crt"));
    std::fs::copy(ca, &target).map_err(|source| TrustError::Write {
        path: target.clone(),
        source,
    })?;
    run(
        "update-ca-certificates",
        &mut Command::new("update-ca-certificates"),
        "",
    )?;
    println!("trusted {} (as {})", ca.display(), target.display());
    Ok(())
}
