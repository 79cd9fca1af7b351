//! `customer-services`: the shared backend command line around [`customer_services::build`].

use std::process::ExitCode;

use service_kit::boot;

fn main() -> ExitCode {
    boot::main::<customer_services::Options, _, _>(
        customer_services::INFO,
        "InsightSerenity customer API over HTTPS (TLS 1.2/1.3, HTTP/1.1 and h2)",
        customer_services::DEFAULT_PORT,
        customer_services::build,
    )
}
