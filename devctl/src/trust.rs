//! `devctl certs --trust`: installs the CA in the OS trust store, or says why it can't.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context as _};

pub fn install(ca: &Path, deployment: &str) -> anyhow::Result<()> {
    if cfg!(target_os = "macos") {
        let status = Command::new("security")
            .args([
                "add-trusted-cert",
                "-d",
                "-r",
                "trustRoot",
                "-k",
                "/Library/Keychains/System.keychain",
            ])
            .arg(ca)
            .status()
            .context("running security add-trusted-cert")?;
        if !status.success() {
            bail!("security add-trusted-cert failed ({status}); it needs an administrator: sudo devctl certs --trust");
        }
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
        bail!(
            "no update-ca-certificates here (Debian's ca-certificates package); trust {} by hand",
            ca.display()
        );
    }
    let target = dir.join(format!("insightserenity-{deployment}.crt"));
    if let Err(e) = std::fs::copy(ca, &target) {
        bail!(
            "cannot write {}: {e} (it needs root: sudo devctl certs --trust)",
            target.display()
        );
    }
    let status = Command::new("update-ca-certificates")
        .status()
        .context("running update-ca-certificates")?;
    if !status.success() {
        bail!("update-ca-certificates failed ({status})");
    }
    println!("trusted {} (as {})", ca.display(), target.display());
    Ok(())
}
