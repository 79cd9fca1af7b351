//! `admin-server`: the shared backend command line around [`admin_server::build`].

use std::process::ExitCode;

use service_kit::boot::{self, NoExtraArgs};

fn main() -> ExitCode {
    boot::main::<NoExtraArgs, _, _>(
        admin_server::INFO,
        "InsightSerenity admin API over HTTPS (TLS 1.2/1.3, HTTP/1.1 and h2)",
        admin_server::DEFAULT_PORT,
        |ctx, _| admin_server::build(ctx),
    )
}
