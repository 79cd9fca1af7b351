//! Issues a throwaway CA and one server/client leaf into a directory, for benchmarks and manual
//! runs: `cargo run -p service-kit --features pki --example issue_certs -- DIR [SAN...]`.

use service_kit::pki::{CertificateAuthority, LeafSpec};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().ok_or("usage: issue_certs DIR [SAN...]")?);
    let mut sans: Vec<String> = args.collect();
    if sans.is_empty() {
        sans = vec!["localhost".into(), "127.0.0.1".into()];
    }
    std::fs::create_dir_all(&dir)?;
    let ca = CertificateAuthority::generate("InsightSerenity dev CA")?;
    let refs: Vec<&str> = sans.iter().map(String::as_str).collect();
    let leaf = ca.issue(&LeafSpec::new("server", &refs))?;
    std::fs::write(dir.join("ca.crt"), &ca.cert_pem)?;
    std::fs::write(dir.join("server.crt"), &leaf.cert_pem)?;
    std::fs::write(dir.join("server.key"), &leaf.key_pem)?;
    println!("{}", dir.display());
    Ok(())
}
