//! A private tmux server for a test: a real terminal for `top`.
use std::process::Command;

use crate::{TIMEOUT, poll};

/// A tmux server on its own socket, killed when dropped. Commands run in session `top`.
pub struct Tmux(String);

impl Tmux {
    pub fn new(socket: &str) -> Self {
        Self(socket.to_owned())
    }

    pub fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.0])
            .args(args)
            .output()
            .expect("tmux (cargo xtask test installs it)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `cmd` in a detached session `top` of `width` × `height`.
    pub fn start(&self, cmd: &str, width: u16, height: u16) {
        self.run(&[
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            cmd,
        ]);
    }

    pub fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "top"])
    }

    pub fn wait(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        poll(what, TIMEOUT, || {
            let s = self.screen();
            ok(&s).then_some(s)
        })
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.run(&["kill-server"]);
    }
}
