//! Structured JSON logs on stdout, one object per line.
//!
//! The level filter comes from `LOG_LEVEL` (or `RUST_LOG`), in `tracing_subscriber`'s
//! `EnvFilter` syntax; the default is `info`.

use tracing_subscriber::EnvFilter;

pub fn init() {
    // rustls warns about client quirks (an IP address sent as SNI, say) once per handshake:
    // any client could fill the log, so it is kept to errors unless asked for by name.
    let filter = std::env::var("LOG_LEVEL")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .map(|spec| {
            if spec.contains("rustls") {
                spec
            } else {
                format!("{spec},rustls=error")
            }
        })
        .and_then(|spec| EnvFilter::try_new(spec).ok())
        .unwrap_or_else(|| EnvFilter::new("info,rustls=error"));
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(false)
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .try_init();
}
