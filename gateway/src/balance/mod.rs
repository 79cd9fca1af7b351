//! Upstream peer selection and passive health. Pure: no I/O, no clocks (callers pass `now`).
