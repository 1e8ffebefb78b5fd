//! One file per kernel hook.
mod conn_state;
mod tcp_errors;
mod traffic;
